"""Every field of the config schema is read by the stage that declares it, or is listed here as
read by the engines' compilers only, or only on a branch this machine cannot take, with the reason.

A field that is declared and passed but read by nothing (as model.revision was: in the cache key
and the lineage, never given to the loader) fails here. Reads are traced (tests/trace/config_trace.py)
in the stage processes of the session's tiny run, plus runs of the branches that run does not take
(onnx_build's INT4 search among them).
"""

from __future__ import annotations

import config_trace
from helpers import HUB_ID, TINY, stage_cli

from core.config import Config, flatten, load_config
from engines import base
from pipeline import DAG
from stages.registry import STAGES

# Fields no stage declares: the compilers read them (checked below, by tracing a compile).
ENGINE_ONLY = {
    "name": "the pipeline and run names on the engines",
    "images.registry": "the stage images' repository",
    "images.tag": "the stage images' tag",
    "images.gpu_tag_suffix": "the tag of the CUDA images",
    "targets": "per-engine settings (engines/base.py)",
}

# Declared by a stage but read there only on a branch no test machine takes; (stage, field): why.
UNREAD_HERE = {
    ("data_prep", "model.allow_pickle"): "data_prep loads only the tokenizer, never weights; "
    "it declares the model section whole",
    ("adapter_build", "model.revision"): "read for a hub id only (adapter_base.base_folder: the snapshot at that "
    "revision); the tests' base is a built-in tiny model",
}

# Sections a stage reads outside its view, from a section object of its own, never the run's;
# (stage, section): why.
OWN_SECTION = {
    ("onnx_build", "model"): "the search scores the merged model folder, loaded as core.models.source_of's "
    "ModelConfig of that folder (the schema's defaults)",
    (
        "evaluate",
        "model",
    ): "scores the merged model folder, loaded as core.models.source_of's ModelConfig of that folder",
}


def _stage_reads(tiny_run, multi, hub, tmp_path) -> dict[str, set[str]]:
    extra = tmp_path / "reads"
    # data_prep reads the model section only with the chat template; the hub's v2 has one.
    proc = stage_cli(
        "data_prep",
        *("--dataset", str(tmp_path / "ds"), "--data.prompt_format", "chat_template"),
        *("--model.base", HUB_ID, "--model.revision", "v2", "--data.max_rows", "60"),
        env={**hub, **config_trace.env(extra)},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    # train reads train.fused_lora only for a 4-bit base, and train.lora.dropout_masks only fused.
    proc = stage_cli(
        "train",
        *("--dataset", str(tiny_run / "data_prep" / "dataset"), "--adapter", str(tmp_path / "adapter")),
        *("--model.base", "tiny-random:phi3", "--train.quantization", "nf4", "--train.max_steps", "1"),
        *("--train.fused_lora", "on"),
        *("--train.batch_size", "2", "--train.max_seq_len", "32", "--runtime.threads", "1"),
        env=config_trace.env(extra),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    # onnx_build reads onnx.search only with the search on: a one-build space (sensitive_layers=[1]:
    # the sensitivity pass and its calibration slice run too).
    space = {"enabled": "true", "algo_configs": "[rtn]", "mixed_precision": '[""]', "block_sizes": "[32]"}
    space |= {"sensitive_layers": "[1]", "threads": "[1]", "max_samples": "4", "latency_samples": "1"}
    space |= {"batch_size": "2", "max_new_tokens": "2", "calibration_samples": "2", "max_accuracy_drop": "1"}
    proc = stage_cli(
        "onnx_build",
        *("--model", str(tiny_run / "merge" / "model"), "--dataset", str(tiny_run / "data_prep" / "dataset")),
        *("--onnx_model", str(tmp_path / "onnx_model"), "--runtime.threads", "1"),
        *(x for k, v in space.items() for x in (f"--onnx.search.{k}", v)),
        env={"SLM_CACHE_DIR": str(tmp_path / "cache"), **config_trace.env(extra)},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    reads = config_trace.collect(tiny_run.parent / "reads")
    # the multi-task stages (adapter_build, evaluate_tasks) in the session's two-task run
    for who, keys in [*config_trace.collect(multi["root"] / "reads").items(), *config_trace.collect(extra).items()]:
        reads.setdefault(who, set()).update(keys)
    return reads


def test_every_stage_reads_every_field_it_declares(tiny_run, multi, hub, tmp_path):
    reads = _stage_reads(tiny_run, multi, hub, tmp_path)
    problems = []
    for name, spec in STAGES.items():
        for key in spec.params(Config(), every=True):  # a default-off section's keys too
            listed = (name, key) in UNREAD_HERE
            if key not in reads.get(name, set()) and not listed:
                problems.append(f"{name} declares {key} but never reads it")
            if key in reads.get(name, set()) and listed:
                problems.append(f"{name} reads {key}: drop it from UNREAD_HERE")
        # and nothing else: no section its view leaves out, by any route (a Config() of its own)
        outside = {k.split(".")[0] for k in reads.get(name, set())} - set(spec.sections)
        for section in sorted(outside - {s for n, s in OWN_SECTION if n == name}):
            problems.append(f"{name} reads {section}, outside its view {spec.view.__name__}{spec.sections}")
        for section in sorted({s for n, s in OWN_SECTION if n == name} - outside):
            problems.append(f"{name} no longer reads {section}: drop it from OWN_SECTION")
    assert not problems, "\n".join(problems)


def test_every_field_is_a_stage_parameter_or_engine_only():
    declared = {k for spec in STAGES.values() for k in spec.params(Config(), every=True)}
    fields = set(flatten(Config()))
    assert fields - declared == set(ENGINE_ONLY)
    assert not declared & set(ENGINE_ONLY)


def test_the_compilers_read_the_engine_only_fields(tmp_path):
    cfg = load_config(TINY, ["runtime.device=cuda"])
    reads: set[str] = set()
    stop = config_trace.install(reads)
    try:
        for engine in base.names():
            target = base.get(engine)
            (tmp_path / engine).mkdir()
            target.compile(DAG, cfg, tmp_path / engine / target.default_out)
    finally:
        stop()
    assert set(ENGINE_ONLY) <= reads, f"never read by a compiler: {sorted(set(ENGINE_ONLY) - reads)}"
