"""The two generators that evaluate and the INT4 search score with, and their timing.

Both take the same prompts and decode greedily: ``TorchGenerator`` (the merged Hugging Face
model) and ``OnnxGenerator`` (an onnxruntime-genai folder). Each counts the tokens it
generated up to the first end-of-sequence, what tokens/s divides. Shared here so that the
onnx_build search and evaluate time a model the same way (a stage imports no other stage).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from core.errors import UserError
from core.io import read_json
from core.models import load_model, load_tokenizer

log = logging.getLogger("slm")


def timed(gen, prompts: list[str]) -> tuple[list[str], float]:
    start = time.perf_counter()
    texts = gen.generate(prompts)
    return texts, time.perf_counter() - start


def timed_batches(gen, prompts: list[str], batch_size: int, progress=None) -> tuple[list[str], dict]:
    texts, seconds = [], 0.0
    for i in range(0, len(prompts), batch_size):
        out, dt = timed(gen, prompts[i : i + batch_size])
        texts += out
        seconds += dt
        if progress is not None:
            progress.update(len(out))
    return texts, {
        "seconds": round(seconds, 3),
        "tokens_per_second": round(gen.generated_tokens / max(seconds, 1e-9), 1),
    }


def until_eos(tokens: list[int], stop: set[int]) -> int:
    """Generated tokens up to and including the first end-of-sequence: what tokens/s counts."""
    return next((i + 1 for i, t in enumerate(tokens) if t in stop), len(tokens))


def _as_list(value) -> list:
    return value if isinstance(value, list) else [] if value is None else [value]


class TorchGenerator:
    def __init__(self, path: Path, device: str, max_new_tokens: int):
        self.path, self.device, self.max_new_tokens = path, device, max_new_tokens
        self.tokenizer = load_tokenizer(str(path))
        self.tokenizer.padding_side = "left"
        self.model = load_model(str(path), dtype="bfloat16" if device == "cuda" else "float32", device=device).eval()
        self.generated_tokens = 0

    def generate(self, prompts: list[str]) -> list[str]:
        import torch

        batch = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        with torch.no_grad():
            out = self.model.generate(
                **batch,
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.tokenizer.eos_token_id,
            )
        new = out[:, batch["input_ids"].shape[1] :].tolist()
        self.generated_tokens += sum(
            until_eos(seq, {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id}) for seq in new
        )
        return self.tokenizer.batch_decode(new, skip_special_tokens=True)


def stage_threads() -> int:
    """The threads this stage runs on, as the stage runner set them for PyTorch (runtime.threads, else
    every core): what an ONNX model is given unless it names its own."""
    import torch

    return torch.get_num_threads()


def _default_threads(genai: dict) -> int | None:
    """The model's own thread count (the INT4 search writes the one it chose into genai_config.json),
    else the stage's. onnxruntime's own default is not that: on a 2-core VM it ran one thread, so INT4
    was measured on half the cores PyTorch had."""
    options = genai.get("decoder", {}).get("session_options", {})
    return None if options.get("intra_op_num_threads") else stage_threads()


class OnnxGenerator:
    def __init__(self, path: Path, max_new_tokens: int, threads: int | None = None):
        info = read_json(Path(path) / "build_info.json", "onnx model")
        if info.get("execution_provider") == "cuda":
            _preload_cuda_libraries()
        # A pruned LM head computes the logits of the last position only; onnxruntime-genai pads a
        # batch on the right, so a shorter row's last position is padding and its tokens come out
        # wrong (docs/benchmarks.md). Such a model is run in batches of one token length (no padding).
        self.pruned = "prune_lm_head=true" in info.get("options", [])
        import onnxruntime_genai as og

        self.og, self.path, self.max_new_tokens = og, path, max_new_tokens
        genai = read_json(Path(path) / "genai_config.json", "onnx model")["model"]
        threads = threads or _default_threads(genai)
        try:
            config = og.Config(str(path))
            if threads:
                options = {"intra_op_num_threads": threads}
                config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
            self.model = og.Model(config)
        except Exception as e:  # noqa: BLE001
            raise UserError(f"onnxruntime-genai cannot load {path}: {str(e).splitlines()[0]}") from None
        self.tokenizer = og.Tokenizer(self.model)
        self.stop_ids = {t for k in ("eos_token_id", "pad_token_id") for t in _as_list(genai.get(k))}
        self.generated_tokens = 0
        self.decode_positions = 0  # rows x decoding steps, EOS or not: what raw decode throughput counts

    def generate(self, prompts: list[str]) -> list[str]:
        if not self.pruned or len(prompts) < 2:
            return self._generate(prompts)
        groups: dict[int, list[int]] = {}
        for i, p in enumerate(prompts):
            groups.setdefault(len(self.tokenizer.encode(p)), []).append(i)
        texts = [""] * len(prompts)
        for rows in groups.values():
            for i, text in zip(rows, self._generate([prompts[i] for i in rows])):
                texts[i] = text
        return texts

    def _generate(self, prompts: list[str]) -> list[str]:
        og = self.og
        tokens = self.tokenizer.encode_batch(prompts)
        params = og.GeneratorParams(self.model)
        width = tokens.as_numpy().shape[1]
        params.set_search_options(max_length=width + self.max_new_tokens, batch_size=len(prompts), do_sample=False)
        generator = self.new_generator(params)
        generator.append_tokens(tokens)
        steps = 0
        while not generator.is_done() and steps < self.max_new_tokens:
            generator.generate_next_token()
            steps += 1
        self.decode_positions += steps * len(prompts)
        texts = []
        for i in range(len(prompts)):
            new = generator.get_sequence(i)[width:].tolist()
            texts.append(self.tokenizer.decode(new))
            self.generated_tokens += until_eos(new, self.stop_ids)
        return texts

    def new_generator(self, params):
        """The generator for one batch, before any token is appended (switching.py sets its adapter here)."""
        return self.og.Generator(self.model, params)


def _preload_cuda_libraries() -> None:
    """For a CUDA build: load the CUDA/cuDNN libraries of the nvidia-* wheels into this process
    (onnxruntime-gpu's ``preload_dlls``), so its CUDA provider finds them without LD_LIBRARY_PATH."""
    try:
        import onnxruntime

        if hasattr(onnxruntime, "preload_dlls"):
            onnxruntime.preload_dlls()
    except Exception as e:  # noqa: BLE001 - LD_LIBRARY_PATH may still provide them
        log.info("onnxruntime.preload_dlls: %s", e)
