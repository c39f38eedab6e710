"""Olive config import, both generations of Olive's keys: every key mapped or listed, one-line
errors for malformed files, `pipeline.py import-olive`, and a CookBook config run end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from helpers import ROOT, run_cli, summary

import pipeline
from cli.olive import _leaves, import_olive_config
from core.config import load_config
from core.errors import UserError

COOKBOOK = ROOT / "tests" / "data" / "olive-cookbook" / "olive-config.json"  # older keys (Phi-3 CookBook)
CURRENT = ROOT / "tests" / "data" / "olive-current.json"  # current keys (HfModel, load_dataset_config, r/alpha)


@pytest.fixture
def cookbook(tmp_path) -> Path:
    """The CookBook layout: olive-config.json with its data file beside it in dataset/."""
    folder = tmp_path / "cookbook"
    (folder / "dataset").mkdir(parents=True)
    shutil.copy(COOKBOOK, folder / "olive-config.json")
    shutil.copy(ROOT / "data" / "tone.jsonl", folder / "dataset" / "dataset-classification.json")
    return folder / "olive-config.json"


def accounted(imp, olive: dict) -> list[str]:
    keys = set(imp.mapped) | set(imp.ignored)
    return [
        leaf
        for leaf in _leaves(olive, "")
        if not any(leaf == k or leaf.startswith(k + ".") or leaf.startswith(k + "[") for k in keys)
    ]


def test_older_generation_maps_base_model_dataset_and_every_key(cookbook):
    olive = json.loads(cookbook.read_text())
    imp = import_olive_config(olive, cookbook)
    assert accounted(imp, olive) == []  # every leaf key: mapped or listed as not imported
    cfg = load_config(cookbook)
    assert cfg.model.base == "microsoft/Phi-3-mini-4k-instruct" and cfg.model.trust_remote_code is True
    # the data file resolves against the Olive config's folder, as Olive does
    assert Path(cfg.data.path) == cookbook.parent / "dataset" / "dataset-classification.json"
    assert cfg.data.text_cols == ["phrase", "tone"] and cfg.data.label_col == "tone"
    assert cfg.data.text_template == "<|user|>\n{phrase}<|end|>\n<|assistant|>\n{tone}<|end|>"
    assert cfg.data.eval_fraction == 0.3 and cfg.data.seed == 42
    t = cfg.train
    assert (t.quantization, t.lora.r, t.lora.alpha, t.lora.dropout) == ("none", 64, 64, 0.1)
    assert t.lora.target_modules == ["o_proj", "qkv_proj"]
    assert (t.packing, t.max_seq_len, t.seed, t.batch_size, t.grad_accum) == (True, 1024, 0, 1, 4)
    assert (t.learning_rate, t.max_steps, t.gradient_checkpointing) == (0.0001, 150, "off")
    assert cfg.evaluate.batch_size == 1
    assert (cfg.onnx.precision, cfg.onnx.execution_provider, cfg.runtime.device) == ("int4", "cuda", "cuda")
    assert imp.mapped["input_model.config.hf_config.model_name"] == "model.base"
    assert imp.mapped["data_configs[0].params_config.data_files"] == "data.path"
    assert imp.mapped["passes.merge.type"] == "merge stage" and imp.mapped["passes.mb.type"] == "onnx_build stage"
    assert set(imp.ignored) == {
        "$schema",
        "engine.cache_dir",
        "engine.output_dir",
        "data_configs[0].params_config.component_kwargs.pre_process_data.pad_to_max_len",
        "data_configs[0].params_config.component_kwargs.pre_process_data.use_attention_mask",
        "passes.lora.config.training_args.evaluation_strategy",
        "passes.lora.config.training_args.adam_beta2",
        "passes.lora.config.training_args.max_grad_norm",
    }


def test_current_generation_keys():
    olive = json.loads(CURRENT.read_text())
    imp = import_olive_config(olive, CURRENT)
    assert accounted(imp, olive) == []
    cfg = load_config(CURRENT)
    assert cfg.model.base == "microsoft/Phi-3-mini-4k-instruct" and cfg.model.revision == "main"
    assert cfg.data.path == "data/tone.jsonl"  # "../../data/tone.jsonl" from tests/data/
    assert cfg.data.text_template.startswith("### Text: {phrase}") and cfg.data.label_col == "tone"
    assert (cfg.train.lora.r, cfg.train.lora.alpha, cfg.train.lora.target_modules) == (8, 16, None)
    assert (cfg.train.packing, cfg.train.max_seq_len, cfg.train.batch_size, cfg.train.log_every) == (False, 128, 4, 5)
    assert (cfg.onnx.precision, cfg.runtime.device, cfg.data.eval_fraction) == ("fp32", "cpu", 0.2)
    assert set(imp.ignored) == {"cache_dir", "output_dir"}


def test_qlora_and_unknown_passes_are_reported():
    olive = json.loads(CURRENT.read_text())
    olive["passes"]["lora"][0]["type"] = "QLoRA"
    olive["passes"]["lora"][0]["quant_type"] = "nf4"
    olive["passes"]["convert"] = {"type": "OnnxConversion", "target_opset": 17}
    olive["passes"]["lora"].append({"type": "LoRA", "r": 32})
    imp = import_olive_config(olive, CURRENT)  # its data path is relative to its own folder
    assert imp.tree["train"]["quantization"] == "nf4"
    assert "OnnxConversion" in imp.ignored["passes.convert"]
    assert "passes.lora[1]" in imp.ignored and imp.tree["train"]["lora"]["r"] == 8


def test_import_olive_writes_a_config_with_the_header(cookbook, tmp_path, capsys):
    out = tmp_path / "configs" / "phi3-tone.yaml"
    assert pipeline.main(["import-olive", str(cookbook), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert f"wrote {out}" in captured.out
    assert "passes.lora.config.training_args.adam_beta2" in captured.err  # the terminal lists what is not imported
    text = out.read_text()
    header = [line for line in text.splitlines() if line.startswith("#")]
    assert any("input_model.config.hf_config.model_name -> model.base" in line for line in header)
    assert any("data_configs[0].params_config.data_files -> data.path" in line for line in header)
    assert any("NOT imported" in line for line in header)
    assert any("engine.cache_dir:" in line for line in header)
    written = load_config(out)
    assert written == load_config(cookbook)  # the written YAML is the same config as the Olive file
    assert yaml.safe_load(text)["data"]["path"] == str(cookbook.parent / "dataset" / "dataset-classification.json")


def test_compile_takes_an_olive_config(tmp_path, capsys):
    out = tmp_path / "wf.yaml"
    assert pipeline.main(["compile", "--target", "argo", "--config", str(CURRENT), "--out", str(out)]) == 0
    assert "microsoft/Phi-3-mini-4k-instruct" in out.read_text()
    assert "cache_dir" in capsys.readouterr().err


MALFORMED = [
    (
        "eval_dataset_size",
        lambda o: o["passes"]["lora"]["config"].update(eval_dataset_size="thirty percent"),
        "passes.lora.config.eval_dataset_size: expected a number",
    ),
    ("passes list of numbers", lambda o: o.update(passes=[1, 2]), "passes[0]: expected an object"),
    (
        "string input_model",
        lambda o: o.update(input_model="microsoft/Phi-3-mini-4k-instruct"),
        "input_model: expected an object",
    ),
    ("passes a string", lambda o: o.update(passes="lora"), "passes: expected an object"),
    (
        "lora_r a string",
        lambda o: o["passes"]["lora"]["config"].update(lora_r="sixty-four"),
        "passes.lora.config.lora_r: expected an integer",
    ),
    (
        "lora_r negative",
        lambda o: o["passes"]["lora"]["config"].update(lora_r=-4),
        "passes.lora.config.lora_r (-> train.lora.r): Input should be greater than 0",
    ),
    (
        "unknown data config",
        lambda o: o["passes"]["lora"]["config"].update(train_data_config="nope"),
        "passes.lora.config.train_data_config: names 'nope'",
    ),
    ("data_configs an object of strings", lambda o: o.update(data_configs="dataset"), "data_configs: expected a list"),
    (
        "data_files a number",
        lambda o: o["data_configs"][0]["params_config"].update(data_files=3),
        "data_configs[0].params_config.data_files: expected a string or a non-empty list",
    ),
    (
        "training_args a list",
        lambda o: o["passes"]["lora"]["config"].update(training_args=[1]),
        "passes.lora.config.training_args: expected an object",
    ),
    (
        "max_steps a float",
        lambda o: o["passes"]["lora"]["config"]["training_args"].update(max_steps=1.5),
        "passes.lora.config.training_args.max_steps: expected an integer",
    ),
    (
        "hf_config missing model_name",
        lambda o: o["input_model"]["config"]["hf_config"].pop("model_name"),
        "input_model.config.hf_config.model_name: missing",
    ),
    (
        "unknown model type",
        lambda o: o["input_model"].update(type="ONNXModel"),
        "input_model.type: 'ONNXModel' is not imported",
    ),
    ("target names no system", lambda o: o["engine"].update(target="cloud"), "engine.target: names system 'cloud'"),
    (
        "hub dataset",
        lambda o: o["data_configs"][0]["params_config"].update(data_name="nampdn-ai/tiny-codes"),
        "params_config.data_name: 'nampdn-ai/tiny-codes': a Hugging Face hub dataset",
    ),
    ("precision", lambda o: o["passes"]["mb"]["config"].update(precision="int2"), "passes.mb.config.precision: 'int2'"),
    (
        "accelerators an object",
        lambda o: o["systems"]["local_system"]["config"].update(accelerators={"device": "gpu"}),
        "systems.local_system.config.accelerators: expected a list",
    ),
    (
        "trust_remote_code a string",
        lambda o: o["input_model"]["config"]["hf_config"]["from_pretrained_args"].update(trust_remote_code="yes"),
        "from_pretrained_args.trust_remote_code: expected true or false",
    ),
    ("no LoRA pass", lambda o: o["passes"].pop("lora"), "passes: no LoRA or QLoRA pass"),
    (
        "strategy",
        lambda o: o["data_configs"][0]["params_config"]["component_kwargs"]["pre_process_data"].update(
            corpus_strategy="zip"
        ),
        "pre_process_data.corpus_strategy: 'zip'",
    ),
]


@pytest.mark.parametrize("mutate,expected", [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_olive_config_is_one_error_naming_the_key(tmp_path, mutate, expected):
    olive = json.loads(COOKBOOK.read_text())
    mutate(olive)
    path = tmp_path / "olive.json"
    path.write_text(json.dumps(olive))
    with pytest.raises(UserError) as e:
        load_config(path)
    assert expected in str(e.value)


@pytest.mark.parametrize("verb", ["run", "compile", "import-olive"])
def test_malformed_olive_config_on_the_cli_is_one_line_without_traceback(tmp_path, capsys, verb):
    olive = json.loads(COOKBOOK.read_text())
    olive["passes"] = [1, 2]
    path = tmp_path / "olive.json"
    path.write_text(json.dumps(olive))
    args = {
        "run": ["run", "--config", str(path), "--out", str(tmp_path / "r")],
        "compile": ["compile", "--target", "argo", "--config", str(path), "--out", str(tmp_path / "w.yaml")],
        "import-olive": ["import-olive", str(path), "--out", str(tmp_path / "c.yaml")],
    }[verb]
    assert pipeline.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "passes[0]: expected an object" in err
    lines = err.strip().splitlines()
    assert "Traceback" not in err and len(lines) == 2 and lines[1].startswith(f"hint: python pipeline.py {verb} --help")


def test_cookbook_config_runs_with_the_model_substituted(cookbook, tmp_path):
    """The done-criterion: the CookBook's config, its data beside it, runs on this machine with
    `--set model.base=tiny-random:phi3` (and CPU, few steps)."""
    out = tmp_path / "run"
    sets = [
        "model.base=tiny-random:phi3",
        "runtime.device=cpu",
        "onnx.execution_provider=cpu",
        "runtime.threads=1",
        "train.max_steps=2",
        "data.max_rows=120",
        "evaluate.max_samples=8",
        "evaluate.max_new_tokens=4",
        "merge.parity_prompts=1",
        "evaluate.min_accuracy=0",  # a random-init model: the default job's 85 % gate is not for it
    ]
    proc = run_cli(
        str(ROOT / "pipeline.py"),
        "run",
        "--config",
        str(cookbook),
        "--out",
        str(out),
        *[x for s in sets for x in ("--set", s)],
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "passes.lora.config.training_args.adam_beta2" in proc.stderr  # the warning, on the terminal
    assert f"report: {out / 'evaluate' / 'metrics' / 'report.html'}" in proc.stdout
    assert summary(out)["status"] == "ok"
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["data"]["path"] == str(cookbook.parent / "dataset" / "dataset-classification.json")
    adapter = json.loads((out / "train" / "adapter" / "adapter_config.json").read_text())
    assert (
        adapter["r"] == 64
        and adapter["lora_alpha"] == 64
        and sorted(adapter["target_modules"]) == ["o_proj", "qkv_proj"]
    )
    stats = json.loads((out / "data_prep" / "dataset" / "stats.json").read_text())
    assert sorted(stats["labels"]) == ["fear", "joy", "sadness", "surprise"]


def test_eval_data_config_params_blocks_and_named_data_configs(tmp_path):
    """An eval_data_config becomes data.eval_path; options under "params" (Olive 0.7/0.8) and
    data_configs keyed by name (Olive 0.3) are read too; every key is accounted for."""
    (tmp_path / "d").mkdir()
    olive = {
        "input_model": {"type": "HfModel", "model_path": "microsoft/Phi-3-mini-4k-instruct"},
        "data_configs": {
            "train": {
                "type": "HuggingfaceContainer",
                "load_dataset_config": {
                    "params": {"data_name": "json", "data_files": "d/train.jsonl", "split": "train"}
                },
                "pre_process_data_config": {
                    "params": {
                        "corpus_strategy": "join",
                        "source_max_len": 64,
                        "text_template": "Q: {phrase}\nA: {tone}",
                    }
                },
            },
            "held_out": {
                "type": "HuggingfaceContainer",
                "load_dataset_config": {"data_name": "json", "data_files": "d/eval.jsonl"},
            },
            "unused": {"type": "HuggingfaceContainer", "load_dataset_config": {"data_files": "x.json"}},
        },
        "passes": {"lora": {"type": "LoRA", "r": 4, "train_data_config": "train", "eval_data_config": "held_out"}},
    }
    imp = import_olive_config(olive, tmp_path / "olive.json")
    assert accounted(imp, olive) == []
    data = imp.tree["data"]
    assert (
        Path(data["path"]) == tmp_path / "d" / "train.jsonl"
        and Path(data["eval_path"]) == tmp_path / "d" / "eval.jsonl"
    )
    assert data["text_template"] == "Q: {phrase}\nA: {tone}" and imp.tree["train"]["packing"] is True
    assert imp.tree["train"]["max_seq_len"] == 64 and "data_configs.unused" in imp.ignored
