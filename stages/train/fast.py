"""The train stage's CUDA fast path: which levers are on, setting them up, and the packed loss.

On CPU nothing here changes the stage (the plain, deterministic path runs, bit-identical on
resume) unless ``train.padding_free: on`` is asked for. On CUDA, by default:

- bf16 autocast, and the frozen weights stay bf16: no fp32 upcast of norms, embeddings and the
  LM head (``prepare_model_for_kbit_training`` does one), so no per-op casts in and out of fp32;
- padding-free steps: the ``batch_size x grad_accum`` examples of an optimizer step are packed
  into rows of at most ``max_seq_len`` tokens (at most ``batch_size`` rows per forward pass, so no
  more tokens per pass than a padded micro-batch), with position ids restarting at each example.
  transformers turns restarting position ids into a block-diagonal causal mask, so no example
  attends to another (unlike ``train.packing``, Olive's "join"). Each token's loss is weighted by
  ``1 / (completion tokens of its micro-batch x grad_accum)``, so the loss and its gradient equal
  the padded micro-batches' exactly, whatever the packing;
- fused QLoRA projections (fused.py): q/k/v and gate/up share one nf4 matrix, and one autograd
  function does dequantize + matmul + LoRA without keeping dequantized weights or dropped-out inputs;
- liger-kernel's Triton RMSNorm, RoPE and SwiGLU where the package is installed (eager only: dynamo
  cannot trace them, and under ``torch.compile`` inductor fuses those ops itself), and its fused linear
  cross-entropy for the LM head on the completion positions only (outside the compiled layers, so it
  stays on under compile);
- gradient checkpointing only when the activations would not fit (an estimate against the free
  memory), non-reentrant;
- ``train.compile: auto``: ``torch.compile`` of each decoder layer when the planned run is long enough
  to repay its warm-up (:func:`choose_compile`), with the compile caches under the model cache so that
  a re-run or a retried pod finds them warm.

The bench (bench/train_throughput.py) builds a :class:`FastPath` directly to time each lever.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import torch

from core.errors import UserError

log = logging.getLogger("slm")


@dataclass(frozen=True)
class FastPath:
    device: str = "cpu"
    autocast: bool = False  # bf16 autocast around forward and loss
    keep_bf16: bool = False  # nf4: freeze without prepare_model_for_kbit_training's fp32 upcast
    padding_free: bool = False
    liger: bool = False  # liger's RMSNorm, RoPE and SwiGLU in the decoder layers (eager)
    fused_ce: bool = False  # liger's fused linear cross-entropy for the LM head
    fused_lora: bool = False  # fused.py: sibling projections share one nf4 matmul; lean LoRA backward
    gradient_checkpointing: bool = False
    compile: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)


def liger_available() -> bool:
    try:
        import liger_kernel.transformers  # noqa: F401
    except Exception:  # noqa: BLE001 - any import problem (no triton, old torch) means "not here"
        return False
    return True


def resolve(tc, device: str, world: int = 1) -> FastPath:
    """The levers for this config on this device. Gradient checkpointing and compile "auto" are settled
    later (:func:`choose_checkpointing`, :func:`choose_compile`), once the model's size is known."""
    cuda = device == "cuda"
    notes = []
    # Data parallel splits a step's examples over the ranks as padding-free passes (pack_step), on CPU too.
    padding_free = tc.padding_free == "on" or (tc.padding_free == "auto" and (cuda or world > 1))
    liger = False
    if cuda and tc.kernels != "none":
        liger = liger_available()
        if not liger:
            if tc.kernels == "liger":
                raise UserError("train.kernels=liger but liger-kernel is not installed (pip install liger-kernel)")
            notes.append("liger-kernel not installed: plain PyTorch kernels")
    if not cuda and (tc.kernels == "liger" or tc.compile == "on" or tc.gradient_checkpointing == "on"):
        notes.append("train.kernels/compile/gradient_checkpointing apply on CUDA only; ignored on CPU")
    if cuda and tc.compile == "on" and tc.kernels == "liger":
        # Measured on the H200 (torch 2.11, liger-kernel 0.8.5): dynamo fails on LigerRMSNormFunction.
        raise UserError(
            "train.compile=on and train.kernels=liger do not work together (torch.compile fails on "
            "liger's RMSNorm); choose one"
        )
    fused_lora = tc.quantization == "nf4" and (tc.fused_lora == "on" or (tc.fused_lora == "auto" and cuda))
    return FastPath(
        device=device,
        autocast=cuda,
        keep_bf16=cuda,
        padding_free=padding_free,
        liger=liger,
        fused_ce=liger,
        fused_lora=fused_lora,
        gradient_checkpointing=cuda and tc.gradient_checkpointing == "on",
        compile=cuda and tc.compile == "on",
        notes=tuple(notes),
    )


