#!/usr/bin/env python
"""Training throughput: the naive QLoRA loop vs the train stage's own step, same shape, batch and optimizer.

Every variant runs in its own process (liger patches module globals, torch.compile caches, and
peak memory must not carry over) on the same saved model, batch, LoRA placement and AdamW:

- ``naive``: what a user writes with plain transformers + peft + bitsandbytes: the model loaded in
  nf4 (double quant, bf16 compute, bf16 storage of the rest), ``get_peft_model``, no gradient
  checkpointing, ``model(**batch).loss``, clip, AdamW;
- ``stage:<levers>``: ``stages.train.stage.build`` (the stage's own model set-up) with a
  :class:`stages.train.fast.FastPath` naming the levers, and the stage's step function
  (``padded_step`` or, padding-free, ``fast.pack_step`` + ``train_step``). ``stage:default`` is
  what the stage resolves for CUDA from the default config; ``stage:before`` is the stage as it
  was (fp32 upcast by prepare_model_for_kbit_training, gradient checkpointing, bf16 autocast);
- ``unsloth``: Unsloth's ``FastLanguageModel`` (its own 4-bit load, LoRA patching, kernels and loss) on
  the Llama-form copy, where it imports (``--unsloth BUNDLE.tar.xz`` or an installed ``unsloth``); where it
  does not, the row says "not measured" and why. Unsloth is never a dependency of the stage.

Model forms: ``phi3`` = the random Phi-3 (fused ``qkv_proj``/``gate_up_proj``, LoRA on its 4 projections);
``llama`` = the same weights saved as ``LlamaForCausalLM`` (separate q/k/v and gate/up: how Unsloth ships
Phi-3-mini), LoRA on all 7 projections. ``stage:default`` resolves the stage's levers from the default
config for a job of ``--planned-steps`` steps (``train.compile: auto`` decides by that length);
``stage:eager`` is the same with compile off, what a short job gets.

Data: ``synthetic`` = batch x seq random tokens, every position labelled (plain language-model
fine-tuning: the stage's completion-only LM head saves nothing there); ``tone`` = the bundled tone
set through the stage's tokenizer, batch x grad_accum examples a step, the naive loop padding each
micro-batch to its longest row. tokens/s counts real (non-pad) tokens. Ratios are against the naive
loop of the same run.

    python bench/train_throughput.py --out OUT                     # the H200 suite (docs/benchmarks.md)
    python bench/train_throughput.py --tiny --device cpu --steps 2 --warmup 1   # a smoke test anywhere
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PHI3_ALL = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
LLAMA_ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
COOKBOOK = ["o_proj", "qkv_proj"]

# name -> FastPath fields (device and the rest filled in by the child)
BASE = dict(autocast=True, keep_bf16=True)
LR, WEIGHT_DECAY = 1e-4, 0.01  # every variant's AdamW (torch's default weight decay)
LEVERS = {
    "before": dict(autocast=True, keep_bf16=False, gradient_checkpointing=True),
    "plain": BASE,  # bf16 autocast, no fp32 upcast, no GC, padded
    "padfree": dict(BASE, padding_free=True),
    "liger": dict(BASE, padding_free=True, liger=True, fused_ce=True),
    "fused": dict(BASE, padding_free=True, fused_lora=True),
    "fused+liger": dict(BASE, padding_free=True, fused_lora=True, liger=True, fused_ce=True),
    "compile": dict(BASE, padding_free=True, compile=True),
    "compile+ce": dict(BASE, padding_free=True, compile=True, fused_ce=True),
    "fused+compile": dict(BASE, padding_free=True, fused_lora=True, compile=True),
    "fused+compile+ce": dict(BASE, padding_free=True, fused_lora=True, compile=True, fused_ce=True),
    "liger+compile": dict(BASE, padding_free=True, liger=True, compile=True),
    "liger+gc": dict(BASE, padding_free=True, liger=True, fused_ce=True, gradient_checkpointing=True),
}


def _rows(
    variants: str,
    form: str = "phi3",
    data: str = "synthetic",
    batch: int = 4,
    seq: int = 1024,
    grad_accum: int = 1,
    targets: tuple | None = None,
) -> list[tuple]:
    targets = targets or (LLAMA_ALL if form == "llama" else PHI3_ALL)
    return [(v, form, data, batch, seq, grad_accum, targets) for v in variants.split()]


SUITES = {
    # variant, form, data, batch, seq, grad_accum, targets
    # Issue 17's table: both model forms and the tone workload, Unsloth beside the stage.
    "unsloth-llama": _rows("naive unsloth stage:default stage:eager", form="llama"),
    "unsloth-phi3": _rows("naive stage:default stage:eager"),
    "unsloth-tone": _rows("naive unsloth stage:default", form="llama", data="tone", grad_accum=4),
    # Issue 17's done-when rows in one call: Llama form vs Unsloth, Phi-3 form vs naive, tone vs Unsloth.
    "issue17": _rows("unsloth stage:default", form="llama")
    + _rows("unsloth stage:default", form="llama", data="tone", grad_accum=4)
    + _rows("naive stage:default"),
    # Where the tone workload's eager step goes: fused QLoRA or not.
    "tone-levers": _rows("stage:default stage:liger stage:fused+liger", form="llama", data="tone", grad_accum=4),
    # The tone rows with Triton's kernel cache warm: the first stage row compiles liger's kernels for
    # the step shapes, the second is timed with them cached, as a re-run or retried pod finds them.
    "tone-warm": _rows("stage:default unsloth stage:default", form="llama", data="tone", grad_accum=4),
    # Issue 17's done-when rows, most wanted first, each beside the third round's step loop where it
    # changed: Llama form vs Unsloth, Phi-3 form vs naive, tone vs Unsloth (cold, then warm caches).
    "round4": _rows("unsloth stage:default stage:default~round3", form="llama")
    + _rows("naive stage:default")
    + _rows("stage:default unsloth stage:default stage:default~round3", form="llama", data="tone", grad_accum=4),
    # Issue 17's done-when rows first (Llama vs Unsloth, Phi-3 vs naive, tone vs Unsloth), then the Llama
    # default beside the fourth round's path (the LoRA outputs added in the traced graph).
    "round5": _rows("unsloth stage:default", form="llama")
    + _rows("naive stage:default")
    + _rows("stage:default unsloth", form="llama", data="tone", grad_accum=4)
    + _rows("stage:default~round4", form="llama"),
    # Issue 17's three bars in one call, the unmeasured row first: Llama vs Unsloth, Phi-3 vs naive, tone
    # vs Unsloth (round5 less the round-4 row, which ran past one call's limit with profiling on).
    "round5b": _rows("stage:default unsloth", form="llama")
    + _rows("naive stage:default")
    + _rows("stage:default unsloth", form="llama", data="tone", grad_accum=4),
    # The shortest same-run look at the Llama form: eager, Unsloth, the compiled default.
    "llama-quick": _rows("stage:eager unsloth stage:default", form="llama"),
    # The shared sibling dropout mask against one mask a member (peft's semantics), beside Unsloth.
    "masks": _rows("unsloth stage:default stage:default~independent", form="llama"),
    # Where the Llama form's memory goes: the compiled default, eager, and the compiled graph under a budget.
    "memory": _rows("unsloth stage:default stage:eager stage:default@0.5", form="llama"),
    # A first look on a fresh machine: does Unsloth run, and the stage's two main paths on the Llama form.
    "probe": _rows("unsloth stage:default stage:fused+liger naive", form="llama"),
    # One lever at a time, on the Llama form.
    "levers": _rows("stage:liger stage:fused stage:fused+liger stage:compile+ce stage:fused+compile", form="llama"),
    "main": _rows("naive stage:before stage:plain stage:padfree stage:liger stage:default stage:compile"),
    "more": _rows("naive stage:liger+compile")
    + _rows("naive stage:default", seq=2048, targets=COOKBOOK)
    + _rows("stage:liger+gc")
    + _rows("naive stage:plain stage:default", data="tone", grad_accum=4),
    "smoke": _rows("naive stage:before stage:default unsloth", form="llama", batch=2, seq=64)
    + _rows("naive stage:default", batch=2, seq=64)
    + _rows("naive stage:default", data="tone", batch=2, seq=96, grad_accum=2),
}


def save_random_phi3(folder: Path, tiny: bool, device: str) -> None:
    """Random-init Phi-3 (Phi3Config defaults = Phi-3-mini, 3.8 B) in bf16, with a BPE tokenizer
    trained on the tone set (Phi-3's specials included): no hub needed."""
    import torch
    from transformers import Phi3Config, Phi3ForCausalLM

    sys.path.insert(0, str(ROOT / "bench" / "gpu"))
    from make_phi3_mini import tone_tokenizer  # noqa: E402

    tok = tone_tokenizer()
    kw = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    cfg = Phi3Config(**kw)
    if tiny:
        cfg = Phi3Config(
            hidden_size=256,
            intermediate_size=512,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            **kw,
        )
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = Phi3ForCausalLM(cfg)
    finally:
        torch.set_default_dtype(old)
    model.save_pretrained(folder, safe_serialization=True)
    from core.tokenizer_io import save_tokenizer

    save_tokenizer(tok, folder)


def save_llama_form(phi3: Path, out: Path) -> None:
    """The same random weights as a LlamaForCausalLM: qkv_proj split into q/k/v, gate_up_proj into
    gate/up (Phi-3's order: gate first); same sizes, norms, RoPE and tokenizer."""
    import shutil

    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, LlamaConfig, LlamaForCausalLM

    src = AutoConfig.from_pretrained(phi3)
    heads, kv = src.num_attention_heads, src.num_key_value_heads or src.num_attention_heads
    head_dim = src.hidden_size // heads
    cfg = LlamaConfig(
        vocab_size=src.vocab_size,
        hidden_size=src.hidden_size,
        intermediate_size=src.intermediate_size,
        num_hidden_layers=src.num_hidden_layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        max_position_embeddings=src.max_position_embeddings,
        rms_norm_eps=src.rms_norm_eps,
        rope_theta=getattr(src, "rope_theta", None) or 10000.0,
        tie_word_embeddings=src.tie_word_embeddings,
        bos_token_id=src.bos_token_id,
        eos_token_id=src.eos_token_id,
        pad_token_id=src.pad_token_id,
    )
    weights = {}
    for f in sorted(phi3.glob("*.safetensors")):
        weights.update(load_file(f))
    state = {}
    for name, w in weights.items():
        if name.endswith("qkv_proj.weight"):
            q, k, v = w.split([heads * head_dim, kv * head_dim, kv * head_dim])
            for part, t in zip("qkv", (q, k, v)):
                state[name.replace("qkv_proj", f"{part}_proj")] = t
        elif name.endswith("gate_up_proj.weight"):
            gate, up = w.chunk(2)
            state[name.replace("gate_up_proj", "gate_proj")] = gate
            state[name.replace("gate_up_proj", "up_proj")] = up
        else:
            state[name] = w
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    model.load_state_dict(state, assign=True, strict=True)
    model.save_pretrained(out, safe_serialization=True)
    for f in phi3.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")) or f.name == "chat_template.jinja":
            shutil.copy(f, out / f.name)


def examples_for(
    data: str, batch: int, seq: int, accum: int, steps: int, tokenizer, vocab: int
) -> list[list[list[dict]]]:
    """Per step, the micro-batches of examples ({input_ids, labels})."""
    import torch

    if data == "synthetic":
        g = torch.Generator().manual_seed(1)
        ids = torch.randint(0, min(vocab, 32000), (accum * batch, seq), generator=g).tolist()
        micros = [[{"input_ids": r, "labels": list(r)} for r in ids[m * batch : (m + 1) * batch]] for m in range(accum)]
        return [micros] * steps
    from core.config import TrainConfig
    from stages.train.stage import batch_examples, tokenize

    rows = tone_rows()
    ex = tokenize(rows, tokenizer, seq)
    tc = TrainConfig(batch_size=batch, grad_accum=accum)  # the schema's seed
    return [[batch_examples(ex, tc, s, m) for m in range(accum)] for s in range(steps)]


def tone_rows() -> list[dict]:
    """The tone set rendered with the production template (prompt + completion), as data_prep does."""
    from core.config import Config
    from core.io import read_jsonl
    from core.prompts import render

    cfg = Config()  # the default data section on data/tone.jsonl, with the production Phi-3 template
    cfg.data.prompt_format = "template"
    out = []
    for r in read_jsonl(ROOT / "data" / "tone.jsonl"):
        prompt, completion = render(r, cfg.data)
        out.append({"prompt": prompt, "completion": completion})
    return out


def child(args) -> dict:
    """One variant, in this process."""
    import torch

    name, data, batch, seq, accum, targets = (
        args.variant,
        args.data,
        args.batch,
        args.seq,
        args.accum,
        args.targets.split(","),
    )
    args.model_dir = form_dir(args.model_dir, args.form)
    cuda = args.device == "cuda"
    where = "cuda:0" if cuda else "cpu"
    steps = args.warmup + args.steps
    info = {
        "variant": name,
        "form": args.form,
        "data": data,
        "batch": batch,
        "seq": seq,
        "grad_accum": accum,
        "targets": targets,
        "r": args.r,
        "dropout": args.dropout,
    }
    from core.models import load_tokenizer

    tokenizer = load_tokenizer(args.model_dir)
    t0 = time.time()
    optimizer = None  # the loop's own AdamW unless the variant brings one
    if name == "naive":
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM, BitsAndBytesConfig

        model = AutoModelForCausalLM.from_pretrained(
            args.model_dir,
            dtype=torch.bfloat16 if cuda else torch.float32,
            device_map={"": where},
            quantization_config=BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.bfloat16 if cuda else torch.float32,
            ),
        )
        torch.manual_seed(0)
        model = get_peft_model(
            model,
            LoraConfig(
                r=args.r, lora_alpha=args.r, lora_dropout=args.dropout, target_modules=targets, task_type="CAUSAL_LM"
            ),
        )
        trainable = [p for p in model.parameters() if p.requires_grad]
        pad = tokenizer.pad_token_id

        def step_fn(micros):
            return padded_lm_step(model, micros, pad, where)
    elif name.startswith("stage:"):
        from core.config import Config
        from stages.registry import TrainParams
        from stages.train import fast, stage

        # "default@0.5": the same levers under a compiled-graph activation memory budget of 0.5;
        # "default~independent": fused siblings draw one dropout mask each (train.lora.dropout_masks);
        # "default~round3": the step loop of the third round (a host sync for the loss before the
        # optimizer, foreach AdamW, unaligned packed rows, every dropout mask bit-packed);
        # "default~round4": the fourth round's (the LoRA outputs added in the traced graph, not in the op).
        lever, _, suffix = name.split(":", 1)[1].partition("~")
        lever, _, budget = lever.partition("@")
        before = suffix == "round3"
        info["dropout_masks"] = "independent" if suffix == "independent" else "shared"
        if before or suffix == "round4":
            from stages.train import fused

            fused.LORA_IN_OP = False
            info["loop"] = suffix
        if before:
            fast.PACK_ALIGN, fused.PACK_MIN_ELEMENTS = 1, 0
        if budget:
            torch._functorch.config.activation_memory_budget = float(budget)
            info["activation_memory_budget"] = float(budget)
        resolved = lever in ("default", "eager")
        # A named lever set fixes checkpointing and compile; default/eager let the stage choose them.
        levers = LEVERS.get(lever, {})
        gc = "auto" if resolved else ("on" if levers.get("gradient_checkpointing") else "off")
        compile_ = {"default": "auto", "eager": "off"}.get(lever, "on" if levers.get("compile") else "off")
        cfg = Config.model_validate(
            {
                "model": {"base": args.model_dir},
                "train": {
                    "quantization": "nf4",
                    "batch_size": batch,
                    "grad_accum": accum,
                    "max_seq_len": seq,
                    "max_steps": args.planned_steps if data == "synthetic" else Config().train.max_steps,
                    "gradient_checkpointing": gc,
                    "compile": compile_,
                    "lora": {
                        "r": args.r,
                        "alpha": args.r,
                        "dropout": args.dropout,
                        "target_modules": targets,
                        "dropout_masks": info["dropout_masks"],
                    },
                },
                "runtime": {"device": args.device},
            }
        )
        if resolved:
            fp = fast.resolve(cfg.train, args.device)
        else:
            fp = fast.FastPath(device=args.device, **LEVERS[lever])
        model, trainable, _modules, fp = stage.build(TrainParams.of(cfg), args.device, fp, where, seq)
        info["fast_path"] = {k: v for k, v in vars(fp).items() if k not in ("notes", "device")}
        pad = tokenizer.pad_token_id

        def step_fn(micros):
            if fp.padding_free:
                loss, n = stage.train_step(model, fast.pack_step(micros, cfg.train, pad), fp)
            else:
                loss, n = stage.padded_step(model, micros, tokenizer, where, fp)
            return (float(loss) if before else loss), n

        # The stage's own optimizer (fused AdamW on CUDA), at the bench's shared hyperparameters.
        optimizer = None if before else stage.make_optimizer(trainable, LR, WEIGHT_DECAY, args.device)
    elif name == "unsloth":
        return unsloth_child(args, info)
    else:
        raise SystemExit(f"unknown variant {name}")
    info["setup_s"] = round(time.time() - t0, 1)
    info["trainable_m"] = round(sum(p.numel() for p in trainable) / 1e6, 2)
    vocab = model.get_base_model().config.vocab_size
    plan = examples_for(data, batch, seq, accum, steps, tokenizer, vocab)
    return timed_loop(args, info, model, trainable, step_fn, plan, optimizer)


