"""train: (Q)LoRA fine-tune of the base model on the completion tokens only.

Setup, in order: seed -> tokenizer -> examples (prompt tokens masked out of the loss,
optional packing) -> base model (nf4 4-bit with double quant when train.quantization=nf4,
compute in bf16 on GPU / fp32 on CPU) -> LoRA adapter -> AdamW + warmup/linear decay.

The batch order is a pure function of (seed, step), so a run resumed from a checkpoint sees
the same batches as one that never stopped, and on CPU the final adapter is bit-identical.
A checkpoint is written every ``train.checkpoint_every`` steps, and on SIGTERM (spot and
preemptible nodes send it) before exiting. Checkpoints live beside the output
(``<adapter>.checkpoints/``) and are used only if they were made with the same cache key.

Outputs (Model artifact): the PEFT adapter (safetensors), ``train_log.jsonl`` (loss per
logged step), ``metrics.json`` and ``sample_prompts.json`` (for the merge parity check).
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from components.common import faults
from components.common.artifacts import verify, write_json
from components.common.errors import UserError
from components.common.harness import Interrupted
from components.common.io import read_jsonl
from components.common.models import device_for, load_model, load_tokenizer, target_modules

from . import fast

log = logging.getLogger("slm")


def run(cfg, context, dataset: Path, adapter: Path) -> None:
    device = device_for(cfg.runtime)
    ckpt = Checkpoints(checkpoint_root(context), context.cache_key)
    context.after_commit.append(ckpt.clear)
    world = cfg.train.gpus if device == "cuda" else 1
    if world > 1 and "LOCAL_RANK" not in os.environ:
        from .distributed import launch  # torchrun, one process per GPU, each running train() below

        launch(cfg, ckpt, dataset, adapter, world)
        return
    train(cfg, ckpt, dataset, adapter)


def build(cfg, device: str, fp: fast.FastPath, where: str | None = None, longest: int | None = None):
    """Base model -> fast-path set-up -> LoRA. Returns (model, trainable parameters, LoRA targets, FastPath)
    with gradient checkpointing "auto" settled. The bench builds its models with this too."""
    from peft import LoraConfig, get_peft_model

    tc = cfg.train
    model = load_model(
        cfg.model.base,
        dtype="bfloat16" if device == "cuda" else "float32",
        quantization=tc.quantization,
        device=where or device,
        trust_remote_code=cfg.model.trust_remote_code,
        allow_pickle=cfg.model.allow_pickle,
    )
    model = fast.prepare_base(model, fp, tc.quantization)
    modules = target_modules(model, tc.lora.target_modules)
    check_rank(model, modules, tc.lora.r)
    lora = LoraConfig(
        r=tc.lora.r,
        lora_alpha=tc.lora.alpha,
        lora_dropout=tc.lora.dropout,
        target_modules=modules,
        modules_to_save=tc.lora.modules_to_save,
        task_type="CAUSAL_LM",
    )
    # Seed again here: materialising a built-in base on a cold cache draws from the RNG, and the
    # LoRA init must not depend on whether the cache was warm.
    seed_everything(tc.seed, deterministic=device == "cpu")
    try:
        model = get_peft_model(model, lora)
    except ValueError as e:
        raise UserError(f"train.lora: {e}") from None
    trainable = [p for p in model.parameters() if p.requires_grad]
    if device == "cuda":
        longest = min(longest or tc.max_seq_len, tc.max_seq_len)
        per_pass = tc.batch_size * (tc.max_seq_len if fp.padding_free else longest)
        fp = fast.choose_checkpointing(fp, tc, model.get_base_model().config, per_pass)
        if fp.gradient_checkpointing:
            fast.enable_checkpointing(model.get_base_model())
        if fp.compile:
            log.info("torch.compile: %d decoder layers", fast.compile_layers(model))
    return model, trainable, modules, fp


def train(cfg, ckpt: "Checkpoints", dataset: Path, adapter: Path, rank: int = 0, world: int = 1) -> None:
    from tqdm import tqdm

    tc = cfg.train
    device = device_for(cfg.runtime)
    where = f"cuda:{torch.cuda.current_device()}" if device == "cuda" else device
    # Bit-identical resume holds on CPU only; on CUDA the attention backward has no deterministic
    # kernel anyway, and deterministic mode cost 8% on the H200 (bench/gpu/RESULTS.md).
    seed_everything(tc.seed, deterministic=device == "cpu")
    fp = fast.resolve(tc, device)
    for note in fp.notes:
        log.info(note)
    if world > 1 and not fp.padding_free:
        raise UserError("train.gpus > 1 runs padding-free steps: leave train.padding_free at auto or on")

    tokenizer = load_tokenizer(cfg.model.base, cfg.model.trust_remote_code)
    rows = read_jsonl(dataset / "train.jsonl")
    examples = tokenize(rows, tokenizer, tc.max_seq_len)
    if tc.packing:
        examples = pack(examples, tc.max_seq_len)
    log.info("%d training sequences (%s)", len(examples), "packed" if tc.packing else "one per row")

    longest = max(len(e["input_ids"]) for e in examples)
    model, trainable, modules, fp = build(cfg, device, fp, where, longest)
    log.info("LoRA r=%d on %s: %.2fM trainable parameters", tc.lora.r, modules, sum(p.numel() for p in trainable) / 1e6)
    log.info("fast path: %s", {k: v for k, v in vars(fp).items() if k != "notes"})
    if world > 1:
        from .distributed import broadcast_parameters

        broadcast_parameters(trainable)
        torch.manual_seed(tc.seed + rank)  # LoRA dropout: another mask on each rank

    optimizer = torch.optim.AdamW(trainable, lr=tc.learning_rate, weight_decay=tc.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, tc.warmup_steps, tc.max_steps))

    if world > 1:
        from .distributed import barrier

        if rank:
            barrier()  # rank 0 restores first: it drops a checkpoint made with other inputs
        start, history = ckpt.restore(model, optimizer, scheduler)
        if not rank:
            barrier()
    else:
        start, history = ckpt.restore(model, optimizer, scheduler)

    stop = {"signal": None}
    previous = signal.signal(signal.SIGTERM, lambda signum, _f: stop.update(signal=signum))
    model.train()
    started, tokens = time.time(), 0
    bar = tqdm(total=tc.max_steps, initial=start, desc="train", unit="step", disable=None if rank == 0 else True)
    try:
        for step in range(start, tc.max_steps):
            if fp.padding_free:
                micros = [batch_examples(examples, tc, step, m) for m in range(tc.grad_accum)]
                loss_sum, n = train_step(model, fast.pack_step(micros, tc, tokenizer.pad_token_id, rank, world), fp)
                tokens += n
            else:
                micros = [batch_examples(examples, tc, step, m) for m in range(tc.grad_accum)]
                loss_sum, n = padded_step(model, micros, tokenizer.pad_token_id, where, fp)
                tokens += n
            if world > 1:
                from .distributed import all_reduce_gradients, agree

                all_reduce_gradients(trainable)
                loss_sum, any_stop = agree(loss_sum, stop["signal"] is not None)
                if any_stop and not stop["signal"]:
                    stop["signal"] = signal.SIGTERM
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if not math.isfinite(loss_sum):
                raise UserError(f"the loss became {loss_sum} at step {step + 1}; lower train.learning_rate")
            if (step + 1) % tc.log_every == 0 or step == start:
                history.append({"step": step + 1, "loss": round(loss_sum, 6), "lr": scheduler.get_last_lr()[0]})
                if bar.disable and rank == 0:  # no terminal: the log is the progress report
                    log.info("step %d/%d loss %.4f (%.2fs/step)", step + 1, tc.max_steps, loss_sum,
                             (time.time() - started) / (step + 1 - start))
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum:.4f}")
            done = step + 1
            if done == 1:
                faults.point("train.before_first_checkpoint")
            if stop["signal"] or done % tc.checkpoint_every == 0:
                if rank == 0:
                    ckpt.save(done, model, optimizer, scheduler, history)
                if world > 1:
                    barrier()
            if stop["signal"]:
                raise Interrupted(f"{signal.Signals(stop['signal']).name}; checkpoint saved at step {done}")
    finally:
        bar.close()
        signal.signal(signal.SIGTERM, previous)

    seconds = time.time() - started
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
    if world > 1:
        from .distributed import total

        tokens = int(total(tokens))
    if rank:
        return
    model.save_pretrained(adapter, safe_serialization=True)
    _portable_adapter_config(adapter, cfg.model.base)
    (adapter / "README.md").unlink(missing_ok=True)  # peft's model card names this machine's paths
    with open(adapter / "train_log.jsonl", "w") as f:
        f.writelines(json.dumps(h) + "\n" for h in history)
    (adapter / "sample_prompts.json").write_text(json.dumps([r["prompt"] for r in rows[:16]], indent=1))
    metrics = {
        "steps": tc.max_steps,
        "resumed_from_step": start,
        "first_loss": history[0]["loss"] if history else None,
        "final_loss": history[-1]["loss"] if history else None,
        "train_sequences": len(examples),
        "tokens_this_run": tokens,
        "seconds_this_run": round(seconds, 2),
        "tokens_per_second": round(tokens / max(seconds, 1e-9), 1),
        "target_modules": modules,
        "device": device,
        "quantization": tc.quantization,
    }
    if device == "cuda":
        metrics.update({"gpus": world, "peak_gpu_memory_gib": round(peak / 2**30, 2),
                        "fast_path": {k: v for k, v in vars(fp).items() if k not in ("notes", "device")}})
    write_json(adapter / "metrics.json", metrics)


def padded_step(model, micros: list[list[dict]], pad_id: int, where: str, fp: fast.FastPath) -> tuple[float, int]:
    """The plain path: one padded forward and backward per micro-batch, mean loss / grad_accum each."""
    loss_sum, tokens = 0.0, 0
    for examples in micros:
        batch = collate(examples, pad_id, where)
        tokens += int(batch["attention_mask"].sum())
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=fp.autocast):
            loss = completion_loss(model, batch) / len(micros)
        loss.backward()
        loss_sum += loss.item()
    return loss_sum, tokens


def train_step(model, passes: list[dict], fp: fast.FastPath) -> tuple[float, int]:
    """Forward and backward of one optimizer step's padding-free passes; the gradients accumulate.
    Returns (the step's loss, real tokens); one host sync per step."""
    total, tokens = None, 0
    for p in passes:
        batch = fast.to_device(p, fp.device if fp.device != "cuda" else f"cuda:{torch.cuda.current_device()}")
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=fp.autocast):
            loss = fast.packed_loss(model, batch, fp.liger)
        loss.backward()
        total = loss.detach() if total is None else total + loss.detach()
        tokens += p["tokens"]
    return float(total), tokens


