"""Fused QLoRA projections (stages/train/fused.py) on CPU, against peft's own LoRA layers on the same
nf4 base: the same loss and gradients, a standard PEFT adapter of the original module names, and the
fused weight dequantizing to exactly the members' weights."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from core.models import load_model
from stages.train import fused

LLAMA_ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    from core import tiny_models
    from core.tokenizer_io import save_tokenizer

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=1000,
        hidden_size=128,
        intermediate_size=192,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped KV: q, k and v of different widths
        max_position_embeddings=128,
    )
    out = tmp_path_factory.mktemp("llama")
    LlamaForCausalLM(cfg).save_pretrained(out, safe_serialization=True)
    save_tokenizer(tiny_models.tokenizer(1000), out)  # the stages load it from the model folder
    return out


def lora(llama_dir, dropout: float, fuse: bool, shared_dropout: bool = True):
    from peft import LoraConfig, get_peft_model

    base = load_model(str(llama_dir), dtype="float32", quantization="nf4", device="cpu")
    torch.manual_seed(1)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, lora_dropout=dropout, target_modules=LLAMA_ALL))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)  # peft starts B at zero: make the LoRA path count
    if fuse:
        counts = fused.fuse(model, shared_dropout=shared_dropout)
        assert counts == {"fused_groups": 4, "layers": 8}  # per layer: q/k/v, gate/up, o, down
    return model.train()


def loss_and_grads(model, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 1000, (2, 24), generator=g)
    torch.manual_seed(5)
    model.zero_grad(set_to_none=True)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_fused_matches_peft(llama_dir):
    plain_loss, plain = loss_and_grads(lora(llama_dir, 0.0, fuse=False))
    model = lora(llama_dir, 0.0, fuse=True)
    fused_loss, got = loss_and_grads(model)
    assert fused_loss == pytest.approx(plain_loss, rel=1e-5)
    assert got.keys() == plain.keys() and len(got) == 2 * 7 * 2
    for name, grad in plain.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_fused_weight_is_the_members_weights(llama_dir):
    from bitsandbytes.functional import dequantize_4bit

    base = load_model(str(llama_dir), dtype="float32", quantization="nf4", device="cpu")
    attn = base.model.layers[0].self_attn
    want = torch.cat(
        [dequantize_4bit(m.weight.data, m.weight.quant_state) for m in (attn.q_proj, attn.k_proj, attn.v_proj)]
    )
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "k_proj", "v_proj"]))
    fused.fuse(model)
    group = model.base_model.model.model.layers[0].self_attn.q_proj._slm_group
    got = torch.ops.bitsandbytes.dequantize_4bit.default(
        group.data, group.absmax, group.blocksize, "nf4", list(group.shape), torch.float32
    )
    assert group.widths == (128, 64, 64)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("shared_dropout", [True, False], ids=["shared", "independent"])
def test_dropout_gradients_follow_the_masks(llama_dir, shared_dropout):
    """With dropout, the fused backward is the exact gradient of its own (random) forward: a second
    forward with the same RNG state gives the same loss, and a finite difference along the gradient agrees."""
    model = lora(llama_dir, 0.2, fuse=True, shared_dropout=shared_dropout)
    loss, got = loss_and_grads(model)
    again, _ = loss_and_grads(model)
    assert again == pytest.approx(loss, rel=1e-6)
    name = next(n for n in got if "q_proj.lora_A" in n)
    param = dict(model.named_parameters())[name]
    # A central difference: a one-sided one at fp32 is as much rounding as signal on a loss of ~7.
    eps = 1e-2
    direction = got[name] / got[name].norm()
    moved = []
    for sign in (1, -1):
        with torch.no_grad():
            param.add_(direction, alpha=sign * eps)
        moved.append(loss_and_grads(model)[0])
        with torch.no_grad():
            param.sub_(direction, alpha=sign * eps)
    assert (moved[0] - moved[1]) / (2 * eps) == pytest.approx(got[name].norm().item(), rel=0.02)


@pytest.mark.parametrize("packed", [True, False], ids=["bit-packed", "bool"])
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "independent"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_lora_is_the_lora_of_its_own_masks(shared, dtype, packed, monkeypatch):
    """FusedLoRA against plain autograd on the same dequantized weight and the same dropout masks
    (drawn again from the same RNG state): siblings of unequal widths and ranks, one shared mask or one
    mask a member, kept for the backward as bits (large passes) or as bools (small ones). Output and
    every gradient agree."""
    from bitsandbytes.functional import quantize_4bit

    monkeypatch.setattr(fused, "PACK_MIN_ELEMENTS", 0 if packed else 1 << 30)

    torch.manual_seed(0)
    widths, ranks, d, p, scale = (24, 8, 16), (4, 2, 6), 32, 0.3, 1.7
    weight, state = quantize_4bit(torch.randn(sum(widths), d), blocksize=64, quant_type="nf4")
    dense = torch.ops.bitsandbytes.dequantize_4bit.default(
        weight, state.absmax, 64, "nf4", [sum(widths), d], torch.float32
    ).to(dtype)
    lora = []
    for w, r in zip(widths, ranks):
        lora += [torch.randn(r, d, requires_grad=True), torch.randn(w, r, requires_grad=True)]
    x = torch.randn(3, 5, d, dtype=dtype, requires_grad=True)
    groups = ((0, 1, 2),) if shared else ((0,), (1,), (2,))

    torch.manual_seed(7)
    args = (weight.reshape(-1), state.absmax.float(), 64, (sum(widths), d), widths, scale, p, groups)
    y = fused.FusedLoRA.apply(x, *args, *lora)
    torch.manual_seed(7)
    masks = [torch.rand(15, d, dtype=dtype) >= p for _ in groups]
    member_mask = {i: masks[k] for k, group in enumerate(groups) for i in group}
    x2 = x.reshape(-1, d)
    outs = [
        x2 @ dense[lo:hi].t()
        + scale * (x2 * member_mask[i] / (1 - p)) @ lora[2 * i].to(dtype).t() @ lora[2 * i + 1].to(dtype).t()
        for i, (lo, hi) in enumerate(fused._spans(widths))
    ]
    want = torch.cat(outs, dim=1).view(3, 5, -1)
    # bf16: another summation order moves single elements by a few ulps; compare the whole tensor.
    limit = 1e-2 if dtype == torch.bfloat16 else 1e-5
    seed = torch.randn_like(want)
    got = [y, *torch.autograd.grad(y, [x, *lora], seed)]
    ref = [want, *torch.autograd.grad(want, [x, *lora], seed)]
    for g, r in zip(got, ref):
        g, r = g.float(), r.float()
        assert g.shape == r.shape and ((g - r).norm() / r.norm()).item() < limit


def test_saved_adapter_has_the_original_names(llama_dir, tmp_path):
    from safetensors.torch import load_file

    plain = lora(llama_dir, 0.0, fuse=False)
    model = lora(llama_dir, 0.0, fuse=True)
    plain.save_pretrained(tmp_path / "plain")
    model.save_pretrained(tmp_path / "fused")
    a, b = (
        load_file(tmp_path / "plain" / "adapter_model.safetensors"),
        load_file(tmp_path / "fused" / "adapter_model.safetensors"),
    )
    assert a.keys() == b.keys()
    assert any(".q_proj.lora_A." in k for k in b) and any(".up_proj.lora_B." in k for k in b)
    for k in a:
        torch.testing.assert_close(a[k], b[k])


def test_train_bench_smoke_runs_on_cpu(tmp_path):
    """bench/train_throughput.py's smoke suite, as CI runs it: every row a real measurement or, for
    Unsloth where it does not import, "not measured" with the reason; never a number from a stub."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, str(root / "bench" / "train_throughput.py"), "--tiny", "--device", "cpu"]
    cmd += ["--suite", "smoke", "--steps", "2", "--warmup", "1", "--out", str(tmp_path)]
    cmd += ["--model-dir", str(tmp_path / "phi3")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads((tmp_path / "train_throughput.json").read_text())["rows"]
    assert {r["form"] for r in rows} == {"llama", "phi3"}
    for r in rows:
        if r["variant"] == "unsloth" and "error" in r:
            assert r["error"].startswith("not measured: ") and "tokens_per_s" not in r
            continue
        assert "error" not in r, r
        assert r["tokens_per_s"] > 0 and len(r["losses"]) == 3 and all(x > 0 for x in r["losses"])
    table = (tmp_path / "train_throughput.md").read_text()
    assert "| llama | stage:default |" in table and "| phi3 | naive |" in table


def test_fused_run_trains_and_passes_merge_parity(llama_dir, tmp_path, tiny_run):
    """The train stage with fused projections on a Llama-form nf4 base, then merge: the adapter it saves
    is the standard one, and the merged model passes merge's parity check against base + adapter."""
    import json
    import shutil

    from helpers import TINY, stage_cli

    from core.config import load_config
    from engines.local import stage_argv
    from pipeline import DAG

    shutil.copytree(tiny_run / "data_prep", tmp_path / "data_prep")
    sets = [
        f"model.base={llama_dir}",
        "train.quantization=nf4",
        "train.fused_lora=on",
        "train.lora.modules_to_save=null",
        f"train.lora.target_modules=[{','.join(LLAMA_ALL)}]",
        "train.lora.dropout=0.1",
    ]
    cfg = load_config(TINY, sets)
    logs = {}
    for name in ("train", "merge"):
        proc = stage_cli(name, *stage_argv(DAG[name], cfg, str(tmp_path))[3:])
        assert proc.returncode == 0, proc.stderr[-2000:]
        logs[name] = proc.stdout + proc.stderr
    assert "fused QLoRA: 4 sibling groups, 4 single projections" in logs["train"]  # 2 layers x (qkv, gate/up; o, down)
    adapter = tmp_path / "train" / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["target_modules"] == sorted(LLAMA_ALL)
    parity = json.loads((tmp_path / "merge" / "model" / "parity.json").read_text())
    assert parity["relative_diff"] <= parity["tolerance"]


@settings(max_examples=40, derandomize=True, deadline=None)
@given(rows=st.integers(1, 5), groups=st.integers(1, 6), lead=st.integers(0, 2), keep=st.floats(0.0, 1.0))
def test_packed_dropout_masks_unpack_to_the_same_mask(rows, groups, lead, keep):
    """The masks the fused backward keeps at one bit an element come back exactly as drawn."""
    shape = (2,) * lead + (rows, 8 * groups)
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(rows * 31 + groups)) < keep
    packed = fused.pack_mask(mask)
    assert packed.dtype == torch.uint8 and packed.shape == shape[:-1] + (groups,)
    assert torch.equal(fused.unpack_mask(packed), mask)