def timed_loop(args, info, model, trainable, step_fn, plan, optimizer=None) -> dict:
    """Every variant's loop: step_fn (forward + backward; its loss may be a device scalar, read after
    the optimizer step), clip, AdamW (torch's default unless the variant brings its own), sync."""
    import torch

    cuda = args.device == "cuda"
    optimizer = optimizer or torch.optim.AdamW(trainable, lr=LR, weight_decay=WEIGHT_DECAY)
    model.train()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    losses, times, tokens = [], [], 0
    warm_start = time.perf_counter()
    for i, micros in enumerate(plan):
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        loss, n = step_fn(micros)
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        losses.append(round(float(loss), 4))
        print(f"step {i} done at {time.perf_counter() - warm_start:.1f} s", file=sys.stderr, flush=True)
        if i == args.warmup - 1:
            info["warmup_s"] = round(time.perf_counter() - warm_start, 1)
        if i >= args.warmup:
            times.append(time.perf_counter() - t)
            tokens += n
    if cuda and os.environ.get("BENCH_PROFILE"):
        profile(args, model, trainable, step_fn, optimizer, plan[-1])
    seconds = sum(times)
    info.update(
        {
            "tokens_per_s": round(tokens / seconds, 1),
            "ms_per_step": round(1000 * seconds / len(times), 1),
            "tokens_per_step": tokens // len(times),
            "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
            "losses": losses,
        }
    )
    return info


