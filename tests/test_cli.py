"""The CLI's help and errors, and the config fields' descriptions where users meet them:
--help, the stages' own --help, and the compiled KFP and AzureML parameters."""

from __future__ import annotations

import subprocess

import pytest
import yaml
from helpers import ROOT, TINY, stage_cli

import pipeline
from core.config import Config, describe, flatten
from pipeline import DAG

VERBS = ["run", "compile", "validate", "submit", "status", "schedule", "import-olive", "stages", "runs", "tune-int4"]


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
    from core.errors import UserError

    with pytest.raises(UserError):
        pipeline.main(["--debug", "run", "--config", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "r")])


def test_compiled_parameters_carry_the_descriptions(tmp_path):
    from core.config import load_config
    from engines import azureml, kfp

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


# ------------------------------------------------------------------------------------------
# Errors: --set blamed on --set, the nearest known key, files that are no pipeline


def _error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]


def test_set_errors_name_set_and_suggest_the_nearest_key(tmp_path, capsys):
    argv = ["compile", "--target", "kfp", "--config", "configs/default.yaml", "--out", str(tmp_path / "k.yaml")]
    assert pipeline.main([*argv, "--set", "train.lora.rr=8"]) == 2
    assert _error_lines(capsys) == ["error: --set train.lora.rr: unknown key; did you mean train.lora.r?"]
    assert pipeline.main([*argv, "--set", "trainer.lr=1"]) == 2
    assert _error_lines(capsys) == ["error: --set trainer: unknown key; did you mean train?"]
    assert pipeline.main([*argv, "--set", "train.lora.r=-1"]) == 2
    assert _error_lines(capsys) == ["error: --set train.lora.r: Input should be greater than 0 (got -1)"]
    assert pipeline.main([*argv, "--set", "targets.kfp.shedule=0 3 * * 1"]) == 2
    assert _error_lines(capsys) == ["error: --set targets.kfp.shedule: unknown key; did you mean targets.kfp.schedule?"]
    assert not (tmp_path / "k.yaml").exists()


