"""Fused QLoRA projections: the train stage's answer to separate q/k/v and gate/up projections.

With a 4-bit base, every LoRA-wrapped projection pays its own nf4 dequantize, matmul and LoRA
launches, and peft keeps a dropped-out copy of the input (plus its mask) per projection for the
backward pass. :func:`fuse` rewires the LoRA layers of an already built peft model:

- siblings that read the same input (``q_proj``/``k_proj``/``v_proj``, ``gate_proj``/``up_proj``)
  share one nf4 matrix: their packed 4-bit data and block scales are concatenated as they are (nf4
  blocks never straddle rows), so the fused weight dequantizes to exactly the members' weights;
- one autograd function (:class:`FusedLoRA`) does dequantize + matmul + every member's LoRA in one
  forward, and keeps only the input, the r-wide LoRA activations and (with dropout) 1-bit masks for
  the backward, where the weight is dequantized again instead of kept;
- by default siblings also share one dropout mask of their common input (``train.lora.dropout_masks``),
  as the LoRA of a fused ``qkv_proj`` does: one mask drawn, kept and applied instead of three, and
  their A matrices run as one matmul;
- the double-quantized block scales are expanded to fp32 once at set-up, not on every call.

The LoRA parameters stay where peft put them (``...q_proj.lora_A.default.weight`` and so on), so the
optimizer, the checkpoints and ``save_pretrained`` see the standard PEFT adapter of the original module
names: merge, onnx_build and Olive-style tooling read it unchanged. The frozen per-member nf4 weights are
released. Only training goes through here; the stage never runs inference on this model.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger("slm")

# Sibling projections that one decoder block applies to the same input, in the order of the fused output.
SIBLINGS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"), ("query", "key", "value"))


def _nf4_matmul(
    x: torch.Tensor, data: torch.Tensor, absmax: torch.Tensor, blocksize: int, shape: list[int], transpose: bool
) -> torch.Tensor:
    weight = torch.ops.bitsandbytes.dequantize_4bit.default(data, absmax, blocksize, "nf4", list(shape), x.dtype)
    return x @ weight if transpose else x @ weight.t()


def _nf4_lora_matmul(
    x: torch.Tensor,
    data: torch.Tensor,
    absmax: torch.Tensor,
    blocksize: int,
    shape: list[int],
    us: list[torch.Tensor],
    Bs: list[torch.Tensor],
    widths: list[int],
    scale: float,
) -> torch.Tensor:
    return _add_lora(_nf4_matmul(x, data, absmax, blocksize, shape, False), us, Bs, widths, scale)


def _add_lora(y: torch.Tensor, us: list, Bs: list, widths: list, scale: float) -> torch.Tensor:
    at = 0
    for u, B, width in zip(us, Bs, widths):
        y[:, at : at + width].addmm_(u, B.t(), alpha=scale)
        at += width
    return y


# Opaque ops on purpose. Under torch.compile the partitioner sees no dequantized weight it could save for
# the backward pass (it saved all of them, ~7 GB on Phi-3-mini, when the dequantize was traced), so the
# backward dequantizes again, as in eager. And each member's LoRA output is added into its slice of the
# fused output in place: traced, every slice's in-place addmm became an addmm into a new buffer plus a
# copy back into the slice (functionalization), five copies a decoder layer (~13 ms a step on the H100).
nf4_matmul = torch.library.custom_op("slm::nf4_matmul", mutates_args=())(_nf4_matmul)
nf4_lora_matmul = torch.library.custom_op("slm::nf4_lora_matmul", mutates_args=())(_nf4_lora_matmul)


@nf4_matmul.register_fake
def _(x, data, absmax, blocksize, shape, transpose):
    return x.new_empty((x.shape[0], shape[1] if transpose else shape[0]))


@nf4_lora_matmul.register_fake
def _(x, data, absmax, blocksize, shape, us, Bs, widths, scale):
    return x.new_empty((x.shape[0], shape[0]))


def _call(op, fn, *args):
    """The custom op where torch.compile traces, else its function: eager skips the op's dispatch, which
    the launch-bound short steps of the production workload feel (~1,000 calls a step)."""
    return op(*args) if torch.compiler.is_compiling() else fn(*args)


# Off: the LoRA outputs are added in the traced graph (the bench's "~round4" rows, the fourth round's path).
LORA_IN_OP = True

# Masks of fewer elements stay bool: packing costs four small kernels a mask each way, which a short
# pass (the production workload: a few hundred tokens a step, launch-bound) feels more than the memory.
PACK_MIN_ELEMENTS = 1 << 22


def _shifts(device) -> torch.Tensor:
    # arange, not torch.tensor([...], device=...): a host-to-device copy would sync the stream on every call.
    return torch.arange(8, dtype=torch.uint8, device=device)


def pack_mask(keep: torch.Tensor) -> torch.Tensor:
    """A bool mask whose width is a multiple of 8 as one bit an element: the dropout masks kept for
    the backward pass cost 1/8 of their bool size (~3 GB less on Phi-3-mini at 4 x 1,024 tokens)."""
    bits = keep.view(*keep.shape[:-1], -1, 8).to(torch.uint8) << _shifts(keep.device)
    return bits.sum(-1, dtype=torch.uint8)


def unpack_mask(packed: torch.Tensor) -> torch.Tensor:
    return ((packed.unsqueeze(-1) >> _shifts(packed.device)) & 1).bool().view(*packed.shape[:-1], -1)


class FusedLoRA(torch.autograd.Function):
    """y = x W^T + scale * [B_i (drop(x) A_i^T)]_i for a 4-bit W whose rows are the members' outputs.

    ``groups`` partitions the members by dropout mask: members of one group see the same dropped-out
    input, so their A matrices run as one matmul (and one mask is drawn, kept and applied); one group a
    member is peft's own semantics."""

    @staticmethod
    def forward(
        ctx, x, data, absmax, blocksize: int, shape: tuple, widths: tuple, scale: float, p: float, groups, *lora
    ):
        dtype = x.dtype if x.dtype in (torch.bfloat16, torch.float16) else torch.float32
        x2 = x.reshape(-1, shape[1]).to(dtype)
        As, Bs = lora[0::2], lora[1::2]
        ranks = [A.shape[0] for A in As]
        packed = p > 0 and shape[1] % 8 == 0 and x2.numel() >= PACK_MIN_ELEMENTS
        masks, us, member_us = [], [], [None] * len(As)
        for group in groups:
            A = _stack([As[i] for i in group], dtype)
            if p > 0:
                keep = torch.rand_like(x2) >= p
                masks.append(pack_mask(keep) if packed else keep)
                u = (x2 * keep) @ (A.t() * (1.0 / (1.0 - p)))
            else:
                u = x2 @ A.t()
            for i, (lo, hi) in zip(group, _spans([ranks[i] for i in group])):
                member_us[i] = u[:, lo:hi]
            us.append(u)
        B_cast = [B.to(dtype) for B in Bs]
        args = (x2, data, absmax, blocksize, list(shape), member_us, B_cast, list(widths), scale)
        if LORA_IN_OP:
            y = _call(nf4_lora_matmul, _nf4_lora_matmul, *args)
        else:
            y = _add_lora(_call(nf4_matmul, _nf4_matmul, *args[:5], False), *args[5:])
        ctx.save_for_backward(x2, data, absmax, *us, *masks, *lora)
        ctx.meta = (blocksize, shape, widths, scale, p, groups, x.shape, x.dtype, packed)
        return y.view(*x.shape[:-1], shape[0])

    @staticmethod
    def backward(ctx, grad):
        blocksize, shape, widths, scale, p, groups, x_shape, x_dtype, packed = ctx.meta
        saved, n = ctx.saved_tensors, len(groups)
        x2, data, absmax = saved[:3]
        us = saved[3 : 3 + n]
        masks = saved[3 + n : 3 + 2 * n] if p > 0 else ()
        if packed:
            masks = [unpack_mask(m) for m in masks]
        lora = saved[3 + n + len(masks) :]
        As, Bs = lora[0::2], lora[1::2]
        spans, ranks = _spans(widths), [A.shape[0] for A in As]
        dtype = x2.dtype
        g = grad.reshape(-1, shape[0]).to(dtype)
        dx = None
        if ctx.needs_input_grad[0]:
            dx = _call(nf4_matmul, _nf4_matmul, g, data, absmax, blocksize, list(shape), True)
        grads = [None] * len(lora)
        for k, group in enumerate(groups):
            gus = []
            for i, (lo, hi) in zip(group, _spans([ranks[i] for i in group])):
                gi = g[:, spans[i][0] : spans[i][1]]
                grads[2 * i + 1] = ((gi.t() @ us[k][:, lo:hi]) * scale).to(Bs[i].dtype)
                gus.append((gi @ Bs[i].to(dtype)) * scale)
            gu = torch.cat(gus, dim=1) if len(gus) > 1 else gus[0]
            A = _stack([As[i] for i in group], dtype)
            if p > 0:
                dA = gu.t() @ (x2 * masks[k] * (1.0 / (1.0 - p)))
                if dx is not None:
                    dx.add_((gu @ A) * masks[k], alpha=1.0 / (1.0 - p))
            else:
                dA = gu.t() @ x2
                if dx is not None:
                    dx.addmm_(gu, A)
            for i, part in zip(group, torch.split(dA, [ranks[i] for i in group])):
                grads[2 * i] = part.to(As[i].dtype)
        if dx is not None:
            dx = dx.view(*x_shape).to(x_dtype)
        return (dx, None, None, None, None, None, None, None, None, *grads)