def profile(args, model, trainable, step_fn, optimizer, micros) -> None:
    """Two more steps under the profiler: the top kernels by GPU time, then the top ops by input shape
    (which tensors an untraced copy or add moves), to BENCH_PROFILE/profile_<variant>_<form>_<data>.txt."""
    import torch
    from torch.profiler import ProfilerActivity

    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities, record_shapes=True) as prof:
        for _ in range(2):
            step_fn(micros)
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
    name = "".join(c if c.isalnum() else "_" for c in f"{args.variant}_{args.form}_{args.data}")
    table = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=40, max_name_column_width=90)
    shapes = prof.key_averages(group_by_input_shape=True).table(
        sort_by="self_cuda_time_total", row_limit=40, max_name_column_width=60, max_shapes_column_width=120
    )
    Path(os.environ["BENCH_PROFILE"], f"profile_{name}.txt").write_text(table + "\n\n" + shapes)


def unsloth_child(args, info) -> dict:
    """Unsloth's own QLoRA on the Llama form: FastLanguageModel's 4-bit load and LoRA patching, its
    forward and loss (``model(..., labels=...)``), with the same batch, LoRA placement, AdamW and timing
    as the other variants. The loop is the one Unsloth's bundle was measured with."""
    import torch

    try:
        from unsloth import FastLanguageModel
    except Exception as e:  # noqa: BLE001 - any import failure: the row says why
        info["error"] = f"not measured: unsloth does not import here ({type(e).__name__}: {str(e)[:200]})"
        return info
    import importlib.metadata as md

    info["unsloth"] = md.version("unsloth")
    where = "cuda:0"
    t0 = time.time()
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=args.model_dir,
        max_seq_length=args.seq,
        dtype=torch.bfloat16,
        load_in_4bit=True,
        local_files_only=True,
    )
    model = FastLanguageModel.get_peft_model(
        model,
        r=args.r,
        lora_alpha=args.r,
        lora_dropout=args.dropout,
        target_modules=args.targets.split(","),
        use_gradient_checkpointing=False,
        random_state=0,
        bias="none",
    )
    trainable = [p for p in model.parameters() if p.requires_grad]
    info["setup_s"] = round(time.time() - t0, 1)
    info["trainable_m"] = round(sum(p.numel() for p in trainable) / 1e6, 2)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def step_fn(micros):
        return padded_lm_step(model, micros, pad, where)

    from core.models import load_tokenizer

    plan = examples_for(
        args.data, args.batch, args.seq, args.accum, args.warmup + args.steps, load_tokenizer(args.model_dir), 32000
    )
    return timed_loop(args, info, model, trainable, step_fn, plan)


