"""train: (Q)LoRA fine-tune of the base model on the completion tokens only, as a recipe.

``run`` starts it (or torchrun's ranks, ``train.gpus > 1``); :class:`LoRARecipe` does the work in
three calls: ``setup`` -> ``train`` (which calls ``save_checkpoint``) -> ``save_outputs``.

Features, and what each costs:

- **QLoRA or LoRA.** ``train.quantization=nf4`` loads the base 4-bit (bitsandbytes nf4, double quant):
  about a quarter of the bf16 weight memory, paid for with a dequantize in every forward. Compute is
  bf16 on GPU, fp32 on CPU (slower, but deterministic and the same on every machine).
- **Completion-only loss.** Prompt tokens are labelled -100 and the LM head runs only on labelled
  positions (:func:`completion_loss`): a small model's LM head is a large share of its compute.
- **Packing** (``train.packing``, Olive's "join"): examples concatenated into ``max_seq_len`` blocks.
  No padding, but examples attend across their boundaries. Off by default.
- **The CUDA fast path** (fast.py): padding-free steps, liger kernels, checkpointing only when memory
  needs it. Same loss and gradients as the plain padded path, but not bit-identical across runs.
- **Reproducible batches.** The batch order is a pure function of (seed, step), so a resumed run sees
  the batches of one that never stopped; on CPU its adapter is bit-identical. Deterministic algorithms
  are on for CPU only: CUDA's attention backward has no deterministic kernel, and the mode cost 8% on
  the H200 (bench/gpu/RESULTS.md).
- **Checkpoints** (checkpoints.py) every ``train.checkpoint_every`` steps and on SIGTERM (spot and
  preemptible nodes send it) before exiting. More often loses less work to a kill and costs more
  writes. They live beside the output (``<adapter>.checkpoints/``) or under ``SLM_CHECKPOINT_DIR``,
  and count only for the same cache key.
- **Data parallel** (distributed.py, ``train.gpus: N`` per node on ``train.nodes: M`` machines): N x M ranks
  (NCCL on CUDA, gloo on CPU), the one-GPU run's semantics.

Outputs (Model artifact): the PEFT adapter (safetensors), ``train_log.jsonl`` (loss per logged step),
``metrics.json`` and ``sample_prompts.json`` (for the merge parity check).
"""

from __future__ import annotations

import json
import logging
import math
import signal
import time
from pathlib import Path

import numpy as np
import torch

from core import faults, ranks
from core.artifacts import write_json
from core.errors import UserError
from core.io import read_jsonl
from core.models import device_for, load_model, load_tokenizer, target_modules
from core.progress import Progress
from core.runner import Interrupted, StageContext
from stages.registry import TrainParams

from . import fast
from .checkpoints import Checkpoints, checkpoint_root

log = logging.getLogger("slm")


def run(params: TrainParams, ctx: StageContext, dataset: Path, adapter: Path) -> None:
    device = device_for(params.runtime)
    ckpt = Checkpoints(checkpoint_root(ctx), ctx.cache_key)
    ctx.after_commit.append(ckpt.clear)
    if params.train.gpus * (params.train.nodes or 1) == 1:
        train(params, ckpt, dataset, adapter)
        return
    from . import distributed

    if ranks.engine_rank():  # AzureML started this process as one rank of the run
        distributed.join(train, params, ckpt, dataset, adapter, device)
        return
    distributed.launch(params, ckpt, dataset, adapter, device)  # torchrun's ranks, each running train() below


def train(params: TrainParams, ckpt: Checkpoints, dataset: Path, adapter: Path, rank: int = 0, world: int = 1) -> None:
    """The whole recipe on one rank (distributed.py calls this on each)."""
    recipe = LoRARecipe(params, ckpt, rank, world)
    recipe.setup(dataset)
    recipe.train()
    recipe.save_outputs(adapter)