def _stack(As: list, dtype) -> torch.Tensor:
    return torch.cat([A.to(dtype) for A in As]) if len(As) > 1 else As[0].to(dtype)


def _spans(widths: tuple) -> list[tuple[int, int]]:
    out, at = [], 0
    for w in widths:
        out.append((at, at + w))
        at += w
    return out


class _Group:
    """The LoRA layers that share one fused nf4 weight; the first one called computes every member's
    output, the others take theirs (each call checks it is the same input)."""

    def __init__(self, members: list, data, absmax, blocksize: int, shape: tuple, widths: tuple, shared: bool):
        self.members, self.data, self.absmax = members, data, absmax
        self.blocksize, self.shape, self.widths = blocksize, shape, widths
        lora = members[0]
        adapter = lora.active_adapters[0]
        self.scale = float(lora.scaling[adapter])
        drop = lora.lora_dropout[adapter]
        self.p = float(getattr(drop, "p", 0.0))
        n = len(members)
        self.groups = (tuple(range(n)),) if shared else tuple((i,) for i in range(n))
        self.params = []
        for m in members:
            self.params += [m.lora_A[adapter].weight, m.lora_B[adapter].weight]
        self.input, self.outputs, self.left = None, None, 0

    def output(self, index: int, x: torch.Tensor) -> torch.Tensor:
        if self.outputs is None or self.input is not x or self.outputs[index] is None:
            p = self.p if self.members[0].training else 0.0
            y = FusedLoRA.apply(
                x,
                self.data,
                self.absmax,
                self.blocksize,
                self.shape,
                self.widths,
                self.scale,
                p,
                self.groups,
                *self.params,
            )
            self.outputs = list(torch.split(y, list(self.widths), dim=-1)) if len(self.widths) > 1 else [y]
            self.input, self.left = x, len(self.widths)
        out = self.outputs[index]
        self.outputs[index] = None
        self.left -= 1
        if self.left == 0:
            self.input, self.outputs = None, None
        return out