def padded_lm_step(model, micros, pad: int, where: str) -> tuple[float, int]:
    """What a user writes: each micro-batch padded to its longest row, ``model(**batch).loss``."""
    import torch

    total, n = 0.0, 0
    for m in micros:
        width = max(len(e["input_ids"]) for e in m)
        ids = torch.full((len(m), width), pad)
        labels = torch.full((len(m), width), -100)
        mask = torch.zeros((len(m), width), dtype=torch.long)
        for i, e in enumerate(m):
            ids[i, : len(e["input_ids"])] = torch.tensor(e["input_ids"])
            labels[i, : len(e["labels"])] = torch.tensor(e["labels"])
            mask[i, : len(e["input_ids"])] = 1
        out = model(input_ids=ids.to(where), attention_mask=mask.to(where), labels=labels.to(where))
        (out.loss / len(micros)).backward()
        total += out.loss.item() / len(micros)
        n += int(mask.sum())
    return total, n


def form_dir(phi3_dir: str, form: str) -> str:
    return phi3_dir if form == "phi3" else phi3_dir.rstrip("/") + "-llama"


def run_variant(args, variant, form, data, batch, seq, accum, targets) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        "--variant",
        variant,
        "--form",
        form,
        "--planned-steps",
        str(args.planned_steps),
        "--data",
        data,
        "--batch",
        str(batch),
        "--seq",
        str(seq),
        "--accum",
        str(accum),
        "--targets",
        ",".join(targets),
        "--model-dir",
        args.model_dir,
        "--device",
        args.device,
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--r",
        str(args.r),
        "--dropout",
        str(args.dropout),
    ]
    t = time.time()
    # The child's log goes to a file beside the results: a killed child's last words survive it.
    slug = "".join(c if c.isalnum() else "_" for c in f"{variant}_{form}_{data}")
    log = Path(args.out) / f"{args.tag}-{slug}.log"
    with log.open("w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
        try:
            stdout, _ = proc.communicate(timeout=args.variant_timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, _ = proc.communicate()
            err.write(f"\nkilled after {args.variant_timeout} s (--variant-timeout)\n")
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:
        tail = (log.read_text().strip() or stdout.strip()).splitlines()[-6:]
        return {
            "variant": variant,
            "form": form,
            "data": data,
            "batch": batch,
            "seq": seq,
            "targets": targets,
            "error": f"exit {proc.returncode}: " + " | ".join(tail)[-900:],
            "wall_s": round(time.time() - t, 1),
        }
    row = json.loads(lines[-1][len("RESULT ") :])
    row["wall_s"] = round(time.time() - t, 1)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="2-layer hidden-256 Phi-3: a smoke test")
    ap.add_argument("--suite", default="main", help=f"comma-separated: {', '.join(SUITES)}")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--r", type=int, default=64)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--model-dir", help="a saved random Phi-3 folder (made here if missing)")
    ap.add_argument("--variant-timeout", type=int, default=300)
    ap.add_argument("--tag", default="train_throughput")
    # child mode
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--variant")
    ap.add_argument("--data", default="synthetic")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--accum", type=int, default=1)
    ap.add_argument("--targets", default=",".join(PHI3_ALL))
    ap.add_argument("--form", default="phi3", choices=("phi3", "llama"))
    ap.add_argument(
        "--planned-steps",
        type=int,
        default=3000,
        help="the job length stage:default resolves its levers for (train.compile: auto decides by it)",
    )
    ap.add_argument("--unsloth", help="an offline Unsloth bundle (tar.xz of site/) to put on the children's path")
    args = ap.parse_args()

    if args.child:
        import logging

        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
        if args.device == "cpu":
            import torch

            torch.set_num_threads(1)
        print("RESULT " + json.dumps(child(args)), flush=True)
        # The result is out: skip interpreter teardown (compile workers, CUDA context) that can stall.
        sys.stderr.flush()
        os._exit(0)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    folder = Path(args.model_dir or tempfile.mkdtemp(prefix="phi3-random-"))
    if not (folder / "config.json").is_file():
        t = time.time()
        folder.mkdir(parents=True, exist_ok=True)
        save_random_phi3(folder, args.tiny, args.device)
        print(f"random Phi-3 saved to {folder} in {time.time() - t:.0f} s", flush=True)
    args.model_dir = str(folder)
    llama = Path(form_dir(args.model_dir, "llama"))
    if not (llama / "config.json").is_file():
        t = time.time()
        llama.mkdir(parents=True, exist_ok=True)
        save_llama_form(folder, llama)
        print(f"Llama form saved to {llama} in {time.time() - t:.0f} s", flush=True)
    if args.unsloth:
        use_bundle(Path(args.unsloth))
    env = versions(args.device)
    print(json.dumps(env), flush=True)
    rows = []
    for suite in args.suite.split(","):
        for spec in SUITES[suite]:
            row = run_variant(args, *spec)
            row["suite"] = suite
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "losses"}), flush=True)
            (out / f"{args.tag}.json").write_text(json.dumps({"env": env, "rows": rows}, indent=1))
    table = report(rows, env, args)
    print(table, flush=True)
    (out / f"{args.tag}.md").write_text(table)
    return 0