class LoRARecipe:
    """One rank's training run. With ``world > 1`` the ranks meet in distributed.py's collectives."""

    def __init__(self, params: TrainParams, ckpt: Checkpoints, rank: int = 0, world: int = 1):
        self.params, self.tc, self.ckpt, self.rank, self.world = params, params.train, ckpt, rank, world
        self.device = device_for(params.runtime)
        self.where = f"cuda:{torch.cuda.current_device()}" if self.device == "cuda" else self.device
        self.dist = None
        if world > 1:
            from . import distributed

            self.dist = distributed
        self.stop = _Sigterm()

    # ----------------------------------------------------------------------------------- setup

    def setup(self, dataset: Path) -> None:
        """In this order, which fixes every random draw: seed -> fast path -> tokenizer -> examples ->
        base model, then LoRA (seeded again) -> optimizer and schedule -> the checkpoint, if any (it
        restores the RNG state last)."""
        tc = self.tc
        # Bit-identical resume holds on CPU only (see the module docstring).
        seed_everything(tc.seed, deterministic=self.device == "cpu")
        self.fp = fast.resolve(tc, self.device, self.world)
        for note in self.fp.notes:
            log.info(note)
        if self.world > 1 and not self.fp.padding_free:
            raise UserError(
                "train.nodes x train.gpus > 1 runs padding-free steps: leave train.padding_free at auto or on"
            )
        self.tokenizer = load_tokenizer(self.params.model)
        self.tokenizer.padding_side = "right"  # positions count from the first token (see collate)
        self._setup_data(dataset)
        self._setup_model()
        self.optimizer = make_optimizer(self.trainable, tc.learning_rate, tc.weight_decay, self.device)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, tc.warmup_steps, tc.max_steps)
        )
        self.start, self.history = self.load_checkpoint()

    def _setup_data(self, dataset: Path) -> None:
        tc = self.tc
        self.rows = read_jsonl(dataset / "train.jsonl")
        self.examples = tokenize(self.rows, self.tokenizer, tc.max_seq_len)
        if tc.packing:
            self.examples = pack(self.examples, tc.max_seq_len)
        log.info("%d training sequences (%s)", len(self.examples), "packed" if tc.packing else "one per row")

    def _setup_model(self) -> None:
        longest = max(len(e["input_ids"]) for e in self.examples)
        self.model, self.trainable, self.modules, self.fp = build(
            self.params, self.device, self.fp, self.where, longest
        )
        log.info(
            "LoRA r=%d on %s: %.2fM trainable parameters",
            self.tc.lora.r,
            self.modules,
            sum(p.numel() for p in self.trainable) / 1e6,
        )
        log.info("fast path: %s", {k: v for k, v in vars(self.fp).items() if k != "notes"})
        if self.dist:
            self.dist.broadcast_parameters(self.trainable)

    def load_checkpoint(self) -> tuple[int, list]:
        """(first step, loss history): from the latest checkpoint, else (0, [])."""
        if self.dist and self.rank:
            self.dist.barrier()  # rank 0 restores first: it drops a checkpoint made with other inputs
        got = self.ckpt.restore(self.model, self.optimizer, self.scheduler)
        if self.dist and not self.rank:
            self.dist.barrier()
        if self.dist:
            self.dist.same_start(got[0], self.ckpt.root)
        return got

    # ----------------------------------------------------------------------------------- train

    def train(self) -> None:
        """Steps ``start`` to ``max_steps``; a checkpoint every ``checkpoint_every`` steps, and on SIGTERM
        one at the end of the current step, then :class:`Interrupted`."""
        tc = self.tc
        self.model.train()
        self.started, self.tokens = time.time(), 0
        # Plain lines only on logged steps (train.log_every): the loss line carries elapsed and ETA.
        bar = Progress(
            "step", total=tc.max_steps, initial=self.start, every_pct=None, every_s=1e9, enabled=self.rank == 0
        )
        with self.stop, bar:
            for step in range(self.start, tc.max_steps):
                loss = self._step(step)
                self._log(step, loss, bar)
                done = step + 1
                if done == 1:
                    faults.point("train.before_first_checkpoint")
                faults.point(f"train.step_{done}")  # every rank: the multi-node tests lose a node here
                if self.stop.signal or done % tc.checkpoint_every == 0:
                    self.save_checkpoint(done)
                if self.stop.signal:
                    raise Interrupted(f"{signal.Signals(self.stop.signal).name}; checkpoint saved at step {done}")
        self.seconds = time.time() - self.started

    def _step(self, step: int) -> float:
        """One optimizer step over ``grad_accum`` micro-batches; returns its loss."""
        tc = self.tc
        if self.dist:
            # LoRA dropout: another mask on each rank, drawn from (seed, rank, step), so a run resumed
            # from rank 0's checkpoint draws on every rank what the run that never stopped drew.
            torch.manual_seed(int(np.random.SeedSequence([tc.seed, self.rank, step]).generate_state(1)[0]))
        micros = [batch_examples(self.examples, tc, step, m) for m in range(tc.grad_accum)]
        if self.fp.padding_free:
            passes = fast.pack_step(micros, tc, self.tokenizer.pad_token_id, self.rank, self.world)
            loss, tokens = train_step(self.model, passes, self.fp)
        else:
            loss, tokens = padded_step(self.model, micros, self.tokenizer, self.where, self.fp)
        self.tokens += tokens
        if self.dist:
            self.dist.all_reduce_gradients(self.trainable)
            loss, any_stop = self.dist.agree(float(loss), self.stop.signal is not None)
            if any_stop and not self.stop.signal:
                self.stop.signal = signal.SIGTERM
        torch.nn.utils.clip_grad_norm_(self.trainable, 1.0)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        loss = float(loss)  # read once the optimizer's kernels are queued: the step's one host sync
        if not math.isfinite(loss):
            raise UserError(f"the loss became {loss} at step {step + 1}; lower train.learning_rate")
        return loss

    def _log(self, step: int, loss: float, bar: Progress) -> None:
        tc = self.tc
        logged = (step + 1) % tc.log_every == 0 or step == self.start
        if logged:
            self.history.append({"step": step + 1, "loss": round(loss, 6), "lr": self.scheduler.get_last_lr()[0]})
        per_step = (time.time() - self.started) / (step + 1 - self.start)
        bar.update(1, note=f"loss {loss:.4f}, {per_step:.2f}s/step", say=logged)

    def save_checkpoint(self, step: int) -> None:
        """Rank 0 writes the resumable state; the other ranks wait for it."""
        if self.rank == 0:
            self.ckpt.save(step, self.model, self.optimizer, self.scheduler, self.history)
        if self.dist:
            self.dist.barrier()

    # ----------------------------------------------------------------------------------- outputs

    def save_outputs(self, adapter: Path) -> None:
        """Rank 0 writes the adapter, its loss log, sample prompts and metrics."""
        tc, history = self.tc, self.history
        peak = torch.cuda.max_memory_allocated() if self.device == "cuda" else None
        tokens = int(self.dist.total(self.tokens)) if self.dist else self.tokens  # every rank takes part
        if self.rank:
            return
        self.model.save_pretrained(adapter, safe_serialization=True)
        _portable_adapter_config(adapter, self.params.model.base)
        (adapter / "README.md").unlink(missing_ok=True)  # peft's model card names this machine's paths
        with open(adapter / "train_log.jsonl", "w") as f:
            f.writelines(json.dumps(h) + "\n" for h in history)
        (adapter / "sample_prompts.json").write_text(json.dumps([r["prompt"] for r in self.rows[:16]], indent=1))
        metrics = {
            "steps": tc.max_steps,
            "resumed_from_step": self.start,
            "first_loss": history[0]["loss"] if history else None,
            "final_loss": history[-1]["loss"] if history else None,
            "train_sequences": len(self.examples),
            "tokens_this_run": tokens,
            "seconds_this_run": round(self.seconds, 2),
            "tokens_per_second": round(tokens / max(self.seconds, 1e-9), 1),
            "target_modules": self.modules,
            "device": self.device,
            "quantization": tc.quantization,
        }
        if self.world > 1:
            metrics.update({"ranks": self.world, "nodes": tc.nodes or 1})
        if self.device == "cuda":
            metrics.update(
                {
                    "gpus": self.world,
                    "peak_gpu_memory_gib": round(peak / 2**30, 2),
                    "fast_path": {k: v for k, v in vars(self.fp).items() if k not in ("notes", "device")},
                }
            )
        write_json(adapter / "metrics.json", metrics)


