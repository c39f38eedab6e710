"""merge: fold the LoRA adapter into a full-precision base and prove nothing changed.

The base is reloaded in ``merge.dtype`` (fp32 by default, never 4-bit: merging into
quantized weights would bake quantization error into the export). Before saving, the
merged model's logits are compared with base+adapter on sample prompts; a relative
difference above ``merge.parity_tolerance`` fails the stage, so a broken merge never
reaches the ONNX build.

Output (Model artifact): safetensors weights, a config readable by transformers 4.x and
5.x, the tokenizer as ``PreTrainedTokenizerFast`` and ``parity.json``.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import torch

from core.artifacts import write_json
from core.errors import UserError
from core.io import read_json
from core.models import device_for, load_model, load_tokenizer
from core.runner import StageContext
from core.tokenizer_io import save_tokenizer
from stages.registry import MergeParams

log = logging.getLogger("slm")


def run(params: MergeParams, ctx: StageContext, adapter: Path, model: Path) -> None:
    from peft import PeftModel

    device = device_for(params.runtime)
    adapter_cfg = read_json(adapter / "adapter_config.json", "adapter")
    if adapter_cfg.get("base_model_name_or_path") not in (None, params.model.base):
        log.warning(
            "the adapter was trained on %s, merging into %s", adapter_cfg["base_model_name_or_path"], params.model.base
        )
    tokenizer = load_tokenizer(params.model)
    base = load_model(params.model, dtype=params.merge.dtype, device=device)
    try:
        peft_model = PeftModel.from_pretrained(base, adapter, is_trainable=False)
    except Exception as e:  # noqa: BLE001 - shape mismatches, missing keys, corrupt files
        raise UserError(
            f"the adapter in {adapter} does not fit {params.model.base}: {str(e).splitlines()[0][:300]}"
        ) from None
    peft_model.eval()

    prompts = json.loads((adapter / "sample_prompts.json").read_text())[: params.merge.parity_prompts]
    batch = tokenizer(prompts, return_tensors="pt", padding=True).to(device)
    with torch.no_grad():
        reference = peft_model(**batch).logits.float()
        merged = peft_model.merge_and_unload()
        logits = merged(**batch).logits.float()
    mask = batch["attention_mask"].bool()
    diff = (logits - reference).abs()[mask].max().item()
    scale = reference.abs()[mask].max().item()
    relative = diff / max(scale, 1e-6)
    parity = {
        "max_abs_diff": diff,
        "max_abs_logit": scale,
        "relative_diff": relative,
        "tolerance": params.merge.parity_tolerance,
        "prompts": len(prompts),
    }
    log.info(
        "parity: max |logit diff| %.2e (relative %.2e, tolerance %.0e)", diff, relative, params.merge.parity_tolerance
    )
    if not (math.isfinite(diff) and math.isfinite(scale)):
        raise UserError(
            "the merged or base+adapter logits are not finite (NaN or inf): the adapter holds a corrupt weight; "
            "the merge is not faithful. Re-run train"
        )
    if relative > params.merge.parity_tolerance:
        raise UserError(
            f"merged logits differ from base+adapter by {relative:.2e} (relative), above merge.parity_tolerance="
            f"{params.merge.parity_tolerance}; the merge is not faithful"
        )

    merged.save_pretrained(model, safe_serialization=True)
    portable_config(model)
    save_tokenizer(tokenizer, model)
    write_json(model / "parity.json", parity)
    if (adapter / "train_log.jsonl").is_file():  # the loss curve travels on to evaluate's report
        shutil.copyfile(adapter / "train_log.jsonl", model / "train_log.jsonl")


def portable_config(folder: Path) -> None:
    """Add the transformers 4.x spellings next to 5.x's (``torch_dtype``, ``rope_theta``)."""
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    if "dtype" in cfg:
        cfg.setdefault("torch_dtype", cfg["dtype"])
    rope = cfg.get("rope_parameters") or {}
    if "rope_theta" in rope:
        cfg.setdefault("rope_theta", rope["rope_theta"])
    if rope.get("rope_type", "default") != "default":
        cfg.setdefault("rope_scaling", rope)
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True))
