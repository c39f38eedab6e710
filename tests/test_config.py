"""The one config schema: defaults that run, precise errors, overrides, Olive import."""

from __future__ import annotations

from pathlib import Path

import pytest

import cli.olive  # noqa: F401 - plugs the Olive import into load_config, as pipeline.py does
from core.config import Config, load_config
from core.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["default", "tiny-phi3", "phi3-mini"])
def test_shipped_configs_load(name):
    cfg = load_config(ROOT / "configs" / f"{name}.yaml")
    assert cfg.model.trust_remote_code is False


def test_defaults_are_the_embedded_job():
    cfg = Config()
    assert cfg.model.base == "embedded:smollm2-135m-instruct" and cfg.data.path == "data/tone.jsonl"
    # One set of defaults: what `run --help` lists (the schema's) is what `make run` runs.
    assert load_config(ROOT / "configs" / "default.yaml") == cfg
    assert load_config(None) == cfg


def test_run_help_shows_the_default_jobs_values():
    from helpers import run_cli

    proc = run_cli(str(ROOT / "pipeline.py"), "run", "--help")
    assert proc.returncode == 0, proc.stderr
    shown = dict(
        line.strip().split(" = ", 1) for line in proc.stdout.splitlines() if line.startswith("  ") and " = " in line
    )
    from core.config import flatten

    for key, value in flatten(load_config(ROOT / "configs" / "default.yaml")).items():
        if key != "targets":
            assert shown[key] == repr(value), key


def test_a_text_template_alone_means_the_template_format():
    assert Config().data.prompt_format == "chat_template"
    cfg = load_config(None, ["data.text_template=Q: {phrase} A: {tone}"])
    assert cfg.data.prompt_format == "template"
    cfg = load_config(None, ["data.text_template=Q: {phrase} A: {tone}", "data.prompt_format=chat_template"])
    assert cfg.data.prompt_format == "chat_template"


def test_set_overrides_are_typed():
    cfg = load_config(None, ["train.lora.r=4", "train.lora.target_modules=[q_proj, v_proj]", "data.eval_path=x.jsonl"])
    assert cfg.train.lora.r == 4 and cfg.train.lora.target_modules == ["q_proj", "v_proj"]
    assert cfg.data.eval_path == "x.jsonl"


def test_errors_name_the_key(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("train:\n  lora:\n    r: -3\n  max_step: 10\n")
    with pytest.raises(UserError) as e:
        load_config(bad)
    assert "train.lora.r: Input should be greater than 0" in str(e.value)
    assert "train.max_step: unknown key" in str(e.value)


def test_template_must_contain_the_label():
    with pytest.raises(UserError, match="label placeholder"):
        load_config(None, ["data.text_template=Q: {phrase}"])


def test_olive_config_is_imported():
    cfg = load_config(ROOT / "tests" / "data" / "olive-phi3.json")
    assert cfg.model.base == "microsoft/Phi-3-mini-4k-instruct"
    assert (
        cfg.train.quantization == "nf4"
        and cfg.train.lora.r == 64
        and cfg.train.lora.target_modules == ["o_proj", "qkv_proj"]
    )
    assert cfg.train.packing is True and cfg.train.max_seq_len == 1024 and cfg.train.grad_accum == 4
    assert cfg.data.label_col == "tone" and cfg.data.eval_fraction == 0.3
    assert cfg.onnx.precision == "int4" and cfg.onnx.execution_provider == "cuda"