def use_bundle(bundle: Path) -> None:
    """Unpack an offline Unsloth bundle (docs/benchmarks.md says how to make one)
    and put its site/ first on the children's PYTHONPATH."""
    import tarfile

    dest = Path(tempfile.gettempdir()) / f"unsloth-{bundle.stat().st_size}"
    if not (dest / "site").is_dir():
        with tarfile.open(bundle) as tar:
            tar.extractall(dest, filter="data")
    site = str(dest / "site")
    os.environ["PYTHONPATH"] = os.pathsep.join([site, str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    sys.path.insert(0, site)


def versions(device: str) -> dict:
    import importlib.metadata as md
    import platform

    import torch

    env = {"date": time.strftime("%Y-%m-%d"), "python": platform.python_version()}
    for n in ("torch", "transformers", "peft", "bitsandbytes", "liger-kernel", "triton", "unsloth"):
        try:
            env[n] = md.version(n)
        except md.PackageNotFoundError:
            env[n] = None
    if device == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
    return env


def report(rows: list[dict], env: dict, args) -> str:
    lines = [
        f"# Training throughput ({env.get('gpu', args.device)}, {env['date']})",
        "",
        "torch {torch}, transformers {transformers}, peft {peft}, bitsandbytes {bitsandbytes}, liger-kernel "
        "{liger-kernel}, triton {triton}".format(**env),
        f"nf4 + double quant, bf16 compute; LoRA r={args.r} alpha={args.r} dropout={args.dropout}; AdamW; "
        f"{args.steps} timed steps after {args.warmup} warm-up; ratio = tokens/s over the naive loop of the same "
        "data, batch, seq and targets in this run.",
        "",
        "| form | variant | data | batch x seq (x accum) | targets | tokens/s | vs naive | vs unsloth | ms/step | "
        "peak GiB | mem vs naive | mem vs unsloth | warm-up s | max loss gap vs naive | first → last loss |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def key(r):
        return (r.get("form", "phi3"), r["data"], r["batch"], r["seq"], tuple(r["targets"]))

    naive = {key(r): r for r in rows if r["variant"] == "naive" and "error" not in r}
    unsloth = {key(r): r for r in rows if r["variant"] == "unsloth" and "error" not in r}
    for r in rows:
        shape = f"{r['batch']} x {r['seq']}" + (f" (x {r.get('grad_accum')})" if r.get("grad_accum", 1) != 1 else "")
        tg = f"all {len(r['targets'])}" if list(r["targets"]) in (PHI3_ALL, LLAMA_ALL) else "/".join(r["targets"])
        head = f"| {r.get('form', 'phi3')} | {r['variant']} | {r['data']} | {shape} | {tg} |"
        if "error" in r:
            lines.append(f"{head} {r['error'][:300]} | | | | | | | | | |")
            continue
        b, u = naive.get(key(r)), unsloth.get(key(r))
        lines.append(
            f"{head} {r['tokens_per_s']:.0f} | {_ratio(r, b, 'tokens_per_s')} | {_ratio(r, u, 'tokens_per_s')} | "
            f"{r['ms_per_step']} | {r['peak_gib']} | {_ratio(r, b, 'peak_gib')} | {_ratio(r, u, 'peak_gib')} | "
            f"{r.get('warmup_s', '-')} | {loss_gap(r, b)} | {r['losses'][0]} → {r['losses'][-1]} |"
        )
    return "\n".join(lines) + "\n"


def _ratio(row: dict, base: dict | None, field: str) -> str:
    if not base or not row.get(field) or not base.get(field) or row is base:
        return "-"
    return f"{row[field] / base[field]:.2f}x"


def loss_gap(row: dict, base: dict | None) -> str:
    """The largest relative difference of the per-step losses from the naive loop's, same batches."""
    if not base or row is base or len(base["losses"]) != len(row["losses"]):
        return "-"
    gap = max(abs(a - b) / max(abs(b), 1e-9) for a, b in zip(row["losses"], base["losses"]))
    return f"{100 * gap:.2f} %"


if __name__ == "__main__":
    sys.exit(main())
