"""Import a Microsoft Olive config (the Phi-3 fine-tuning recipe's JSON) into our schema.

Both generations of Olive's keys are read:

- older (Olive <= 0.6, the Phi-3 CookBook's ``olive-config.json``): ``input_model.type``
  ``PyTorchModel`` with ``config.hf_config`` (``model_name``, ``task``, ``from_pretrained_args``),
  ``data_configs[].params_config`` (``data_name``, ``data_files``, ``split``,
  ``component_kwargs.pre_process_data``), pass options under ``passes.<name>.config``
  (``lora_r``, ``lora_alpha``...), ``engine`` (``cache_dir``, ``output_dir``, ``host``, ``target``),
  ``systems.<name>.config.accelerators``;
- current (Olive >= 0.7): ``input_model.type`` ``HfModel`` with ``model_path`` and ``load_kwargs``,
  ``data_configs[].load_dataset_config`` / ``pre_process_data_config`` (optionally with a
  ``params`` block), pass options on the pass itself (``r``, ``alpha``...), a pass given as a list
  of configs, and ``host``/``target``/``cache_dir``/``output_dir`` at the top level.

Olive's LoRA/QLoRA -> MergeAdapterWeights -> ModelBuilder chain maps onto our stages. Every
leaf key of the Olive JSON ends up in exactly one of two lists, which the warning, the
terminal and the header of ``pipeline.py import-olive``'s output show: *mapped* (and to which
key of ours) or *not imported* (and why). Nothing is dropped silently. Relative data paths
resolve against the Olive config's folder, as Olive resolves them. A malformed Olive config
is a :class:`UserError` naming the key, never a traceback.
"""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import UserError

log = logging.getLogger("slm")

# Pass types we run as stages. Anything else is listed as not imported.
LORA_PASSES = {"lora": "none", "qlora": "nf4"}
MERGE_PASS = "mergeadapterweights"
BUILDER_PASS = "modelbuilder"
DATA_FORMATS = {"json": "auto", "jsonl": "jsonl", "csv": "csv"}
_GPU_PROVIDERS = {"CUDAExecutionProvider", "TensorrtExecutionProvider"}
_CPU_PROVIDERS = {"CPUExecutionProvider"}

# training_args we map, and how.
_TRAIN_ARGS = {
    "seed": "train.seed",
    "data_seed": "data.seed",
    "per_device_train_batch_size": "train.batch_size",
    "gradient_accumulation_steps": "train.grad_accum",
    "learning_rate": "train.learning_rate",
    "max_steps": "train.max_steps",
    "weight_decay": "train.weight_decay",
    "warmup_steps": "train.warmup_steps",
    "logging_steps": "train.log_every",
    "save_steps": "train.checkpoint_every",
    "per_device_eval_batch_size": "evaluate.batch_size",
}
# training_args that have no knob here, with what we do instead.
_TRAIN_ARGS_NOTED = {
    "adam_beta2": "AdamW runs with beta2 0.999 (torch's default); not configurable",
    "max_grad_norm": "gradients are clipped at norm 1.0; not configurable",
    "evaluation_strategy": "no evaluation during training: the evaluate stage scores the held-out split after it",
    "eval_strategy": "no evaluation during training: the evaluate stage scores the held-out split after it",
    "eval_steps": "no evaluation during training: the evaluate stage scores the held-out split after it",
    "load_best_model_at_end": "no evaluation during training, so no best checkpoint: the last step is kept",
    "num_train_epochs": "training length is train.max_steps",
    "output_dir": "checkpoints live in the run folder (pipeline.py run --out)",
    "group_by_length": "batches are drawn in seeded random order",
}


