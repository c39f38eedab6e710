"""The CLI's help and errors, and the config fields' descriptions where users meet them:
--help, the stages' own --help, and the compiled KFP and AzureML parameters."""

from __future__ import annotations

import pytest
import yaml
from helpers import TINY, stage_cli

import pipeline
from components.common.config import Config, describe, flatten
from pipeline import DAG

VERBS = ["run", "compile", "validate", "submit", "status", "schedule", "import-olive", "stages", "runs"]


def test_every_config_field_has_a_description():
    missing = [k for k in flatten(Config()) if not describe(k)]
    assert missing == []


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_has_help_with_examples(verb, capsys):
    with pytest.raises(SystemExit) as e:
        pipeline.main([verb, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "example" in out and f"python pipeline.py {verb}" in out


def test_run_help_lists_every_config_key_with_its_description(capsys):
    with pytest.raises(SystemExit):
        pipeline.main(["run", "--help"])
    out = capsys.readouterr().out
    for key in ("train.lora.r", "data.path", "evaluate.max_int4_drop", "onnx.int4_block_size"):
        assert f"  {key} = " in out and describe(key) in out


def test_top_level_help_says_where_to_start(capsys):
    with pytest.raises(SystemExit):
        pipeline.main(["--help"])
    out = capsys.readouterr().out
    assert "make run" in out and "import-olive" in out


def test_stage_help_shows_descriptions():
    proc = stage_cli("train", "--help")
    assert proc.returncode == 0 and "LoRA rank." in proc.stdout


def test_an_error_is_one_line_and_a_hint(tmp_path, capsys):
    assert pipeline.main(["run", "--config", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"error: config file not found: {tmp_path / 'nope.yaml'}",
        "hint: python pipeline.py run --help has the options and examples; --debug shows the traceback",
    ]


def test_debug_shows_the_traceback(tmp_path):
    from components.common.errors import UserError

    with pytest.raises(UserError):
        pipeline.main(["--debug", "run", "--config", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "r")])


def test_compiled_parameters_carry_the_descriptions(tmp_path):
    from components.common.config import load_config
    from targets import azureml, kfp

    cfg = load_config(TINY)
    path = kfp.compile_pipeline(DAG, cfg, tmp_path / "kfp.yaml")
    ir = next(yaml.safe_load_all(path.read_text()))
    train = ir["components"]["comp-train"]["inputDefinitions"]["parameters"]
    assert train["train_lora_r"]["description"] == "LoRA rank. (--train.lora.r)"
    root = ir["root"]["inputDefinitions"]["parameters"]
    assert root["data_path"]["description"].startswith(describe("data.path"))
    assert (
        ir["components"]["comp-evaluate"]["outputDefinitions"]["artifacts"]["metrics_report"]["artifactType"][
            "schemaTitle"
        ]
        == "system.HTML"
    )

    azureml.compile_pipeline(DAG, cfg, tmp_path / "az")
    comp = yaml.safe_load((tmp_path / "az" / "components" / "train.yml").read_text())
    assert comp["inputs"]["train_lora_r"]["description"] == "LoRA rank. (--train.lora.r)"