def _forward(group: _Group, index: int):
    def forward(x, *args, **kwargs):
        return group.output(index, x)

    return forward


def _fp32_absmax(state) -> torch.Tensor:
    """A Params4bit's block scales as fp32 (double quant expanded once, as bitsandbytes does per call)."""
    from bitsandbytes.functional import dequantize_blockwise

    if state.nested:
        return (dequantize_blockwise(state.absmax, state.state2) + state.offset).float()
    return state.absmax.float()


def fusable(module) -> bool:
    """A peft LoRA layer over a bitsandbytes nf4 Linear, with one plain (no DoRA, no bias) adapter."""
    try:
        from bitsandbytes.nn import Linear4bit
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return False
    if not isinstance(module, LoraLayer):
        return False
    base = module.get_base_layer()
    if not isinstance(base, Linear4bit) or base.bias is not None or module.merged:
        return False
    state = getattr(base.weight, "quant_state", None)
    if state is None or state.quant_type != "nf4" or len(module.active_adapters) != 1:
        return False
    adapter = module.active_adapters[0]
    return (
        adapter in module.lora_A
        and not module.use_dora.get(adapter, False)
        and getattr(module, "lora_bias", {}).get(adapter, False) is False
    )


def fuse(model, shared_dropout: bool = True) -> dict:
    """Route every fusable LoRA layer of ``model`` through :class:`FusedLoRA`, siblings sharing one
    weight. ``shared_dropout``: siblings also share one dropout mask of their common input, as the
    LoRA of a fused ``qkv_proj`` does (``train.lora.dropout_masks: shared``); off, each member draws its
    own, as peft's separate layers do. Returns counts: {"fused_groups": siblings fused, "layers": LoRA
    layers rerouted}."""
    groups, singles = 0, 0
    for parent in list(model.modules()):
        children = dict(parent.named_children())
        done = set()
        for names in SIBLINGS:
            members = [children.get(n) for n in names]
            if all(m is not None and fusable(m) for m in members) and _same_input(members):
                _install(members, shared_dropout)
                groups += 1
                done.update(names)
        for name, child in children.items():
            if name not in done and fusable(child) and not hasattr(child, "_slm_group"):
                _install([child], shared_dropout)
                singles += 1
    if groups or singles:
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    log.info("fused QLoRA: %d sibling groups, %d single projections", groups, singles)
    return {"fused_groups": groups, "layers": singles + groups}