def test_file_errors_name_the_file_and_suggest_the_nearest_key(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  max_step: 3\n  lora:\n    rr: 8\ntargets:\n  kfp:\n    retrys: 2\n")
    assert pipeline.main(["run", "--config", str(cfg), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert f"{cfg}: train.max_step: unknown key; did you mean train.max_steps?" in err
    assert f"{cfg}: train.lora.rr: unknown key; did you mean train.lora.r?" in err
    assert f"{cfg}: targets.kfp.retrys: unknown key; did you mean targets.kfp.retries?" in err
    assert "--set" not in err.split("hint:")[0]
    # a key in the wrong section is found in the right one; nothing near: no guess
    cfg.write_text("train:\n  eval_fraction: 0.2\nzzzzzz: 1\n")
    assert pipeline.main(["run", "--config", str(cfg), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "train.eval_fraction: unknown key; did you mean data.eval_fraction?" in err
    assert "zzzzzz: unknown key\n" in err


@pytest.mark.parametrize("target", [[], ["--target", "kfp"], ["--target", "argo"]])
def test_validate_of_a_file_that_is_no_pipeline_is_one_line(tmp_path, capsys, target):
    mapping = tmp_path / "values.yaml"
    mapping.write_text("replicas: 2\nimage: nginx\n")
    for path, extra in ((ROOT / "README.md", "; this is not YAML ("), (mapping, "")):
        assert pipeline.main(["validate", *target, str(path)]) == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 2 and err[1].startswith("hint:"), err
        assert err[0].startswith(
            f"error: {path}: not a pipeline file: expected a compiled Argo, AzureML or KFP pipeline"
        ), err
        assert extra in err[0]


# ------------------------------------------------------------------------------------------
# Images a cluster cannot pull


@pytest.mark.parametrize(
    "image,local",
    [
        ("localhost/slm-pipeline/train:0.1.0", True),
        ("localhost:5000/slm/train:1", True),
        ("127.0.0.1:5000/slm/train:1", True),
        ("[::1]:5000/slm/train:1", True),
        ("registry.local/slm/train:1", True),
        ("slm-pipeline/train:0.1.0", True),  # no registry host: Docker Hub, where local builds are not
        ("train:0.1.0", True),
        ("ghcr.io/team/slm/train:0.1.0", False),
        ("myregistry.azurecr.io/slm/train:1", False),
        ("registry.example.com:5000/slm/train:1", False),
    ],
)
def test_local_registry(image, local):
    from engines.validate import local_registry

    assert local_registry(image) is local


def test_compile_warns_about_local_images_unless_the_registry_is_set(tmp_path, capsys):
    def compile_(*sets: str) -> list[str]:
        out = tmp_path / f"k{len(list(tmp_path.iterdir()))}.yaml"
        argv = ["compile", "--target", "kfp", "--config", "configs/default.yaml", "--out", str(out)]
        assert pipeline.main([*argv, *[x for s in sets for x in ("--set", s)]]) == 0
        return capsys.readouterr().err.splitlines()

    err = compile_()
    assert len(err) == 1 and err[0].startswith("warning: the images (localhost/slm-pipeline/"), err
    assert "make push REGISTRY=" in err[0] and "images.registry" in err[0]
    assert compile_("images.registry=ghcr.io/team/slm") == []
    assert compile_("images.registry=localhost:5000/slm") == []  # set on purpose (a kind cluster's registry)
    assert compile_("images.tag=0.2.0")[0].startswith("warning: ")


def test_validate_strict_refuses_local_images(tmp_path, capsys):
    local, pushed = tmp_path / "local.yaml", tmp_path / "pushed.yaml"
    argv = ["compile", "--target", "argo", "--config", "configs/default.yaml", "--out"]
    assert pipeline.main([*argv, str(local)]) == 0
    assert pipeline.main([*argv, str(pushed), "--set", "images.registry=ghcr.io/team/slm"]) == 0
    capsys.readouterr()
    assert pipeline.main(["validate", str(local)]) == 0  # valid; the images are not validate's business
    assert pipeline.main(["validate", "--strict", str(local)]) == 2
    err = _error_lines(capsys)
    assert len(err) == 1 and "localhost/slm-pipeline/" in err[0] and "(validate --strict)" in err[0], err
    assert pipeline.main(["validate", "--strict", str(pushed)]) == 0
    assert pipeline.main(["validate", "--strict", "--target", "azureml", str(ROOT / "tests/golden/azureml")]) == 2


# ------------------------------------------------------------------------------------------
# Help: every argument explained, examples that point at real files


def _verb_parsers():
    import argparse

    parser = pipeline.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return parser, sub.choices


def test_every_argument_of_every_verb_has_help():
    import argparse

    _, verbs = _verb_parsers()
    assert sorted(verbs) == sorted(VERBS)
    missing = [
        f"{verb} {action.dest}"
        for verb, p in verbs.items()
        for action in p._actions
        if not isinstance(action, argparse._HelpAction) and action.help != argparse.SUPPRESS and not action.help
    ]
    assert missing == []


def test_example_paths_in_help_exist():
    """Every file an example reads (a .yaml/.yml/.json/.jsonl path) is in the repo, or an earlier
    example of the same help wrote it (--out)."""
    import re

    parser, verbs = _verb_parsers()
    named, missing = set(), []
    for text in [parser.format_help()] + [p.format_help() for p in verbs.values()]:
        written = set()
        for line in text.replace("\\\n", " ").splitlines():
            if not line.strip().startswith("python pipeline.py"):
                continue
            outs = re.findall(r"--out\s+(\S+)", line)
            line = re.sub(r"--out\s+\S+", "", line)
            for path in re.findall(r"(?<![\w{<])((?:[\w.-]+/)+[\w.-]+\.(?:ya?ml|jsonl?))\b", line):
                named.add(path)
                if not (ROOT / path).exists() and path not in written:
                    missing.append(path)
            written.update(outs)
    assert {"configs/default.yaml", "tests/data/olive-phi3.json", "tests/golden/kfp/pipeline.yaml"} <= named
    assert missing == []


def test_help_is_for_users():
    parser, verbs = _verb_parsers()
    top = parser.format_help()
    assert "engines/" not in top and "registry" not in top.split("positional arguments")[0].replace(
        "stage registry", ""
    )
    assert "validate [--target" in top
    compile_help = verbs["compile"].format_help()
    assert "olive-config.json       --set" not in compile_help and "      --set images.registry=" in compile_help
    assert "[--target {argo,azureml,kfp}]" in verbs["validate"].format_usage()
    assert max(len(line) for line in verbs["import-olive"].format_help().splitlines()) <= 120


# ------------------------------------------------------------------------------------------
# make


def _make(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_make_help_lists_every_target_on_one_line():
    import re

    bare, listed = _make(), _make("help")
    assert bare.returncode == 0 and listed.returncode == 0 and bare.stdout == listed.stdout
    targets = set(re.findall(r"^([a-z][a-z-]*):", (ROOT / "Makefile").read_text(), re.M))
    shown = {m.group(1): m.group(2) for m in re.finditer(r"^  ([A-Za-z][A-Za-z_-]*) +(\S.*)$", listed.stdout, re.M)}
    assert targets - {"help"} <= set(shown), targets - set(shown)
    for var in ("CONFIG", "OUT", "ARGS"):
        assert var in shown and shown[var].strip(), var


def test_make_run_passes_args_through():
    proc = _make("-n", "run", "ARGS=--set x=y --no-cache")
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.strip().splitlines()[-1]
    assert (
        line == ".venv/bin/python pipeline.py run --config configs/default.yaml --out runs/default --set x=y --no-cache"
    )
    # run installs the runtime set only; test adds the dev set
    assert "requirements-dev.txt" not in proc.stdout
    assert "requirements-dev.txt" in (ROOT / "Makefile").read_text().split("\ntest:")[0]


# ------------------------------------------------------------------------------------------
# runs and stages


def test_stages_has_a_header_and_parameter_names(capsys):
    assert pipeline.main(["stages"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["stage", "inputs", "outputs", "cpu", "mem", "gpu(cuda)"]
    out = "\n".join(lines)
    assert "train.lora.r," in out and "evaluate.max_int4_drop" in out and "params 29" not in out


def test_runs_has_date_duration_status_and_int4_accuracy(tmp_path, capsys):
    import json
    import os
    import time

    run = tmp_path / "r1"
    run.mkdir()
    summary = {
        "status": "ok",
        "stages": {"data_prep": {"seconds": 5.0}, "train": {"seconds": 92.4}, "evaluate": {"seconds": 55.0}},
        "metrics": {"onnx_int4": {"accuracy": 0.905, "macro_f1": 0.862}, "pytorch": {"accuracy": 0.92}},
    }
    (run / "summary.json").write_text(json.dumps(summary))
    ended = time.mktime((2026, 3, 4, 5, 6, 0, 0, 0, -1))
    os.utime(run / "summary.json", (ended, ended))
    assert pipeline.main(["runs", "--root", str(tmp_path)]) == 0
    head, row = capsys.readouterr().out.splitlines()
    assert head.split() == ["run", "ended", "took", "status", "INT4", "acc", "INT4", "F1", "promoted"]
    assert row.split() == [str(run), "2026-03-04", "05:06", "2m32s", "ok", "0.905", "0.862", "no"]
