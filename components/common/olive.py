"""Import a Microsoft Olive config (the Phi-3 fine-tuning recipe's JSON) into our schema.

Olive's LoRA/QLoRA -> MergeAdapterWeights -> ModelBuilder chain maps onto our stages.
Everything mapped is listed; anything we do not map is reported by key, never silently
dropped, so a user sees what changed.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

from .errors import UserError

log = logging.getLogger("slm")


def import_olive(olive: dict, source: Path | str = "olive config") -> dict:
    tree: dict = {"data": {}, "model": {}, "train": {"lora": {}}, "onnx": {}, "runtime": {}}
    ignored: list[str] = []

    model = olive.get("input_model", {})
    if "model_path" in model:
        tree["model"]["base"] = model["model_path"]
    if model.get("load_kwargs", {}).get("trust_remote_code"):
        tree["model"]["trust_remote_code"] = True

    data_configs = {d.get("name"): d for d in olive.get("data_configs", [])}
    passes = olive.get("passes", {})
    if isinstance(passes, list):
        passes = {p.get("type", str(i)): p for i, p in enumerate(passes)}
    for name, p in passes.items():
        kind = str(p.get("type", "")).lower()
        conf = {**p.get("config", {}), **{k: v for k, v in p.items() if k not in ("type", "config")}}
        if kind in ("lora", "qlora"):
            _lora(conf, kind, tree, data_configs, ignored, name)
        elif kind == "modelbuilder":
            if "precision" in conf:
                tree["onnx"]["precision"] = str(conf["precision"]).lower()
            for ours, theirs in (("int4_block_size", "int4_block_size"), ("int4_accuracy_level", "int4_accuracy_level")):
                if theirs in conf:
                    tree["onnx"][ours] = conf[theirs]
        elif kind != "mergeadapterweights":
            ignored.append(f"passes.{name} (type {p.get('type')})")

    for system in (olive.get("systems") or {}).values():
        for acc in system.get("accelerators", []) or system.get("config", {}).get("accelerators", []):
            if str(acc.get("device", "")).lower() == "gpu":
                tree["onnx"]["execution_provider"] = "cuda"
                tree["runtime"]["device"] = "cuda"
    if ignored:
        log.warning("%s: not imported: %s", source, ", ".join(ignored))
    return {k: v for k, v in tree.items() if v and v != {"lora": {}}}


def _lora(conf: dict, kind: str, tree: dict, data_configs: dict, ignored: list, name: str) -> None:
    lora, train, data = tree["train"]["lora"], tree["train"], tree["data"]
    if kind == "qlora":
        train["quantization"] = "nf4"
    for ours, theirs in (("r", "lora_r"), ("r", "r"), ("alpha", "lora_alpha"), ("alpha", "alpha"),
                         ("dropout", "lora_dropout"), ("target_modules", "target_modules")):
        if theirs in conf:
            lora[ours] = conf[theirs]
    if 0 < float(conf.get("eval_dataset_size", 0) or 0) < 1:
        data["eval_fraction"] = conf["eval_dataset_size"]
    args = conf.get("training_args", {})
    for ours, theirs in (("seed", "seed"), ("batch_size", "per_device_train_batch_size"),
                         ("grad_accum", "gradient_accumulation_steps"), ("learning_rate", "learning_rate"),
                         ("max_steps", "max_steps"), ("weight_decay", "weight_decay"), ("warmup_steps", "warmup_steps")):
        if theirs in args and args[theirs] not in (None, -1):
            train[ours] = args[theirs]
    dc_name = conf.get("train_data_config")
    dc = data_configs.get(dc_name) if isinstance(dc_name, str) else dc_name
    if dc_name and dc is None:
        raise UserError(f"passes.{name}.train_data_config names {dc_name!r}, which is not in data_configs")
    if dc:
        files = dc.get("load_dataset_config", {}).get("data_files")
        if files:
            data["path"] = files[0] if isinstance(files, list) else files
        pre = dc.get("pre_process_data_config", {})
        if "text_cols" in pre:
            data["text_cols"] = pre["text_cols"]
        if "text_template" in pre:
            data["prompt_format"] = "template"
            data["text_template"] = pre["text_template"]
            fields = re.findall(r"{(\w+)}", pre["text_template"])
            if fields:
                data["label_col"] = fields[-1]
                data.setdefault("text_cols", sorted(set(fields), key=fields.index))
        if pre.get("corpus_strategy") == "join" or pre.get("strategy") == "join":
            train["packing"] = True
        for key in ("source_max_len", "max_seq_len"):
            if key in pre:
                train["max_seq_len"] = pre[key]