def check_rank(model, modules: list[str], r: int) -> None:
    """LoRA factors a layer's update into (out x r)(r x in): r at or above the layer's width adds
    parameters and learns nothing a full update would not. Checked before the adapter is allocated."""
    widths = [min(m.in_features, m.out_features) for name, m in model.named_modules()
              if name.rsplit(".", 1)[-1] in modules and hasattr(m, "in_features")]
    if widths and r >= min(widths):
        raise UserError(f"train.lora.r={r} is not below the smallest width ({min(widths)}) of the target modules "
                        f"{modules}; use a rank well below it (8-64 is usual)")


def seed_everything(seed: int, deterministic: bool = True) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(deterministic, warn_only=True)


def lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / (warmup + 1)
    return max(0.0, (total - step) / max(1, total - warmup))


def tokenize(rows: list[dict], tokenizer, max_len: int) -> list[dict]:
    """input_ids plus labels that are -100 on the prompt: the loss sees the completion only."""
    out, truncated = [], 0
    for row in rows:
        prompt = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
        completion = tokenizer(row["completion"], add_special_tokens=False)["input_ids"]
        if tokenizer.bos_token_id is not None and getattr(tokenizer, "add_bos_token", False):
            prompt = [tokenizer.bos_token_id] + prompt
        ids = (prompt + completion)[:max_len]
        labels = ([-100] * len(prompt) + completion)[:max_len]
        if all(t == -100 for t in labels):
            truncated += 1
            continue
        out.append({"input_ids": ids, "labels": labels})
    if truncated:
        log.warning("%d rows dropped: the prompt alone exceeds train.max_seq_len", truncated)
    if not out:
        raise UserError(f"every prompt is longer than train.max_seq_len={max_len}; raise it")
    return out