# torch.compile of the decoder layers: the warm-up it costs and the share of an eager step it saves,
# measured on Phi-3-mini QLoRA (docs/benchmarks.md); an eager step's speed as model FLOPs per second.
COMPILE_WARMUP_S = 60.0
COMPILE_SAVES = 0.2
EAGER_FLOPS = 200e12


def parameters(config) -> int:
    """The decoder's parameter count from its config (4-bit weights report packed sizes)."""
    h, layers = config.hidden_size, config.num_hidden_layers
    inter = getattr(config, "intermediate_size", 4 * h)
    heads = getattr(config, "num_attention_heads", 1)
    kv = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or h // heads
    attention = h * heads * head_dim * 2 + h * kv * head_dim * 2
    return layers * (attention + 3 * h * inter) + 2 * config.vocab_size * h


def choose_compile(fp: FastPath, tc, model_config, tokens_per_step: int) -> FastPath:
    """``train.compile: auto``: on (CUDA) when the planned steps' eager time, estimated from the model's
    FLOPs (forward + input-gradient backward: 4 x parameters a token), is long enough that the share
    compile saves repays its warm-up twice over. Compiled layers take no liger layer kernels."""
    if fp.device != "cuda":
        return fp
    on = fp.compile
    if tc.compile == "auto":
        eager_s = 4 * parameters(model_config) * tokens_per_step * tc.max_steps / EAGER_FLOPS
        on = COMPILE_SAVES * eager_s > 2 * COMPILE_WARMUP_S
        log.info(
            "torch.compile %s: ~%.0f s of eager training planned (%d steps), ~%.0f s warm-up",
            "on" if on else "off",
            eager_s,
            tc.max_steps,
            COMPILE_WARMUP_S,
        )
    if on or fp.liger or fp.fused_ce:
        # liger's Triton kernels are JIT-compiled per shape too: measured on the H100, the tone workload's
        # eager step took 981 ms in the first process of a call and 341 ms in a later one with the same levers.
        compile_caches()
    return replace(fp, compile=True, liger=False) if on else fp


def compile_caches() -> None:
    """Inductor's and Triton's caches under the model cache (SLM_CACHE_DIR; on a cluster the cache
    volume), unless set already: a re-run or a retried pod reuses the compiled kernels (torch.compile's
    and liger's)."""
    import os

    from core.models import cache_dir

    root = cache_dir() / "torch-compile"
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(root / "inductor"))
    os.environ.setdefault("TRITON_CACHE_DIR", str(root / "triton"))


def activation_bytes(config, tokens: int, kept: int) -> int:
    """Peak activation memory of one forward+backward without checkpointing, estimated.

    Per token and layer, bf16: ~18 hidden-wide and ~5 intermediate-wide saved tensors (norm outputs,
    q/k/v, attention output, LoRA inputs, gate/up and the SwiGLU product). Fitted to the H200
    measurement of the plain loop on Phi-3-mini (4 x 1024 tokens: ~24 GiB of activations), plus
    the LM head's fp32 logits on the labelled positions."""
    hidden = config.hidden_size
    inter = getattr(config, "intermediate_size", 4 * hidden)
    layers = config.num_hidden_layers
    per_token = layers * 2 * (18 * hidden + 5 * inter)
    return int(tokens * per_token + kept * config.vocab_size * 4 * 3)


