"""An adapter-ready INT4 base: one onnxruntime-genai model that many tasks' LoRA adapters plug into.

The builder's ``adapter_path=`` option adds, beside every adapted MatMul, a LoRA branch
(``.../lora_A/MatMul`` -> ``.../lora_B/MatMul`` -> ``.../lora/Add``) whose weights it bakes in as
initializers. Three things make that graph servable with ``og.Adapters`` (docs/multi-adapter.md):

- the branch is built from a placeholder adapter over the *union* of the tasks' target modules,
  so one graph takes every task's adapter;
- its INT4 quantizer would quantize the LoRA MatMuls too (their weights would then be constants
  of a MatMulNBits, not inputs): every one is listed in ``nodes_to_exclude``, and the build fails,
  naming the node, if any was quantized all the same;
- each LoRA weight becomes an optional graph input whose default is empty (``[in, 0]`` /
  ``[0, out]``): no active adapter adds a zero product, the plain base. Each module has its own
  rank dimension, so an adapter that covers only some modules (rank 0 elsewhere) does not make
  onnxruntime re-use one buffer for two shapes.

The builder runs through the onnx_build stage's own ``run`` (its log, LM-head and output checks).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from core.artifacts import write_json
from core.errors import UserError
from stages.onnx_build import stage as onnx_stage
from stages.onnx_build.build import layers as decoder_layers

# PEFT target module -> the graph's modules it becomes, under attn/ or mlp/ of every layer.
# Phi-3's fused projections are split by the builder (make_attention_unpacked_lora / make_mlp_unpacked_lora).
GRAPH_MODULES = {
    "q_proj": ("attn", ("q_proj",)),
    "k_proj": ("attn", ("k_proj",)),
    "v_proj": ("attn", ("v_proj",)),
    "qkv_proj": ("attn", ("q_proj", "k_proj", "v_proj")),
    "o_proj": ("attn", ("o_proj",)),
    "gate_proj": ("mlp", ("gate_proj",)),
    "up_proj": ("mlp", ("up_proj",)),
    "gate_up_proj": ("mlp", ("gate_proj", "up_proj")),
    "down_proj": ("mlp", ("down_proj",)),
}
LORA_SUFFIXES = (".lora_A.MatMul.weight", ".lora_B.MatMul.weight")


@dataclass(frozen=True)
class AdapterBase:
    """The built base: its folder, the LoRA graph inputs (name -> shape with the rank as a
    string dim) and the target modules it was built for."""

    path: Path
    inputs: dict[str, list]
    target_modules: list[str]
    dtype: str  # of the LoRA inputs: float32 on CPU, float16 on CUDA


def lora_node_names(target_modules: list[str], layers: int) -> list[str]:
    """Every LoRA MatMul the builder makes for these PEFT target modules, by node name."""
    unknown = sorted(set(target_modules) - set(GRAPH_MODULES))
    if unknown:
        raise UserError(
            f"target modules {unknown} have no LoRA path in the adapter-ready build; "
            f"use some of {sorted(GRAPH_MODULES)}"
        )
    names = []
    for i in range(layers):
        for target in sorted(target_modules):
            block, modules = GRAPH_MODULES[target]
            for module in modules:
                names += [f"/model/layers.{i}/{block}/{module}/lora_{ab}/MatMul" for ab in "AB"]
    return names


def write_placeholder_adapter(
    model: Path, target_modules: list[str], out: Path, rank: int = 1, trust_remote_code: bool = False
) -> None:
    """A PEFT adapter over ``target_modules`` with zero weights: the builder's ``adapter_path``
    wants one; only its structure reaches the graph (the weights become inputs)."""
    import torch
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code)
    with torch.device("meta"):  # shapes only: no weights are read or allocated
        skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    peft_model = get_peft_model(skeleton, LoraConfig(r=rank, lora_alpha=rank, target_modules=list(target_modules)))
    state = get_peft_model_state_dict(peft_model)
    save_file({k: torch.zeros(v.shape) for k, v in state.items()}, out / "adapter_model.safetensors")
    peft_model.peft_config["default"].save_pretrained(str(out))
    if not state:
        raise UserError(f"target modules {target_modules} match no layer of {model}")


def quantized_lora_nodes(graph) -> list[str]:
    """LoRA MatMuls the quantizer turned into MatMulNBits (their weights are no longer inputs)."""
    return [n.name for n in graph.node if n.op_type != "MatMul" and ("/lora_A/" in n.name or "/lora_B/" in n.name)]


def optional_lora_inputs(model_file: Path) -> tuple[dict[str, list], str]:
    """Rewrite ``model_file`` so that each LoRA weight is a graph input with an empty default;
    returns the new inputs (name -> [in, rank] or [rank, out]) and their dtype."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    proto = onnx.load(str(model_file))
    graph = proto.graph
    quantized = quantized_lora_nodes(graph)
    if quantized:
        raise UserError(
            f"the INT4 quantizer quantized the LoRA MatMul {quantized[0]} ({len(quantized)} in all); "
            "adapters cannot plug into it (list it in nodes_to_exclude)"
        )
    inputs: dict[str, list] = {}
    kept = []
    for init in graph.initializer:
        if not init.name.endswith(LORA_SUFFIXES):
            kept.append(init)
            continue
        rows, cols = init.dims
        rank = init.name.rsplit(".lora_", 1)[0] + ".rank"  # one dim per module: A and B share it
        shape = [rows, rank] if ".lora_A." in init.name else [rank, cols]
        dtype = helper.tensor_dtype_to_np_dtype(init.data_type)
        empty = np.zeros([rows, 0] if ".lora_A." in init.name else [0, cols], dtype=dtype)
        kept.append(numpy_helper.from_array(empty, init.name))
        graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, shape))
        inputs[init.name] = shape
    if not inputs:
        raise UserError(f"{model_file} has no LoRA weights: the builder ignored adapter_path")
    del graph.initializer[:]
    graph.initializer.extend(kept)
    # The builder typed each lora_A output with the placeholder's rank (1): drop those shapes.
    stale = [v for v in graph.value_info if "/lora_A/" in v.name or "/lora_B/" in v.name]
    for v in stale:
        graph.value_info.remove(v)
    staging = model_file.parent / ".rewrite"
    staging.mkdir()
    data = model_file.name + ".data"
    onnx.save(proto, str(staging / model_file.name), save_as_external_data=True, location=data)
    os.replace(staging / model_file.name, model_file)
    os.replace(staging / data, model_file.parent / data)
    staging.rmdir()
    return inputs, np.dtype(dtype).name