def pack(examples: list[dict], max_len: int) -> list[dict]:
    """Olive's corpus "join": concatenate examples into blocks of max_len tokens."""
    ids, labels, blocks = [], [], []
    for e in examples:
        ids += e["input_ids"]
        labels += e["labels"]
        while len(ids) >= max_len:
            blocks.append({"input_ids": ids[:max_len], "labels": labels[:max_len]})
            ids, labels = ids[max_len:], labels[max_len:]
    if ids and any(t != -100 for t in labels):
        blocks.append({"input_ids": ids, "labels": labels})
    return blocks


def batch_examples(examples: list[dict], tc, step: int, micro: int) -> list[dict]:
    """The batch for (step, micro): a pure function of the seed, so resume replays it exactly."""
    start = (step * tc.grad_accum + micro) * tc.batch_size
    epoch, offset = divmod(start, len(examples))
    order = np.random.default_rng([tc.seed, epoch]).permutation(len(examples))
    idx = [order[(offset + i) % len(examples)] for i in range(tc.batch_size)]
    return [examples[i] for i in idx]


def collate(batch: list[dict], pad_id: int, device: str) -> dict:
    width = max(len(e["input_ids"]) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, e in enumerate(batch):
        n = len(e["input_ids"])
        ids[i, :n] = torch.tensor(e["input_ids"])
        labels[i, :n] = torch.tensor(e["labels"])
        mask[i, :n] = 1
    return {"input_ids": ids.to(device), "labels": labels.to(device), "attention_mask": mask.to(device)}


def completion_loss(model, batch: dict) -> torch.Tensor:
    """Cross-entropy on completion tokens, running the LM head only where there is a label.

    The LM head of a small model is a large share of its compute (SmolLM2: 28M of 135M
    parameters); prompt positions carry no loss, so skip them.
    """
    inner = model.get_base_model()
    decoder = inner.get_decoder() if hasattr(inner, "get_decoder") else None
    if decoder is None or getattr(inner.config, "final_logit_softcapping", None):
        return model(**batch).loss
    hidden = decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     use_cache=False).last_hidden_state
    targets = batch["labels"][:, 1:]
    keep = targets != -100
    logits = inner.get_output_embeddings()(hidden[:, :-1][keep]).float()
    return torch.nn.functional.cross_entropy(logits, targets[keep])