def choose_checkpointing(fp: FastPath, tc, model_config, tokens_per_pass: int) -> FastPath:
    """Gradient checkpointing "auto": on only if the estimated activations exceed 80% of the free
    GPU memory (after the weights, adapter and optimizer state are counted)."""
    if fp.device != "cuda" or tc.gradient_checkpointing != "auto":
        return fp
    free, _total = torch.cuda.mem_get_info()
    need = activation_bytes(model_config, tokens_per_pass, tokens_per_pass)
    on = need > 0.8 * free
    log.info(
        "gradient checkpointing %s: ~%.1f GiB of activations for %d tokens a pass, %.1f GiB free",
        "on" if on else "off",
        need / 2**30,
        tokens_per_pass,
        free / 2**30,
    )
    return replace(fp, gradient_checkpointing=on)


def prepare_base(model, fp: FastPath, quantization: str):
    """Before LoRA: freeze (nf4; the plain path upcasts as before), liger kernels."""
    from peft import prepare_model_for_kbit_training

    if quantization == "nf4":
        if fp.keep_bf16:
            for p in model.parameters():
                p.requires_grad_(False)
        else:  # the plain path, as before (CPU: unchanged behaviour)
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if fp.liger:
        from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN, _apply_liger_kernel_to_instance

        if model.config.model_type in MODEL_TYPE_TO_APPLY_LIGER_FN:
            # The cross-entropy is ours (completion positions only): leave the model's forward alone.
            _apply_liger_kernel_to_instance(
                model=model,
                rope=True,
                rms_norm=True,
                swiglu=True,
                cross_entropy=False,
                fused_linear_cross_entropy=False,
            )
        else:
            log.info(
                "liger-kernel has no kernels for %s: only its fused linear cross-entropy is used",
                model.config.model_type,
            )
    return model


def enable_checkpointing(model) -> None:
    """Non-reentrant checkpointing of each decoder layer (the base model's own switch)."""
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False


def compile_layers(model) -> int:
    """Regional compilation: each decoder layer on its own (one graph reused by every layer)."""
    decoder = model.get_base_model().get_decoder()
    layers = getattr(decoder, "layers", None)
    if layers is None:
        return 0
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)


# ---------------------------------------------------------------------------------------------
# Padding-free steps


def shifted(example: dict) -> list[int]:
    """The next-token targets of one example (the last position has none)."""
    return example["labels"][1:] + [-100]


# Packed rows are padded to a multiple of this: the matmuls get aligned shapes, and Triton (liger's
# kernels, inductor's) specializes integer arguments on divisibility by 16, so an unaligned length
# compiled new kernel variants in the middle of a run.
PACK_ALIGN = 16


def pack_step(micros: list[list[dict]], tc, pad_id: int, rank: int = 0, world: int = 1) -> list[dict]:
    """One optimizer step's examples (``micros``: the padded path's micro-batches, in order) as
    padding-free forward passes for this rank.

    Every token carries the weight that makes ``sum(weight * token loss)`` over all passes of all
    ranks equal the padded path's ``sum over micro-batches of mean loss / grad_accum``. With
    ``world`` ranks each rank gets every world-th example of the step, and the weights are scaled
    by ``world`` because data-parallel gradients are averaged over ranks.

    The labelled positions, their targets and weights are gathered here on the host, so the loss
    (:func:`packed_loss`) selects them on the device without a host sync.
    """
    counts = [sum(t != -100 for e in m for t in shifted(e)) for m in micros]
    flat = [(g, e) for g, m in enumerate(micros) for e in m]
    mine = flat[rank::world]
    if not mine:
        raise UserError(
            f"{world} ranks (train.nodes x train.gpus) are more than the {len(flat)} examples of a step "
            "(batch_size x grad_accum); use fewer ranks or raise the batch"
        )
    cap, rows_per_pass = tc.max_seq_len, tc.batch_size
    rows: list[list[tuple[int, dict]]] = [[]]
    used = 0
    for g, e in mine:
        n = len(e["input_ids"])
        if used + n > cap and rows[-1]:
            rows.append([])
            used = 0
        rows[-1].append((g, e))
        used += n
    # fp32, as the weights always were: the loss sums the same values as before.
    weight = torch.tensor([world / (max(c, 1) * len(micros)) for c in counts], dtype=torch.float32)
    return [_packed_pass(rows[i : i + rows_per_pass], weight, pad_id) for i in range(0, len(rows), rows_per_pass)]