def test_compiled_layer_saves_no_dequantized_weight(llama_dir):
    """Under torch.compile a decoder layer traces as one graph, and what its backward keeps holds no
    dequantized weight (the nf4 matmul is one opaque op): the partitioner once saved every layer's."""
    import torch._dynamo

    model = lora(llama_dir, 0.1, fuse=True)
    layer = model.get_base_model().model.layers[0]
    x = torch.randn(2, 24, 128, requires_grad=True)
    assert torch._dynamo.explain(layer.mlp)(x).graph_break_count == 0
    weights = {(192, 128), (128, 192), (384, 128)}  # gate, up, down and the fused gate/up, either way round
    weights |= {(w, h) for h, w in weights}
    saved: list[tuple] = []

    def pack(t):
        saved.append((tuple(t.shape), t.dtype))
        return t

    compiled = torch.compile(layer.mlp, backend="aot_eager", dynamic=False)
    torch.manual_seed(0)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = compiled(x)
    y.sum().backward()
    assert saved and not [s for s, dtype in saved if s in weights and dtype.is_floating_point], saved
    torch.manual_seed(0)
    eager = layer.mlp(x)
    torch.testing.assert_close(y, eager)


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_compiled_layer_adds_lora_outputs_in_place(llama_dir, dropout):
    """Traced, a whole decoder layer (q/k/v and gate/up fused) writes no slice of a fused output back:
    the members' LoRA outputs are added inside one opaque op. Functionalized in-place addmms into slices
    were an addmm into a new buffer plus a copy back, five copies a layer on the GPU."""
    from functorch.compile import make_boxed_func
    from torch._functorch.aot_autograd import aot_module_simplified

    model = lora(llama_dir, dropout, fuse=True)
    decoder = model.get_base_model().model
    layer = decoder.layers[0]
    x = torch.randn(2, 24, 128, requires_grad=True)
    position = decoder.rotary_emb(x, torch.arange(24)[None].expand(2, -1))
    graphs = []

    def keep(graph, _inputs):
        graphs.append(graph)
        return make_boxed_func(graph)

    def backend(gm, inputs):
        return aot_module_simplified(gm, inputs, fw_compiler=keep, bw_compiler=keep)

    torch.manual_seed(0)
    y = torch.compile(layer, backend=backend, dynamic=False)(x, position_embeddings=position)
    y = y[0] if isinstance(y, tuple) else y
    y.sum().backward()
    assert len(graphs) == 2  # one forward, one backward: no graph break
    targets = [str(n.target) for g in graphs for n in g.graph.nodes if n.op == "call_function"]
    assert targets.count("slm.nf4_lora_matmul.default") == 4  # q/k/v, o, gate/up, down
    assert not [t for t in targets if "slice_scatter" in t or "copy" in t], targets
    torch.manual_seed(0)
    eager = layer(x, position_embeddings=position)
    torch.testing.assert_close(y, eager[0] if isinstance(eager, tuple) else eager)