@dataclass
class OliveImport:
    """What an Olive config became: our config tree, and where every Olive key went."""

    source: str
    tree: dict = field(default_factory=dict)
    mapped: dict[str, str] = field(default_factory=dict)  # olive key -> our key (or what it became)
    ignored: dict[str, str] = field(default_factory=dict)  # olive key -> why it is not imported
    origin: dict[str, str] = field(default_factory=dict)  # our key -> olive key (for error messages)

    def set(self, ours: str, value: Any, olive_key: str) -> None:
        node = self.tree
        *parents, last = ours.split(".")
        for k in parents:
            node = node.setdefault(k, {})
        node[last] = value
        self.mapped[olive_key] = ours if olive_key not in self.mapped else f"{self.mapped[olive_key]}, {ours}"
        self.origin[ours] = olive_key

    def note(self, olive_key: str, what: str) -> None:
        """A key that is accounted for without a key of ours (it selects a stage, or it is the default)."""
        self.mapped[olive_key] = what

    def skip(self, olive_key: str, why: str) -> None:
        self.ignored[olive_key] = why

    def warning(self) -> str:
        """One block, a line per key not imported (what the terminal shows)."""
        return (
            f"warning: {self.source}: {len(self.ignored)} Olive key(s) not imported "
            "(`pipeline.py import-olive` writes them into the config's header):\n"
            + "\n".join(f"  {k}: {v}" for k, v in self.ignored.items())
        )

    def yaml(self) -> str:
        """The config file ``pipeline.py import-olive`` writes: the header, then our YAML."""
        import yaml

        class Dumper(yaml.SafeDumper):
            pass

        def text(dumper, value):  # templates keep their "\n" escapes, on one line
            return dumper.represent_scalar("tag:yaml.org,2002:str", value, style='"' if "\n" in value else None)

        Dumper.add_representer(str, text)
        return (
            self.header() + "\n" + yaml.dump(self.tree, Dumper=Dumper, sort_keys=False, allow_unicode=True, width=1000)
        )

    def header(self) -> str:
        """The comment block at the top of a config written by ``pipeline.py import-olive``."""
        lines = [
            f"Imported from the Olive config {self.source} by `pipeline.py import-olive`.",
            "Relative data paths were resolved against the Olive config's folder.",
            "",
            "Mapped (Olive key -> ours):",
        ]
        lines += [f"  {k} -> {v}" for k, v in self.mapped.items()] or ["  (nothing)"]
        lines += ["", "NOT imported (Olive key: why):"]
        lines += [f"  {k}: {v}" for k, v in self.ignored.items()] or ["  (nothing)"]
        return "".join(f"# {line}".rstrip() + "\n" for line in lines)


# --------------------------------------------------------------------------- typed access