def _same_input(members: list) -> bool:
    bases = [m.get_base_layer() for m in members]
    states = [b.weight.quant_state for b in bases]
    return (
        len({b.in_features for b in bases}) == 1
        and len({s.blocksize for s in states}) == 1
        and len({s.dtype for s in states}) == 1
        and all(b.weight.device == bases[0].weight.device for b in bases)
        and len({m.active_adapters[0] for m in members}) == 1
        and len({float(m.scaling[m.active_adapters[0]]) for m in members}) == 1
        and len({float(getattr(m.lora_dropout[m.active_adapters[0]], "p", 0.0)) for m in members}) == 1
    )


def _install(members: list, shared_dropout: bool) -> None:
    bases = [m.get_base_layer() for m in members]
    states = [b.weight.quant_state for b in bases]
    data = torch.cat([b.weight.data.reshape(-1) for b in bases])
    absmax = torch.cat([_fp32_absmax(s) for s in states])
    widths = tuple(int(b.out_features) for b in bases)
    shape = (sum(widths), int(bases[0].in_features))
    group = _Group(members, data, absmax, states[0].blocksize, shape, widths, shared_dropout)
    for i, (m, b) in enumerate(zip(members, bases)):
        m._slm_group = group
        m.forward = _forward(group, i)
        # The fused copy replaces the member's own 4-bit weight (peft never saves base weights).
        b.weight = None