class _Sigterm:
    """While entered, SIGTERM only sets ``signal``: the loop checkpoints at the end of the step and stops."""

    def __init__(self):
        self.signal: int | None = None

    def __enter__(self):
        self._previous = signal.signal(signal.SIGTERM, self._set)
        return self

    def __exit__(self, *exc) -> None:
        signal.signal(signal.SIGTERM, self._previous)

    def _set(self, signum, _frame) -> None:
        self.signal = signum


# --------------------------------------------------------------------------------------------
# Model set-up and steps


def build(params: TrainParams, device: str, fp: fast.FastPath, where: str | None = None, longest: int | None = None):
    """Base model -> fast-path set-up -> LoRA. Returns (model, trainable parameters, LoRA targets, FastPath)
    with gradient checkpointing "auto" settled. The bench builds its models with this too."""
    from peft import LoraConfig, get_peft_model

    tc = params.train
    model = load_model(
        params.model,
        dtype="bfloat16" if device == "cuda" else "float32",
        quantization=tc.quantization,
        device=where or device,
    )
    longest = min(longest or tc.max_seq_len, tc.max_seq_len)
    per_pass = tc.batch_size * (tc.max_seq_len if fp.padding_free else longest)
    fp = fast.choose_compile(fp, tc, model.config, tc.batch_size * tc.grad_accum * longest)
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
    if fp.fused_lora:
        from . import fused

        fused.fuse(model, shared_dropout=tc.lora.dropout_masks == "shared")
    if device == "cuda":
        fp = fast.choose_checkpointing(fp, tc, model.get_base_model().config, per_pass)
        if fp.gradient_checkpointing:
            fast.enable_checkpointing(model.get_base_model())
        if fp.compile:
            log.info("torch.compile: %d decoder layers", fast.compile_layers(model))
    return model, trainable, modules, fp