class _Reader:
    """Typed reads of the Olive JSON that name the key on any type error, and record which
    keys were read (every leaf must end up mapped or listed as not imported)."""

    def __init__(self, source: str, imp: OliveImport):
        self.source, self.imp = source, imp

    def fail(self, key: str, msg: str):
        raise UserError(f"{self.source}: {key}: {msg}")

    def obj(self, value, key: str, optional: bool = True) -> dict:
        if value is None and optional:
            return {}
        if not isinstance(value, dict):
            self.fail(key, f"expected an object {{...}}, got {_kind(value)}")
        return value

    def string(self, value, key: str) -> str:
        if not isinstance(value, str) or not value.strip():
            self.fail(key, f"expected a non-empty string, got {_kind(value)}")
        return value

    def number(self, value, key: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            self.fail(key, f"expected a number, got {_kind(value)}")
        return value

    def integer(self, value, key: str) -> int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(key, f"expected an integer, got {_kind(value)}")
        return value

    def boolean(self, value, key: str) -> bool:
        if not isinstance(value, bool):
            self.fail(key, f"expected true or false, got {_kind(value)}")
        return value

    def strings(self, value, key: str) -> list[str]:
        if isinstance(value, str):
            return [value]
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
            self.fail(key, f"expected a string or a non-empty list of strings, got {_kind(value)}")
        return value


def _kind(value) -> str:
    if value is None:
        return "null"
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"


def _leaves(value, prefix: str) -> list[str]:
    """Every leaf key path: objects recurse by key, lists of objects by index."""
    if isinstance(value, dict):
        if not value:
            return [prefix] if prefix else []
        return [leaf for k, v in value.items() for leaf in _leaves(v, f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(value, list) and value and any(isinstance(v, (dict, list)) for v in value):
        return [leaf for i, v in enumerate(value) for leaf in _leaves(v, f"{prefix}[{i}]")]
    return [prefix]


def _covered(leaf: str, keys) -> bool:
    return any(leaf == k or leaf.startswith(k + ".") or leaf.startswith(k + "[") for k in keys)


# --------------------------------------------------------------------------- the import


def import_olive_config(olive: dict, source: Path | str = "olive config") -> OliveImport:
    """Map ``olive`` (a parsed Olive JSON) onto our config tree; see the module docstring."""
    src = str(source)
    folder = Path(source).resolve().parent if isinstance(source, Path) else Path.cwd()
    imp = OliveImport(source=src)
    r = _Reader(src, imp)
    if not isinstance(olive, dict):
        r.fail("<top level>", f"expected an object, got {_kind(olive)}")
    name = re.sub(r"[^a-z0-9]+", "-", Path(src).stem.lower()).strip("-")[:40]
    if name:
        imp.tree["name"] = name

    _input_model(olive, r, imp, folder)
    data_configs = _data_configs(olive, r)
    passes = _passes(olive, r)
    used_data: set[str] = set()
    lora_seen = _map_passes(passes, r, imp, data_configs, used_data, folder)
    if passes and not lora_seen:
        r.fail("passes", "no LoRA or QLoRA pass: this pipeline fine-tunes; there is nothing to import as training")
    _systems(olive, r, imp)
    _data_configs_unused(data_configs, used_data, imp)
    _top_level(olive, imp)

    # Every leaf is mapped or listed: whatever the code above did not read is "not imported".
    accounted = set(imp.mapped) | set(imp.ignored)
    for leaf in _leaves(olive, ""):
        if not _covered(leaf, accounted):
            imp.skip(leaf, "no equivalent here")
    _check_values(imp, r)
    return imp


def _map_passes(passes: list, r: _Reader, imp: OliveImport, data_configs: dict, used: set, folder: Path) -> bool:
    """Each Olive pass onto its stage: the first LoRA/QLoRA pass onto train, MergeAdapterWeights
    onto merge, the first ModelBuilder onto onnx_build; others listed. True when a LoRA pass was seen."""
    lora_seen = builder_seen = False
    for key, ptype, conf, opt_key in passes:
        kind = ptype.lower()
        if kind in LORA_PASSES:
            if lora_seen:
                imp.skip(key, "a second LoRA/QLoRA pass: one adapter is trained, by the first")
                continue
            lora_seen = True
            imp.note(f"{key}.type", f"the train stage ({ptype})")
            imp.set("train.quantization", LORA_PASSES[kind], f"{key}.type")
            _lora(conf, opt_key, kind, r, imp, data_configs, used, folder)
        elif kind == MERGE_PASS:
            imp.note(f"{key}.type", "merge stage")
            for k in conf:
                imp.skip(f"{opt_key}.{k}", "the merge stage reloads the base in merge.dtype; no other options")
        elif kind == BUILDER_PASS:
            if builder_seen:
                imp.skip(key, "a second ModelBuilder pass: one ONNX model is built")
                continue
            builder_seen = True
            imp.note(f"{key}.type", "onnx_build stage")
            _builder(conf, opt_key, r, imp)
        else:
            imp.skip(
                key,
                f"pass type {ptype!r} has no stage here (the DAG is LoRA/QLoRA -> MergeAdapterWeights -> ModelBuilder)",
            )
    return lora_seen


def import_olive(olive: dict, source: Path | str = "olive config") -> dict:
    """The config tree for ``olive``; what is not imported is logged as a warning, by key."""
    imp = import_olive_config(olive, source)
    if imp.ignored:
        log.warning("%s", imp.warning().removeprefix("warning: "))
    return imp.tree


def _resolve_path(value: str, folder: Path, r: _Reader, key: str) -> str:
    """A data path as Olive resolves it (against the Olive config's folder), written relative to
    the working folder when it lies inside it, else absolute. A relative path that climbs out of
    its folder with '..' must land inside the working folder: the rule `--set data.path` applies."""
    p = Path(os.path.expanduser(value))
    relative = not p.is_absolute()
    if relative:
        p = folder / p
    p = Path(os.path.normpath(p))
    try:
        return str(p.relative_to(Path.cwd().resolve()))
    except ValueError:
        if relative:
            from core.config import contained_path

            try:
                contained_path(value)
            except ValueError:
                r.fail(key, f"{value!r} climbs out of {folder} with '..' to {p}; use an absolute path if you mean it")
        return str(p)


def _input_model(olive: dict, r: _Reader, imp: OliveImport, folder: Path) -> None:
    if "input_model" not in olive:
        r.fail("input_model", "missing: an Olive config names its base model in input_model")
    model = r.obj(olive["input_model"], "input_model", optional=False)
    mtype = r.string(model.get("type"), "input_model.type")
    if mtype.lower() in ("hfmodel",):  # current keys
        imp.note("input_model.type", "a Hugging Face model: model.base")
        path = r.string(model.get("model_path"), "input_model.model_path")
        local = folder / path
        imp.set(
            "model.base",
            _resolve_path(path, folder, r, "input_model.model_path") if local.exists() else path,
            "input_model.model_path",
        )
        load = r.obj(model.get("load_kwargs"), "input_model.load_kwargs")
        _load_kwargs(load, "input_model.load_kwargs", r, imp)
        if "task" in model:
            _task(model["task"], "input_model.task", r, imp)
    elif mtype.lower() == "pytorchmodel":  # older keys
        imp.note("input_model.type", "a Hugging Face model (config.hf_config): model.base")
        conf = r.obj(model.get("config"), "input_model.config")
        hf = r.obj(conf.get("hf_config"), "input_model.config.hf_config")
        if "model_name" not in hf:
            r.fail(
                "input_model.config.hf_config.model_name",
                "missing: a PyTorchModel is imported through its hf_config (model_path/model_script models are not)",
            )
        name = r.string(hf["model_name"], "input_model.config.hf_config.model_name")
        local = folder / name
        imp.set(
            "model.base",
            _resolve_path(name, folder, r, "input_model.config.hf_config.model_name") if local.exists() else name,
            "input_model.config.hf_config.model_name",
        )
        if "task" in hf:
            _task(hf["task"], "input_model.config.hf_config.task", r, imp)
        args = r.obj(hf.get("from_pretrained_args"), "input_model.config.hf_config.from_pretrained_args")
        _load_kwargs(args, "input_model.config.hf_config.from_pretrained_args", r, imp)
        for k in ("model_script", "io_config", "dummy_inputs_func", "script_dir"):
            if k in conf:
                imp.skip(
                    f"input_model.config.{k}",
                    "Olive's ONNX-export hooks; the onnxruntime-genai model builder needs none",
                )
    else:
        r.fail(
            "input_model.type",
            f"{mtype!r} is not imported; use HfModel (model_path) or PyTorchModel (config.hf_config)",
        )


def _task(value, key: str, r: _Reader, imp: OliveImport) -> None:
    task = r.string(value, key)
    if task.startswith("text-generation"):
        imp.note(key, "causal LM (what every stage assumes)")
    else:
        r.fail(key, f"{task!r}: only text-generation models are fine-tuned here")


def _load_kwargs(load: dict, key: str, r: _Reader, imp: OliveImport) -> None:
    for k, v in load.items():
        if k == "trust_remote_code":
            imp.set("model.trust_remote_code", r.boolean(v, f"{key}.{k}"), f"{key}.{k}")
        elif k == "revision":
            imp.set("model.revision", r.string(v, f"{key}.{k}"), f"{key}.{k}")
        elif k in ("torch_dtype", "dtype"):
            imp.skip(
                f"{key}.{k}",
                "the train stage picks the dtype per device (bf16 on GPU, fp32 on CPU); merge.dtype for merging",
            )
        else:
            imp.skip(f"{key}.{k}", "no loading option like it here")


def _data_configs(olive: dict, r: _Reader) -> dict[str, tuple[str, dict]]:
    """``{name: (olive key, data config)}``; Olive 0.3 also allowed an object keyed by name."""
    raw = olive.get("data_configs")
    if raw is None:
        return {}
    out: dict[str, tuple[str, dict]] = {}
    if isinstance(raw, dict):
        for name, dc in raw.items():
            out[name] = (f"data_configs.{name}", r.obj(dc, f"data_configs.{name}", optional=False))
        return out
    if not isinstance(raw, list):
        r.fail("data_configs", f"expected a list of data configs, got {_kind(raw)}")
    for i, dc in enumerate(raw):
        dc = r.obj(dc, f"data_configs[{i}]", optional=False)
        name = r.string(dc.get("name"), f"data_configs[{i}].name")
        if name in out:
            r.fail(f"data_configs[{i}].name", f"{name!r} is used twice")
        out[name] = (f"data_configs[{i}]", dc)
    return out


def _passes(olive: dict, r: _Reader) -> list[tuple[str, str, dict, str]]:
    """``[(olive key, type, options, options' key prefix)]`` in order. Accepts a dict of
    passes (older and current), a pass given as a list of configs (current: the first is used),
    and a list of passes."""
    raw = olive.get("passes")
    if raw is None:
        return []
    if isinstance(raw, dict):
        items = list(raw.items())
        prefix = "passes."
    elif isinstance(raw, list):
        items = [(str(i), p) for i, p in enumerate(raw)]
        prefix = "passes"
    else:
        r.fail("passes", f"expected an object of passes, got {_kind(raw)}")
    out = []
    for name, p in items:
        key = f"passes.{name}" if prefix == "passes." else f"passes[{name}]"
        if isinstance(p, list):  # current Olive: a pass may list several configs to search over
            if not p:
                r.fail(key, "an empty list of pass configs")
            for j in range(1, len(p)):
                r.imp.skip(f"{key}[{j}]", "alternative pass configs (Olive's search space): the first one is used")
            key, p = f"{key}[0]", p[0]
        p = r.obj(p, key, optional=False)
        kind = r.string(p.get("type"), f"{key}.type")
        if "config" in p:  # older keys: the options under "config"
            conf = r.obj(p["config"], f"{key}.config")
            opt_key = f"{key}.config"
            for k in p:
                if k not in ("type", "config"):
                    r.imp.skip(f"{key}.{k}", "pass-level setting with no equivalent here")
        else:
            conf = {k: v for k, v in p.items() if k != "type"}
            opt_key = key
        out.append((key, kind, conf, opt_key))
    return out


def _lora(
    conf: dict, key: str, kind: str, r: _Reader, imp: OliveImport, data_configs: dict, used: set, folder: Path
) -> None:
    names = {
        "lora_r": "train.lora.r",
        "r": "train.lora.r",
        "lora_alpha": "train.lora.alpha",
        "alpha": "train.lora.alpha",
    }
    for k, v in conf.items():
        k_key = f"{key}.{k}"
        if k in names:
            imp.set(names[k], r.integer(v, k_key), k_key)
        elif k == "lora_dropout" or k == "dropout":
            imp.set("train.lora.dropout", r.number(v, k_key), k_key)
        elif k in ("target_modules", "modules_to_save"):
            if v is None:
                imp.note(
                    k_key, f"train.lora.{k} unset ({'inferred per architecture' if k == 'target_modules' else 'none'})"
                )
            else:
                imp.set(f"train.lora.{k}", r.strings(v, k_key), k_key)
        elif k == "train_data_config":
            _train_data(v, k_key, r, imp, data_configs, used, folder)
        elif k == "eval_data_config":
            _eval_data(v, k_key, r, imp, data_configs, used, folder)
        elif k == "eval_dataset_size":
            _eval_dataset_size(v, k_key, r, imp)
        elif k == "training_args":
            _training_args(v, k_key, r, imp)
        elif kind == "qlora" and k in ("quant_type", "double_quant", "compute_dtype"):
            _qlora_option(k, v, k_key, r, imp)
        else:
            imp.skip(k_key, f"a {kind} pass option with no equivalent here")


def _eval_dataset_size(v, k_key: str, r: _Reader, imp: OliveImport) -> None:
    """Olive's held-out size is a fraction or a count; only a fraction maps onto ours."""
    size = r.number(v, k_key)
    if 0 < size < 1:
        imp.set("data.eval_fraction", size, k_key)
    elif size >= 1:
        imp.skip(k_key, f"an absolute count ({v}); the held-out split here is a fraction: set data.eval_fraction")
    else:
        r.fail(k_key, f"{v} must be a fraction between 0 and 1 or a positive count")


def _training_args(v, k_key: str, r: _Reader, imp: OliveImport) -> None:
    """The transformers TrainingArguments a LoRA pass carries: the ones we have are set, the
    rest listed as skipped with the reason."""
    args = r.obj(v, k_key)
    for a, av in args.items():
        a_key = f"{k_key}.{a}"
        if a in _TRAIN_ARGS:
            ours = _TRAIN_ARGS[a]
            if a in ("max_steps", "warmup_steps") and av == -1:
                imp.note(a_key, "-1: the default")
                continue
            value = r.number(av, a_key) if a in ("learning_rate", "weight_decay") else r.integer(av, a_key)
            imp.set(ours, value, a_key)
        elif a == "gradient_checkpointing":
            imp.set("train.gradient_checkpointing", "on" if r.boolean(av, a_key) else "off", a_key)
        elif a in _TRAIN_ARGS_NOTED:
            imp.skip(a_key, _TRAIN_ARGS_NOTED[a])
        else:
            imp.skip(a_key, "a transformers TrainingArguments option with no equivalent here")


def _qlora_option(k: str, v, k_key: str, r: _Reader, imp: OliveImport) -> None:
    """QLoRA's quantization options are fixed here (nf4, double quant): noted, or refused."""
    if k == "quant_type" and str(v).lower() != "nf4":
        r.fail(k_key, f"{v!r}: only nf4 4-bit quantization is supported")
    imp.note(
        k_key,
        {
            "quant_type": "nf4 (train.quantization)",
            "double_quant": "double quantization is always on with nf4",
            "compute_dtype": "bf16 compute on GPU, fp32 on CPU",
        }[k],
    )


def _data_config(ref, key: str, r: _Reader, data_configs: dict, used: set) -> tuple[str, dict]:
    if isinstance(ref, str):
        if ref not in data_configs:
            r.fail(key, f"names {ref!r}, which is not in data_configs ({', '.join(data_configs) or 'none'})")
        used.add(ref)
        return data_configs[ref]
    return key, r.obj(ref, key, optional=False)  # an inline data config


def _unwrap_params(r, imp, dc: dict, key: str, why: str) -> tuple[str, dict]:
    """An Olive ``*_config`` block: its ``params`` when it has them (the other keys name Olive's
    own loader or function, listed as ignored), else the block itself."""
    block = r.obj(dc.get(key.rsplit(".", 1)[1]), key)
    if "params" not in block:
        return key, block
    for k in block:
        if k != "params":
            imp.skip(f"{key}.{k}", why)
    return f"{key}.params", r.obj(block["params"], f"{key}.params")


def _train_data(ref, key: str, r: _Reader, imp: OliveImport, data_configs: dict, used: set, folder: Path) -> None:
    dkey, dc = _data_config(ref, key, r, data_configs, used)
    imp.note(key, f"the training data ({dkey})")
    dtype = dc.get("type", "HuggingfaceContainer")
    if "type" in dc:
        dtype = r.string(dc["type"], f"{dkey}.type")
    if dtype != "HuggingfaceContainer":
        r.fail(f"{dkey}.type", f"{dtype!r}: only HuggingfaceContainer data (local files) is imported")
    imp.note(f"{dkey}.type", "data_prep reads the file itself")
    if "name" in dc:
        imp.note(f"{dkey}.name", "the training data")
    # older: params_config holds everything; current: load_dataset_config + pre_process_data_config,
    # each optionally with its options under "params".
    if "params_config" in dc:
        pc = r.obj(dc["params_config"], f"{dkey}.params_config")
        load, load_key = pc, f"{dkey}.params_config"
        ck = r.obj(pc.get("component_kwargs"), f"{dkey}.params_config.component_kwargs")
        pre_key = f"{dkey}.params_config.component_kwargs.pre_process_data"
        pre = r.obj(ck.get("pre_process_data"), pre_key)
        for k in ck:
            if k != "pre_process_data":
                imp.skip(
                    f"{dkey}.params_config.component_kwargs.{k}", "a data component option with no equivalent here"
                )
        for k in pc:
            if k not in ("data_name", "data_files", "split", "component_kwargs", "data_dir"):
                imp.skip(f"{load_key}.{k}", "a data option with no equivalent here")
    else:
        load_key, load = _unwrap_params(
            r, imp, dc, f"{dkey}.load_dataset_config", "a custom dataset loader: data_prep reads data_files itself"
        )
        pre_key, pre = _unwrap_params(
            r,
            imp,
            dc,
            f"{dkey}.pre_process_data_config",
            "a custom pre-processing function: data_prep renders the template itself",
        )
        for k in load:
            if k not in ("data_name", "data_files", "split", "data_dir"):
                imp.skip(f"{load_key}.{k}", "a dataset-loading option with no equivalent here")
    _load(load, load_key, r, imp, folder, "data.path")
    _pre(pre, pre_key, r, imp)


def _load(load: dict, key: str, r: _Reader, imp: OliveImport, folder: Path, ours: str) -> None:
    name = load.get("data_name")
    if name is not None:
        name = r.string(name, f"{key}.data_name")
        if name.lower() not in DATA_FORMATS:
            r.fail(
                f"{key}.data_name",
                f"{name!r}: a Hugging Face hub dataset is not downloaded here; "
                "save it as JSON Lines or CSV and give data_files (data_name json or csv)",
            )
        if ours == "data.path":
            imp.set("data.format", DATA_FORMATS[name.lower()], f"{key}.data_name")
        else:
            imp.note(f"{key}.data_name", f"{ours} is read as {name}")
    base = folder
    if "data_dir" in load:
        base = Path(
            _resolve_path(r.string(load["data_dir"], f"{key}.data_dir"), folder, r, f"{key}.data_dir")
        ).resolve()
        imp.note(f"{key}.data_dir", f"the folder data_files are relative to ({ours})")
    if "data_files" not in load:
        r.fail(f"{key}.data_files", "missing: the data file to train on")
    files = r.strings(load["data_files"], f"{key}.data_files")
    imp.set(
        ours,
        _resolve_path(files[0], base, r, f"{key}.data_files"),
        f"{key}.data_files" if isinstance(load["data_files"], str) else f"{key}.data_files[0]",
    )
    if isinstance(load["data_files"], list):
        imp.note(f"{key}.data_files", ours)
        for i in range(1, len(files)):
            imp.skip(f"{key}.data_files[{i}]", f"one file is read; concatenate the files into {files[0]}")
    if "split" in load:
        split = r.string(load["split"], f"{key}.split")
        if split == "train":
            imp.note(f"{key}.split", "the whole file; data_prep makes the held-out split (data.eval_fraction)")
        else:
            imp.skip(f"{key}.split", f"{split!r}: the whole file is read; data_prep makes the held-out split")


def _pre(pre: dict, key: str, r: _Reader, imp: OliveImport) -> None:
    for k, v in pre.items():
        k_key = f"{key}.{k}"
        if k == "text_cols":
            imp.set("data.text_cols", r.strings(v, k_key), k_key)
        elif k == "text_template":
            template = r.string(v, k_key)
            imp.set("data.prompt_format", "template", k_key)
            imp.set("data.text_template", template, k_key)
            fields = re.findall(r"{(\w+)}", template)
            if not fields:
                r.fail(k_key, "has no {column} placeholder")
            imp.set("data.label_col", fields[-1], k_key)  # the completion: what follows the prompt
            if "text_cols" not in pre:
                imp.set("data.text_cols", list(dict.fromkeys(fields)), k_key)
        elif k in ("corpus_strategy", "strategy"):
            strategy = r.string(v, k_key)
            if strategy not in ("join", "line-by-line", "line_by_line", "join-random"):
                r.fail(k_key, f"{strategy!r}: expected join or line-by-line")
            imp.set("train.packing", strategy.startswith("join"), k_key)
        elif k in ("source_max_len", "max_seq_len"):
            imp.set("train.max_seq_len", r.integer(v, k_key), k_key)
        elif k == "dataset_type":
            if r.string(v, k_key) != "corpus":
                r.fail(k_key, f"{v!r}: only corpus text datasets are imported")
            imp.note(k_key, "text rendered from text_template (data.prompt_format=template)")
        elif k == "pad_to_max_len":
            r.boolean(v, k_key)
            imp.skip(k_key, "batches are padded to their longest row, or packed (train.packing); never to max length")
        elif k == "use_attention_mask":
            r.boolean(v, k_key)
            imp.skip(k_key, "an attention mask is always used (it keeps packed examples apart)")
        else:
            imp.skip(k_key, "a pre-processing option with no equivalent here")


def _eval_data(ref, key: str, r: _Reader, imp: OliveImport, data_configs: dict, used: set, folder: Path) -> None:
    dkey, dc = _data_config(ref, key, r, data_configs, used)
    imp.note(key, f"the held-out data ({dkey}): data.eval_path")
    if "name" in dc:
        imp.note(f"{dkey}.name", "the held-out data")
    if "type" in dc:
        imp.note(f"{dkey}.type", "data_prep reads the file itself")
    if "params_config" in dc:
        load, load_key = r.obj(dc["params_config"], f"{dkey}.params_config"), f"{dkey}.params_config"
    else:
        load_key = f"{dkey}.load_dataset_config"
        load = r.obj(dc.get("load_dataset_config"), load_key)
        if "params" in load:
            load_key += ".params"
            load = r.obj(load["params"], load_key)
    _load(
        {k: v for k, v in load.items() if k in ("data_name", "data_files", "split", "data_dir")},
        load_key,
        r,
        imp,
        folder,
        "data.eval_path",
    )


def _data_configs_unused(data_configs: dict, used: set, imp: OliveImport) -> None:
    for name, (dkey, _dc) in data_configs.items():
        if name not in used:
            imp.skip(dkey, f"data config {name!r} is not the training or held-out data of the LoRA pass")


def _builder(conf: dict, key: str, r: _Reader, imp: OliveImport) -> None:
    for k, v in conf.items():
        k_key = f"{key}.{k}"
        if k == "precision":
            precision = r.string(v, k_key).lower()
            if precision not in ("int4", "fp16", "fp32"):
                r.fail(k_key, f"{v!r}: expected int4, fp16 or fp32")
            imp.set("onnx.precision", precision, k_key)
        elif k in ("int4_block_size", "int4_accuracy_level"):
            imp.set(f"onnx.{k}", r.integer(v, k_key), k_key)
        elif k == "extra_options":
            opts = r.obj(v, k_key)
            imp.set("onnx.extra_options", {str(a): str(b) for a, b in opts.items()}, k_key)
        else:
            imp.skip(k_key, "a ModelBuilder option with no equivalent here")


def _systems(olive: dict, r: _Reader, imp: OliveImport) -> None:
    engine = r.obj(olive.get("engine"), "engine")
    systems = r.obj(olive.get("systems"), "systems")
    target = _engine_systems(olive, engine, systems, r, imp)
    chosen = target if isinstance(target, str) else (next(iter(systems)) if len(systems) == 1 else None)
    for name, system in systems.items():
        skey = f"systems.{name}"
        system = r.obj(system, skey, optional=False)
        stype = r.string(system.get("type", "LocalSystem"), f"{skey}.type")
        if stype != "LocalSystem":
            imp.skip(skey, f"a {stype} system: run on a cluster with pipeline.py submit --target kfp|azureml|argo")
            continue
        imp.note(f"{skey}.type", "this machine, or the cluster's nodes")
        conf_key, accs = _local_system(system, skey, r, imp)
        for i, acc in enumerate(accs):
            _accelerator(acc, f"{conf_key}.accelerators[{i}]", name, chosen, r, imp)


def _engine_systems(olive: dict, engine: dict, systems: dict, r: _Reader, imp: OliveImport):
    """The target and host systems the engine (or, in older configs, the top level) names;
    returns the target, a system's name or an inline system."""
    target_key = "engine.target" if "target" in engine else "target"
    target = engine.get("target", olive.get("target"))
    host_key = "engine.host" if "host" in engine else "host"
    for key, value in ((target_key, target), (host_key, engine.get("host", olive.get("host")))):
        if value is None:
            continue
        if isinstance(value, str):
            if value not in systems:
                r.fail(key, f"names system {value!r}, which is not in systems ({', '.join(systems) or 'none'})")
            imp.note(
                key,
                f"system {value!r}"
                + (
                    ": runtime.device, onnx.execution_provider"
                    if key == target_key
                    else " runs the workflow; stages run where the runner puts them"
                ),
            )
        else:
            r.obj(value, key)
            imp.skip(key, "an inline system: name one in systems")
    return target


def _local_system(system: dict, skey: str, r: _Reader, imp: OliveImport) -> tuple[str, list]:
    """A LocalSystem's options (under ``config`` in older configs): only its accelerators map;
    returns their key's prefix and the list."""
    conf = system
    conf_key = skey
    if "config" in system:
        conf = r.obj(system["config"], f"{skey}.config")
        conf_key = f"{skey}.config"
    accs = conf.get("accelerators", [])
    if not isinstance(accs, list):
        r.fail(f"{conf_key}.accelerators", f"expected a list, got {_kind(accs)}")
    for k in conf:
        if k not in ("accelerators",) and not (conf is system and k == "type"):
            imp.skip(f"{conf_key}.{k}", "a system option with no equivalent here")
    return conf_key, accs


def _accelerator(acc, akey: str, name: str, chosen: str | None, r: _Reader, imp: OliveImport) -> None:
    """One accelerator: its device (given, or read from its execution providers) sets
    runtime.device and onnx.execution_provider when its system is the target."""
    acc = r.obj(acc, akey, optional=False)
    device = None
    if "device" in acc:
        device = r.string(acc["device"], f"{akey}.device").lower()
        if device not in ("gpu", "cpu"):
            r.fail(f"{akey}.device", f"{acc['device']!r}: expected gpu or cpu")
    providers = (
        r.strings(acc.get("execution_providers", []) or [], f"{akey}.execution_providers")
        if acc.get("execution_providers")
        else []
    )
    unknown = [p for p in providers if p not in _GPU_PROVIDERS | _CPU_PROVIDERS]
    for j, p in enumerate(providers):
        if p in unknown:
            imp.skip(
                f"{akey}.execution_providers[{j}]"
                if isinstance(acc["execution_providers"], list)
                else f"{akey}.execution_providers",
                f"{p}: models are built for cpu or cuda",
            )
    if device is None:
        device = "gpu" if any(p in _GPU_PROVIDERS for p in providers) else "cpu" if providers and not unknown else None
    if name != chosen or device is None:
        if name != chosen:
            imp.skip(akey, f"system {name!r} is not the target")
        return
    ours = "cuda" if device == "gpu" else "cpu"
    src = f"{akey}.device" if "device" in acc else f"{akey}.execution_providers"
    imp.set("runtime.device", ours, src)
    imp.set("onnx.execution_provider", ours, src)
    if "device" in acc and providers and not unknown:
        imp.note(f"{akey}.execution_providers", f"onnx.execution_provider={ours}")
    for k in acc:
        if k not in ("device", "execution_providers"):
            imp.skip(f"{akey}.{k}", "an accelerator option with no equivalent here")


_TOP_NOTES = {
    "cache_dir": "stages cache by content hash in the run folder (pipeline.py run --no-cache to re-run)",
    "output_dir": "artifacts go to the run folder: pipeline.py run --out DIR",
    "output_name": "artifacts go to the run folder: pipeline.py run --out DIR",
    "log_severity_level": "stages log at INFO; pipeline.py --debug for tracebacks",
    "clean_cache": "the cache is by content; a changed input never hits it",
    "evaluate_input_model": "the evaluate stage scores the fine-tuned models (PyTorch and ONNX)",
    "evaluator": "the evaluate stage's accuracy, F1, latency and quality gate replace Olive's evaluators",
    "evaluators": "the evaluate stage's accuracy, F1, latency and quality gate replace Olive's evaluators",
    "search_strategy": "no search: one configuration is trained",
    "packaging_config": "the INT4 model folder is the deliverable (RUN_DIR/promoted.json)",
    "$schema": "the JSON schema reference of the Olive file",
}


def _top_level(olive: dict, imp: OliveImport) -> None:
    engine = olive.get("engine") or {}
    for where, tree in (("engine.", engine), ("", olive)):
        for k in tree:
            if k in _TOP_NOTES:
                imp.skip(f"{where}{k}", _TOP_NOTES[k])
            elif where and k not in ("target", "host"):
                imp.skip(f"engine.{k}", "an Olive engine option with no equivalent here")


def _check_values(imp: OliveImport, r: _Reader) -> None:
    """Validate the mapped values against our schema now, so an error names the Olive key."""
    from pydantic import ValidationError

    from core.config import Config

    try:
        Config.model_validate(imp.tree)
    except ValidationError as err:
        lines = []
        for e in err.errors():
            ours = ".".join(str(p) for p in e["loc"])
            olive_key = imp.origin.get(ours) or next(
                (v for k, v in imp.origin.items() if ours.startswith(k) or k.startswith(ours)), None
            )
            msg = e["msg"].removeprefix("Value error, ")
            where = f"{olive_key} (-> {ours})" if olive_key else ours
            lines.append(
                f"{r.source}: {where}: {msg}"
                + (f" (got {e['input']!r})" if not isinstance(e.get("input"), dict) else "")
            )
        raise UserError("\n".join(lines)) from None


def _as_tree(tree: dict, path: Path) -> dict:
    """An Olive config as our config tree; what is not imported is printed as a warning, by key."""
    import sys

    imp = import_olive_config(tree, path)
    if imp.ignored:
        print(imp.warning(), file=sys.stderr)
    return imp.tree


def _plug() -> None:
    from core.config import OLIVE_IMPORT

    OLIVE_IMPORT.plug(_as_tree)


_plug()
