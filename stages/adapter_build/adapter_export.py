"""A task's PEFT adapter -> ``.onnx_adapter`` for the adapter-ready base (adapter_base.py).

The file holds one tensor per LoRA graph input of the base, named as that input:

- PEFT's ``lora_A`` ``[r, in]`` is transposed to ``[in, r]``;
- ``lora_B`` ``[out, r]`` becomes ``[r, out]`` times the adapter's scaling (alpha / r, or
  alpha / sqrt(r) with rsLoRA), which the graph does not apply;
- Phi-3's fused ``qkv_proj`` / ``gate_up_proj``: the graph has one branch per projection, so
  A is shared and B is split by the base's own output widths.

Every tensor is checked against the base's inputs (name, and each shape but the rank) before
anything is written; a mismatch fails naming the parameter. Olive's ``convert-adapters`` writes
PEFT names, which no ModelBuilder graph has (Olive issue #2277).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np

from core.errors import UserError

from .adapter_base import GRAPH_MODULES, AdapterBase

# PEFT key: ...layers.<i>.<self_attn|mlp>.<module>.lora_<A|B>.weight
_KEY = re.compile(r"(?:^|\.)layers\.(\d+)\.(\w+)\.(\w+)\.lora_([AB])\.weight$")
_BLOCK = {"self_attn": "attn", "mlp": "mlp"}


def scaling(config: dict) -> float:
    """The factor PEFT applies to the LoRA product; unsupported variants are a UserError."""
    for key in ("rank_pattern", "alpha_pattern"):
        if config.get(key):
            raise UserError(f"the adapter sets {key}; per-module ranks or alphas are not exported yet")
    if config.get("use_dora"):
        raise UserError("the adapter is DoRA; only plain LoRA adapters plug into the adapter-ready base")
    if config.get("modules_to_save"):
        raise UserError(
            f"the adapter trains {config['modules_to_save']} in full (modules_to_save); a shared base cannot "
            "carry per-task full modules: train the task without train.lora.modules_to_save"
        )
    r, alpha = config["r"], config["lora_alpha"]
    return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


def graph_tensors(adapter: Path, base: AdapterBase) -> dict[str, np.ndarray]:
    """The adapter's tensors under the base graph's input names and layout (not yet checked)."""
    from safetensors.numpy import load_file

    config = json.loads((adapter / "adapter_config.json").read_text())
    scale = scaling(config)
    dtype = np.dtype(base.dtype)
    out: dict[str, np.ndarray] = {}
    for key, tensor in load_file(adapter / "adapter_model.safetensors").items():
        m = _KEY.search(key)
        if not m or m.group(2) not in _BLOCK or m.group(3) not in GRAPH_MODULES:
            raise UserError(f"adapter parameter {key} is no LoRA weight of an attention or MLP projection")
        layer, block, module, ab = m.groups()
        prefix = f"model.layers.{layer}.{_BLOCK[block]}"
        parts = GRAPH_MODULES[module][1]
        names = [f"{prefix}.{p}.lora_{ab}.MatMul.weight" for p in parts]
        if ab == "A":
            out.update({name: tensor.T.astype(dtype) for name in names})
            continue
        widths = [base.inputs[n][1] if n in base.inputs else None for n in names]
        if None in widths or sum(widths) != tensor.shape[0]:
            widths = [tensor.shape[0] // len(parts)] * len(parts)  # no such input or width: the check names it
        for name, piece in zip(names, np.split(tensor, np.cumsum(widths)[:-1], axis=0)):
            out[name] = (piece.T * scale).astype(dtype)
    return out


def check(tensors: dict[str, np.ndarray], base: AdapterBase) -> None:
    """Every tensor is an input of the base, with its shape but for the rank; A and B ranks agree."""
    for name, t in sorted(tensors.items()):
        want = base.inputs.get(name)
        if want is None:
            raise UserError(
                f"adapter parameter {name} is not an input of the base {base.path} (built for target modules "
                f"{base.target_modules}); rebuild the base with this task's target modules"
            )
        fixed = [(i, d) for i, d in enumerate(want) if isinstance(d, int)]
        if t.ndim != 2 or any(t.shape[i] != d for i, d in fixed):
            shown = ["r" if isinstance(d, str) else d for d in want]
            raise UserError(f"adapter parameter {name} has shape {list(t.shape)}, the base's input is {shown}")
        a, b = (
            (name, name.replace(".lora_A.", ".lora_B."))
            if ".lora_A." in name
            else (name.replace(".lora_B.", ".lora_A."), name)
        )
        if a not in tensors or b not in tensors or tensors[a].shape[1] != tensors[b].shape[0]:
            raise UserError(f"adapter parameter {name} has no lora_A/lora_B partner of the same rank")


def export(adapter: Path, base: AdapterBase, out_file: Path) -> dict:
    """Write ``out_file`` (.onnx_adapter) from the PEFT ``adapter`` folder; returns what it holds."""
    import onnxruntime as ort

    for f in ("adapter_config.json", "adapter_model.safetensors"):
        if not (adapter / f).is_file():
            raise UserError(f"{adapter} has no {f}; it is not a PEFT adapter (the train stage's output)")
    tensors = graph_tensors(adapter, base)
    check(tensors, base)
    fmt = ort.AdapterFormat()
    fmt.set_adapter_version(1)
    fmt.set_model_version(1)
    # OrtValue.ortvalue_from_numpy borrows the array's memory: the arrays must outlive the export.
    arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    fmt.set_parameters({k: ort.OrtValue.ortvalue_from_numpy(v) for k, v in arrays.items()})
    out_file.parent.mkdir(parents=True, exist_ok=True)
    partial = out_file.with_name(out_file.name + ".partial")
    try:
        fmt.export_adapter(str(partial))
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    del arrays
    partial.replace(out_file)  # never a half-written file under the final name
    ranks = {n.rsplit(".lora_A.", 1)[0]: int(t.shape[1]) for n, t in tensors.items() if ".lora_A." in n}
    return {"file": out_file.name, "parameters": len(tensors), "modules": len(ranks), "bytes": out_file.stat().st_size}