def make_optimizer(params: list, lr: float, weight_decay: float, device: str) -> torch.optim.Optimizer:
    """AdamW; on CUDA its fused kernel (one launch for all the LoRA tensors instead of a foreach chain)."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=device == "cuda" or None)


def padded_step(model, micros: list[list[dict]], tokenizer, where: str, fp: fast.FastPath) -> tuple[torch.Tensor, int]:
    """The plain path: one padded forward and backward per micro-batch, mean loss / grad_accum each.
    Returns (the step's loss as a float64 device scalar, tokens): reading it is the caller's one sync."""
    loss_sum, tokens = None, 0
    for examples in micros:
        batch = collate(examples, tokenizer, where)
        tokens += sum(len(e["input_ids"]) for e in examples)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=fp.autocast):
            loss = completion_loss(model, batch) / len(micros)
        loss.backward()
        loss = loss.detach().double()
        loss_sum = loss if loss_sum is None else loss_sum + loss
    return loss_sum, tokens


def train_step(model, passes: list[dict], fp: fast.FastPath) -> tuple[torch.Tensor, int]:
    """Forward and backward of one optimizer step's padding-free passes; the gradients accumulate.
    Returns (the step's loss as a device scalar, real tokens), with no host sync: the caller reads
    the loss once the optimizer step is queued."""
    total, tokens = None, 0
    for p in passes:
        batch = fast.to_device(p, fp.device if fp.device != "cuda" else f"cuda:{torch.cuda.current_device()}")
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=fp.autocast):
            loss = fast.packed_loss(model, batch, fp.fused_ce)
        loss.backward()
        total = loss.detach() if total is None else total + loss.detach()
        tokens += p["tokens"]
    return total, tokens


def check_rank(model, modules: list[str], r: int) -> None:
    """LoRA factors a layer's update into (out x r)(r x in): r at or above the layer's width adds
    parameters and learns nothing a full update would not. Checked before the adapter is allocated."""
    widths = [
        min(m.in_features, m.out_features)
        for name, m in model.named_modules()
        if name.rsplit(".", 1)[-1] in modules and hasattr(m, "in_features")
    ]
    if widths and r >= min(widths):
        raise UserError(
            f"train.lora.r={r} is not below the smallest width ({min(widths)}) of the target modules "
            f"{modules}; use a rank well below it (8-64 is usual)"
        )


def seed_everything(seed: int, deterministic: bool = True) -> None:
    from transformers import set_seed

    set_seed(seed)  # random, numpy, torch
    # Not set_seed(deterministic=True): that raises on an op with no deterministic kernel; this warns.
    torch.use_deterministic_algorithms(deterministic, warn_only=True)


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up to the peak, then linear decay to 0. Not transformers' get_linear_schedule_with_warmup:
    its first step has lr 0 (step / warmup) where this one has 1 / (warmup + 1), so adapters would change."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    return max(0.0, (total - step) / max(1, total - warmup))


# --------------------------------------------------------------------------------------------
# Data


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


def collate(batch: list[dict], tokenizer, device: str) -> dict:
    """input_ids padded with the pad token, labels with -100, and the attention mask. Right padding only:
    positions count from the first token, so left padding would shift every real token's position."""
    from transformers import DataCollatorForSeq2Seq

    if tokenizer.padding_side != "right":
        raise ValueError("collate pads on the right: set tokenizer.padding_side = 'right'")
    padded = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, return_tensors="pt")(batch)
    return {k: padded[k].to(device) for k in ("input_ids", "labels", "attention_mask")}


def completion_loss(model, batch: dict) -> torch.Tensor:
    """Cross-entropy on completion tokens, running the LM head only where there is a label.

    The LM head of a small model is a large share of its compute (SmolLM2: 28M of 135M
    parameters); prompt positions carry no loss, so skip them.
    """
    inner = model.get_base_model()
    decoder = inner.get_decoder() if hasattr(inner, "get_decoder") else None
    if decoder is None or getattr(inner.config, "final_logit_softcapping", None):
        return model(**batch).loss
    hidden = decoder(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
    ).last_hidden_state
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
