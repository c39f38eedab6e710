#!/usr/bin/env python
"""QLoRA training throughput on a Phi-3-mini-shaped model (random weights), the train stage's way.

The model is random-init ``Phi3Config()`` (the defaults are Phi-3-mini: hidden 3072, 32 layers,
intermediate 8192, vocab 32064; speed does not depend on the values). It is saved once as
bf16 safetensors and loaded back through ``components.common.models.load_model`` with
``quantization="nf4"`` (nf4, double quant, bf16 compute), then prepared exactly as
``components/train/stage.py`` does: ``seed_everything`` (deterministic algorithms, warn only),
``prepare_model_for_kbit_training`` with gradient checkpointing, LoRA on ``target_modules()``,
AdamW, grad-norm clipping.

Each variant times ``--steps`` full train steps (forward, backward, clip, AdamW) after
``--warmup`` steps, on a fixed batch of ``--batch`` x ``--seq`` random tokens:

- ``completion_loss``: ours (components.train.stage.completion_loss), the LM head only on
  labelled positions;
- ``hf_loss``: the plain ``model(**batch).loss`` baseline, the full-vocab LM head on every position.

Labels: rows are packed examples of ``--example-len`` tokens whose last ``--completion-len``
tokens are labelled (tone classification: ~40-token prompt, ~4-token completion => ~10%), and
also an "all labelled" case (plain language-model fine-tuning). tokens/s counts every input
position, as the train stage does.

    python bench/gpu/qlora_phi3_shape.py --out OUT            # the H200 run
    python bench/gpu/qlora_phi3_shape.py --tiny --device cpu  # a smoke test anywhere
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from components.common.models import load_model, target_modules  # noqa: E402
from components.train.stage import completion_loss, seed_everything  # noqa: E402


def build_random_model(folder: Path, tiny: bool, device: str) -> None:
    from transformers import Phi3Config, Phi3ForCausalLM

    cfg = Phi3Config()  # Phi-3-mini defaults
    if tiny:
        cfg = Phi3Config(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=4)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = Phi3ForCausalLM(cfg)
    finally:
        torch.set_default_dtype(old)
    model.save_pretrained(folder, safe_serialization=True)
    del model


def make_batch(batch: int, seq: int, vocab: int, example_len: int, completion_len: int, all_labels: bool,
               device: str) -> dict:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, min(vocab, 32000), (batch, seq), generator=g)
    if all_labels:
        labels = ids.clone()
    else:
        labels = torch.full_like(ids, -100)
        pos = torch.arange(seq) % example_len
        keep = pos >= example_len - completion_len
        labels[:, keep] = ids[:, keep]
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device), "labels": labels.to(device)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="2-layer hidden-256 model: a smoke test")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--example-len", type=int, default=40)
    ap.add_argument("--completion-len", type=int, default=4)
    ap.add_argument("--r", type=int, default=64)
    ap.add_argument("--alpha", type=int, default=64)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--model-dir", help="reuse a saved random model folder")
    ap.add_argument("--suite", choices=["stage", "tuning"], default="stage",
                    help="stage: our loss vs the HF loss as the train stage runs now; tuning: what changing the "
                         "stage's set-up would give (bf16 autocast, gradient checkpointing off/non-reentrant, "
                         "no fp32 upcast of the frozen weights)")
    args = ap.parse_args()

    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    cuda = args.device == "cuda"
    dtype = "bfloat16" if cuda else "float32"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info: dict = {"torch": torch.__version__}
    for name in ("transformers", "peft", "bitsandbytes"):
        info[name] = __import__(name).__version__
    if cuda:
        info["gpu"] = torch.cuda.get_device_name()

    t0 = time.time()
    tmp = None
    folder = Path(args.model_dir) if args.model_dir else None
    if folder is None or not (folder / "config.json").is_file():
        tmp = tempfile.mkdtemp(prefix="phi3-random-")
        folder = folder or Path(tmp)
        build_random_model(folder, args.tiny, args.device)
    info["build_and_save_s"] = round(time.time() - t0, 1)
    if cuda:
        torch.cuda.empty_cache()

    seed_everything(0)  # as the train stage: deterministic algorithms, warn only
    t0 = time.time()
    model = load_model(str(folder), dtype=dtype, quantization="nf4", device=args.device)
    info["load_nf4_s"] = round(time.time() - t0, 1)
    if cuda:
        info["weights_gib_after_load"] = round(torch.cuda.memory_allocated() / 2**30, 2)
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cuda)
    modules = target_modules(model, None)
    lora = LoraConfig(r=args.r, lora_alpha=args.alpha, lora_dropout=args.dropout, target_modules=modules,
                      task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    trainable = [p for p in model.parameters() if p.requires_grad]
    info["target_modules"] = modules
    info["trainable_params_m"] = round(sum(p.numel() for p in trainable) / 1e6, 2)
    info["params_b"] = round(sum(p.numel() for p in model.parameters()) / 1e9, 3)
    info["lm_head_dtype"] = str(model.get_base_model().get_output_embeddings().weight.dtype)
    info["config"] = vars(args)
    print(json.dumps(info), flush=True)
    optimizer = torch.optim.AdamW(trainable, lr=1e-5)
    vocab = model.get_base_model().config.vocab_size

    batches = {
        False: make_batch(args.batch, args.seq, vocab, args.example_len, args.completion_len, False, args.device),
        True: make_batch(args.batch, args.seq, vocab, args.example_len, args.completion_len, True, args.device),
    }
    frac = {k: round(float((b["labels"] != -100).float().mean()), 3) for k, b in batches.items()}

    # Correctness: our loss equals the HF loss on the same batch (eval mode: no dropout).
    model.eval()
    with torch.no_grad():
        check = {}
        for all_labels, b in batches.items():
            ours, ref = completion_loss(model, b).item(), model(**b).loss.item()
            check["all" if all_labels else "completion"] = {"completion_loss": ours, "hf_loss": ref,
                                                            "abs_diff": abs(ours - ref)}
        hidden = model.get_base_model().get_decoder()(input_ids=batches[False]["input_ids"][:1, :64]).last_hidden_state
        info["activation_dtype"] = str(hidden.dtype)  # prepare_model_for_kbit_training upcasts norms: fp32
    info["loss_check"] = check
    print("loss check:", json.dumps(check), flush=True)
    model.train()

    def loss_hf(m, b):
        return m(**b).loss

    if args.suite == "tuning":
        return tuning(args, model, trainable, optimizer, batches[False], frac[False], info, check, out)

    variants = [
        # name, loss fn, all labelled, deterministic, tf32
        ("hf_loss", loss_hf, False, True, False),
        ("completion_loss", completion_loss, False, True, False),
        ("hf_loss", loss_hf, True, True, False),
        ("completion_loss", completion_loss, True, True, False),
        ("completion_loss nondet", completion_loss, False, False, False),
        ("completion_loss nondet+tf32", completion_loss, False, False, True),
        ("hf_loss nondet+tf32", loss_hf, False, False, True),
    ]
    rows = []
    for name, fn, all_labels, det, tf32 in variants:
        torch.use_deterministic_algorithms(det, warn_only=True)
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        batch = batches[all_labels]
        tokens = int(batch["attention_mask"].sum())
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        times, losses = [], []
        for step in range(args.warmup + args.steps):
            if cuda:
                torch.cuda.synchronize()
            t = time.perf_counter()
            loss = fn(model, batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())  # syncs
            if cuda:
                torch.cuda.synchronize()
            if step >= args.warmup:
                times.append(time.perf_counter() - t)
        seconds = sum(times)
        row = {
            "variant": name,
            "labels": "all" if all_labels else f"{frac[False]:.0%} (completion)",
            "tokens_per_s": round(tokens * len(times) / seconds, 1),
            "ms_per_step": round(1000 * seconds / len(times), 1),
            "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
            "last_loss": round(losses[-1], 4),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)

    def ratio(a, b, key="tokens_per_s"):
        ra = next(r for r in rows if r["variant"] == a[0] and r["labels"].startswith(a[1]))
        rb = next(r for r in rows if r["variant"] == b[0] and r["labels"].startswith(b[1]))
        return round(ra[key] / rb[key], 3)

    pct = f"{frac[False]:.0%}"
    ratios = {
        f"completion_loss / hf_loss, {pct} labelled (deterministic, as the stage)":
            ratio(("completion_loss", pct), ("hf_loss", pct)),
        "completion_loss / hf_loss, all labelled": ratio(("completion_loss", "all"), ("hf_loss", "all")),
        f"nondeterministic / deterministic, completion_loss {pct}":
            ratio(("completion_loss nondet", pct), ("completion_loss", pct)),
        f"tf32 / fp32 (nondet), completion_loss {pct}":
            ratio(("completion_loss nondet+tf32", pct), ("completion_loss nondet", pct)),
        f"completion_loss / hf_loss, {pct} labelled, nondet+tf32":
            ratio(("completion_loss nondet+tf32", pct), ("hf_loss nondet+tf32", pct)),
    }
    if cuda:
        ratios[f"peak memory completion_loss / hf_loss, {pct}"] = ratio(("completion_loss", pct), ("hf_loss", pct), "peak_gib")

    lines = [
        f"# QLoRA on a Phi-3-mini-shaped model (random weights; {info['params_b']} B stored elements, 4-bit packed)",
        "",
        f"{info.get('gpu', args.device)}; torch {info['torch']}, transformers {info['transformers']}, peft {info['peft']}, "
        f"bitsandbytes {info['bitsandbytes']}. nf4 + double quant, bf16 compute, gradient checkpointing, "
        f"LoRA r={args.r} alpha={args.alpha} dropout={args.dropout} on {modules} ({info['trainable_params_m']}M trainable), "
        f"AdamW; batch {args.batch} x {args.seq}; {args.steps} timed steps after {args.warmup} warm-up. "
        f"LM head dtype after prepare_model_for_kbit_training: {info['lm_head_dtype']}.",
        "",
        "| variant | labelled positions | tokens/s | ms/step | peak GiB | last loss |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {r['variant']} | {r['labels']} | {r['tokens_per_s']:.0f} | {r['ms_per_step']} | {r['peak_gib']} | {r['last_loss']} |"
              for r in rows]
    lines += ["", "| ratio | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in ratios.items()]
    lines += ["", f"loss check (eval mode, same batch): {json.dumps(check)}",
              f"build+save {info['build_and_save_s']} s, nf4 load {info['load_nf4_s']} s"]
    table = "\n".join(lines) + "\n"
    print(table, flush=True)
    (out / "qlora_phi3_shape.md").write_text(table)
    (out / "qlora_phi3_shape.json").write_text(json.dumps({"info": info, "rows": rows, "ratios": ratios}, indent=1))
    if tmp:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def tuning(args, model, trainable, optimizer, batch, frac, info, check, out) -> int:
    """Same model, batch and loss; one set-up change at a time, then combined. Deterministic, as the stage."""
    cuda = args.device == "cuda"
    torch.use_deterministic_algorithms(True, warn_only=True)
    inner = model.get_base_model()

    def set_gc(mode):
        inner.gradient_checkpointing_disable()
        if mode != "off":
            inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": mode == "reentrant"})

    def downcast():  # undo prepare_model_for_kbit_training's fp32 upcast of frozen non-4-bit weights
        n = 0
        for p in model.parameters():
            if not p.requires_grad and p.dtype == torch.float32:
                p.data = p.data.to(torch.bfloat16)
                n += 1
        return n

    def loss_hf(m, b):
        return m(**b).loss

    variants = [
        # name, loss, autocast, gradient checkpointing, downcast frozen fp32 weights to bf16
        ("stage as is (fp32 activations, GC reentrant)", completion_loss, False, "reentrant", False),
        ("GC use_reentrant=False", completion_loss, False, "nonreentrant", False),
        ("bf16 autocast", completion_loss, True, "reentrant", False),
        ("bf16 autocast, GC off", completion_loss, True, "off", False),
        ("hf_loss, bf16 autocast, GC off", loss_hf, True, "off", False),
        ("hf_loss, bf16 autocast", loss_hf, True, "reentrant", False),
        ("no fp32 upcast (frozen weights bf16)", completion_loss, False, "reentrant", True),
        ("no fp32 upcast, GC off", completion_loss, False, "off", True),
    ]
    rows = []
    tokens = int(batch["attention_mask"].sum())
    for name, fn, autocast, gc, down in variants:
        if down:
            info.setdefault("downcast_tensors", downcast())
        set_gc(gc)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        times, losses = [], []
        for step in range(args.warmup + args.steps):
            if cuda:
                torch.cuda.synchronize()
            t = time.perf_counter()
            with torch.autocast(args.device, dtype=torch.bfloat16, enabled=autocast):
                loss = fn(model, batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            if cuda:
                torch.cuda.synchronize()
            if step >= args.warmup:
                times.append(time.perf_counter() - t)
        seconds = sum(times)
        row = {"variant": name, "tokens_per_s": round(tokens * len(times) / seconds, 1),
               "ms_per_step": round(1000 * seconds / len(times), 1),
               "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None, "last_loss": round(losses[-1], 4)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    base = rows[0]["tokens_per_s"]
    lines = [
        f"# QLoRA set-up tuning, Phi-3-mini shape, {info.get('gpu')}",
        "",
        f"completion_loss unless named, {frac:.0%} labelled, batch {args.batch} x {args.seq}, LoRA r={args.r} on "
        f"{info['target_modules']}, deterministic algorithms on (warn only) as the stage; torch {info['torch']}, "
        f"transformers {info['transformers']}, peft {info['peft']}, bitsandbytes {info['bitsandbytes']}.",
        "",
        "| variant | tokens/s | vs stage | ms/step | peak GiB | last loss |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {r['variant']} | {r['tokens_per_s']:.0f} | {r['tokens_per_s'] / base:.2f}x | {r['ms_per_step']} | "
              f"{r['peak_gib']} | {r['last_loss']} |" for r in rows]
    table = "\n".join(lines) + "\n"
    print(table, flush=True)
    (out / "qlora_phi3_tuning.md").write_text(table)
    (out / "qlora_phi3_tuning.json").write_text(json.dumps({"info": info, "rows": rows, "loss_check": check}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