def _portable_adapter_config(adapter: Path, base: str) -> None:
    """Name the base as configured, not by this machine's cache path; keep the file stable."""
    path = adapter / "adapter_config.json"
    cfg = json.loads(path.read_text())
    cfg["base_model_name_or_path"] = base
    if isinstance(cfg.get("target_modules"), list):  # peft writes a set, in hash order
        cfg["target_modules"] = sorted(cfg["target_modules"])
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True))


def checkpoint_root(context) -> Path:
    """Where checkpoints live: under ``SLM_CHECKPOINT_DIR`` keyed by cache key when set (a
    cluster's cache volume, which a retried pod sees again), else beside the output."""
    shared = os.environ.get("SLM_CHECKPOINT_DIR")
    if shared:
        return Path(shared) / context.cache_key
    return Path(str(context.finals["adapter"]) + ".checkpoints")


class Checkpoints:
    """The latest training state, written atomically; valid only for the same cache key."""

    def __init__(self, root: Path, key: str):
        self.root, self.key = root, key

    def restore(self, model, optimizer, scheduler) -> tuple[int, list]:
        self._recover()
        state_dir = self.root / "latest"
        meta_path = state_dir / "meta.json"
        if not meta_path.is_file():
            return 0, []
        meta = json.loads(meta_path.read_text())
        if meta.get("cache_key") != self.key:
            log.info("ignoring a checkpoint made with other inputs or parameters")
            shutil.rmtree(self.root, ignore_errors=True)
            return 0, []
        weights = load_file(state_dir / "trainable.safetensors")
        named = dict(model.named_parameters())
        with torch.no_grad():
            for name, tensor in weights.items():
                named[name].copy_(tensor)
        optimizer.load_state_dict(torch.load(state_dir / "optimizer.pt", weights_only=True))
        scheduler.load_state_dict(meta["scheduler"])
        torch.set_rng_state(torch.load(state_dir / "rng.pt", weights_only=True))
        log.info("resumed from the checkpoint at step %d", meta["step"])
        return meta["step"], meta["history"]

    def save(self, step: int, model, optimizer, scheduler, history: list) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".tmp-{step}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        trainable = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
        save_file(trainable, tmp / "trainable.safetensors")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(torch.get_rng_state(), tmp / "rng.pt")
        meta = {"step": step, "cache_key": self.key, "scheduler": scheduler.state_dict(), "history": history}
        (tmp / "meta.json").write_text(json.dumps(meta))
        old = self.root / "latest"
        if old.exists():
            os.replace(old, self.root / f".old-{os.getpid()}")
            faults.point("train.checkpoint_swap")  # between the renames: no "latest" at all
        os.replace(tmp, old)
        shutil.rmtree(self.root / f".old-{os.getpid()}", ignore_errors=True)
        log.info("checkpoint at step %d", step)
        faults.point("train.after_checkpoint")

    def _recover(self) -> None:
        """After a kill between save's two renames there is no ``latest``: take the newest complete
        checkpoint left beside it (``meta.json`` is written last, so its presence means complete)."""
        if not self.root.is_dir():
            return
        found = []
        for folder in [*self.root.glob(".old-*"), *self.root.glob(".tmp-*")]:
            try:
                found.append((json.loads((folder / "meta.json").read_text())["step"], str(folder)))
            except (OSError, ValueError, KeyError):
                pass
        if not (self.root / "latest").exists() and found:
            step, folder = max(found)
            os.replace(folder, self.root / "latest")
            log.info("recovered the checkpoint at step %d that a kill left unrenamed", step)
        for folder in [*self.root.glob(".old-*"), *self.root.glob(".tmp-*")]:
            shutil.rmtree(folder, ignore_errors=True)

    def clear(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