def build(cfg, model: Path, target_modules: list[str], out: Path) -> AdapterBase:
    """Build the adapter-ready base of ``model`` (a Hugging Face folder: the *unmerged* base) for
    the union ``target_modules`` into ``out`` (absent or empty), with ``cfg.onnx``'s settings.
    On failure ``out`` is left as it was: the build happens in a sibling folder."""
    layers = decoder_layers(model)
    if layers is None:
        raise UserError(f"{model}/config.json gives no num_hidden_layers; cannot list the LoRA nodes")
    excluded = lora_node_names(target_modules, layers)
    options = dict(cfg.onnx.extra_options)
    if options.get("nodes_to_exclude"):
        excluded = options["nodes_to_exclude"].split(",") + excluded
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} is not empty; give the adapter-ready base a new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="placeholder-adapter-") as placeholder:
        write_placeholder_adapter(
            model, target_modules, Path(placeholder), trust_remote_code=cfg.model.trust_remote_code
        )
        options.update(adapter_path=placeholder, nodes_to_exclude=",".join(excluded))
        built_cfg = cfg.model_copy(update={"onnx": cfg.onnx.model_copy(update={"extra_options": options})})
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            onnx_stage.run(built_cfg, None, model, staging)
            inputs, dtype = optional_lora_inputs(staging / _graph_file(staging))
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    meta = {"target_modules": sorted(target_modules), "dtype": dtype, "inputs": inputs}
    write_json(staging / "adapter_base.json", meta)
    _drop_placeholder_path(staging / "build_info.json")
    if out.exists():
        out.rmdir()
    staging.chmod(0o755)  # mkdtemp's 0700 is not what a model folder gets
    os.replace(staging, out)
    return AdapterBase(out, inputs, sorted(target_modules), dtype)


def _graph_file(folder: Path) -> str:
    """The decoder graph's file name, as genai_config.json names it."""
    genai = json.loads((folder / "genai_config.json").read_text())
    return genai["model"]["decoder"]["filename"]


def _drop_placeholder_path(build_info: Path) -> None:
    """The placeholder adapter's temporary path says nothing about the model: keep the key only."""
    info = json.loads(build_info.read_text())
    shown = {"adapter_path": "(placeholder)", "nodes_to_exclude": "(every LoRA MatMul)"}
    info["options"] = [
        f"{k}={shown[k]}" if k in shown else f"{k}={v}" for k, _, v in (o.partition("=") for o in info["options"])
    ]
    write_json(build_info, info)


def load(path: Path) -> AdapterBase:
    """An adapter-ready base built by :func:`build`, or a UserError saying what it is not."""
    meta = path / "adapter_base.json"
    if not meta.is_file():
        raise UserError(f"{path} is not an adapter-ready base (no adapter_base.json); build it with adapter_base.build")
    info = json.loads(meta.read_text())
    return AdapterBase(path, info["inputs"], info["target_modules"], info["dtype"])


def trained_targets(adapters: list[Path]) -> list[str]:
    """The union of the target modules the tasks' PEFT adapters were trained on (their adapter_config.json)."""
    union: set[str] = set()
    for adapter in adapters:
        try:
            targets = json.loads((adapter / "adapter_config.json").read_text())["target_modules"]
        except (OSError, ValueError, KeyError) as e:
            raise UserError(f"{adapter} is no PEFT adapter with target_modules ({type(e).__name__}: {e})") from None
        union |= set([targets] if isinstance(targets, str) else targets)
    return sorted(union)


def base_folder(model_cfg) -> Path:
    """The base model as a local folder for the builder: built-in and local sources as they resolve,
    a hub id as its snapshot at ``model.revision`` (from the hub cache when offline)."""
    from core.models import resolve

    source = resolve(model_cfg.base)
    if Path(source).is_dir():
        return Path(source)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source, revision=model_cfg.revision))
    except Exception as e:  # noqa: BLE001 - the hub client's errors are many; one line says which
        raise UserError(f"model.base {source!r}: no snapshot at revision {model_cfg.revision}: {e}") from None


def build_for_adapters(cfg, adapters: list[Path], out: Path) -> AdapterBase:
    """The DAG's step: the adapter-ready base of ``cfg.model`` for the trained tasks' ``adapters``."""
    return build(cfg, base_folder(cfg.model), trained_targets(adapters), out)