def _packed_pass(chunk: list[list[tuple[int, dict]]], weight: torch.Tensor, pad_id: int) -> dict:
    """One forward pass: ``chunk``'s rows of (micro-batch, example), each example's positions restarting."""
    width = max(sum(len(e["input_ids"]) for _, e in row) for row in chunk)
    width = -(-width // PACK_ALIGN) * PACK_ALIGN
    ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
    pos = torch.zeros((len(chunk), width), dtype=torch.long)
    tgt = torch.full((len(chunk), width), -100, dtype=torch.long)
    group = torch.full((len(chunk), width), -1, dtype=torch.long)
    for r, row in enumerate(chunk):
        at = 0
        for g, e in row:
            n = len(e["input_ids"])
            ids[r, at : at + n] = torch.tensor(e["input_ids"])
            pos[r, at : at + n] = torch.arange(n)
            tgt[r, at : at + n] = torch.tensor(shifted(e))
            group[r, at : at + n] = g
            at += n
        if at < width:  # the tail is its own "sequence" (positions restart), with no loss
            pos[r, at:] = torch.arange(width - at)
    index = (tgt.reshape(-1) != -100).nonzero().squeeze(1)  # row-major, as hidden[mask] selects
    labels, weights = tgt.reshape(-1)[index], weight[group.reshape(-1)[index]]
    # One chunk per distinct weight, ascending (the fused cross-entropy takes one weight a call).
    chunks = []
    for value in torch.unique(weights).tolist():
        sel = (weights == value).nonzero().squeeze(1)
        chunks.append((value, index[sel], labels[sel]))
    return {
        "input_ids": ids,
        "position_ids": pos,
        "index": index,
        "labels": labels,
        "weights": weights,
        "chunks": chunks,
        "tokens": int(sum(len(e["input_ids"]) for row in chunk for _, e in row)),
    }


def to_device(batch, device: str):
    """A pass's tensors on ``device``. CUDA copies come from pinned memory: a copy from pageable memory
    waits for the stream (a host sync before every pass)."""
    if isinstance(batch, torch.Tensor):
        if device.startswith("cuda"):
            return batch.pin_memory().to(device, non_blocking=True)
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def packed_loss(model, batch: dict, fused_ce: bool = False) -> torch.Tensor:
    """sum(weight * cross-entropy) over the labelled positions of a padding-free pass; the LM head
    runs on those positions only (fused with the cross-entropy under liger). No host sync: the
    positions come gathered from :func:`pack_step`."""
    inner = model.get_base_model()
    decoder = inner.get_decoder()
    hidden = decoder(
        input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
    ).last_hidden_state
    flat = hidden.reshape(-1, hidden.shape[-1])
    head = inner.get_output_embeddings()
    # A plain Linear head only: a trained head (modules_to_save wraps it) keeps the plain loss below.
    if (
        fused_ce
        and type(head) is torch.nn.Linear
        and head.bias is None
        and not getattr(inner.config, "final_logit_softcapping", None)
    ):
        # Tokens of one micro-batch share a weight: one fused call per distinct weight, summed.
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

        weight = head.weight
        total = flat.new_zeros((), dtype=torch.float32)
        for value, positions, labels in batch["chunks"]:
            total = total + value * liger_fused_linear_cross_entropy(
                flat.index_select(0, positions), weight.to(flat.dtype), labels, reduction="sum"
            )
        return total
    logits = head(flat.index_select(0, batch["index"])).float()
    ce = torch.nn.functional.cross_entropy(logits, batch["labels"], reduction="none")
    return (ce * batch["weights"]).sum()
