"""Each stage's typed parameters (core/params.py, declared in stages/registry.py): the view is exactly
what run_stage hands the stage, built from its flags over the schema's defaults, and what it seals;
reading a section the view does not hold fails the stage with one line and leaves no output.
tests/test_config_reads.py checks the other half of "exactly": each stage reads every field its
view declares.

The stage bodies here are probes (they record what they are given and write a file per output):
run_stage, the seals and the error path are the real ones.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from helpers import ROOT

from core import artifacts
from core.config import Config, LoraConfig, ModelConfig, TrainConfig, load_config
from core.params import StageParams
from core.runner import StageContext, run_stage
from stages.registry import STAGES, TrainParams

# One flag per section, off its default: each must arrive in the view.
CHANGED = {
    "data": ("data.seed", 7),
    "model": ("model.revision", "v2"),
    "train": ("train.lora.r", 4),
    "merge": ("merge.parity_prompts", 2),
    "onnx": ("onnx.precision", "fp16"),
    "evaluate": ("evaluate.max_samples", 3),
    "runtime": ("runtime.device", "cpu"),
}


def _sealed(path: Path, type_: str) -> Path:
    tmp = artifacts.begin(path)
    (tmp / "part.txt").write_text(type_)
    artifacts.commit(tmp, path, {"stage": "upstream", "output": path.name, "type": type_})
    return path


def _ports(spec, root: Path) -> list[str]:
    argv = []
    for p in spec.inputs:
        argv += [f"--{p.name}", str(_sealed(root / "in" / p.name, p.type))]
    for p in spec.outputs:
        argv += [f"--{p.name}", str(root / "out" / p.name)]
    return argv


def _run(spec, body, argv: list[str]) -> None:
    """run_stage with no hooks (no engine), in this process: its signal handlers are put back after."""
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        run_stage(spec, body, argv)
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


@pytest.mark.parametrize("name", sorted(STAGES))
def test_run_stage_hands_the_stage_its_view(name, tmp_path):
    spec = STAGES[name]
    got = {}

    def body(params, ctx, **ports):
        got.update(params=params, ctx=ctx, ports=ports)
        for p in spec.outputs:
            (ports[p.name] / "made.txt").write_text("made")
        ctx.output_parameters.update({p.name: "x" for p in spec.out_params})

    flags = [CHANGED[s] for s in spec.sections]
    _run(spec, body, _ports(spec, tmp_path) + [x for key, value in flags for x in (f"--{key}", str(value))])

    params, ctx = got["params"], got["ctx"]
    assert type(params) is spec.view and isinstance(ctx, StageContext)
    assert params.sections() == spec.sections == tuple(type(params).model_fields)
    # the flags over the one schema's defaults, as a config file with those keys gives them
    expected = load_config(None, [f"{key}={value}" for key, value in flags])
    assert params == spec.view.of(expected)
    assert spec.params(params) == spec.params(expected) == ctx.params
    for key, value in flags:
        assert spec.params(params)[key] == value
    for p in spec.outputs:
        assert artifacts.verify(tmp_path / "out" / p.name, p.type)["params"] == ctx.params
    assert set(got["ports"]) == {p.name for p in (*spec.inputs, *spec.outputs)}


def test_reading_an_undeclared_section_fails_the_stage_and_writes_nothing(tmp_path, capsys):
    spec = STAGES["train"]

    def body(params: TrainParams, ctx, dataset: Path, adapter: Path) -> None:
        (adapter / "adapter_model.safetensors").write_text("half written")
        params.data  # noqa: B018 - train's view holds model, train and runtime

    with pytest.raises(SystemExit) as e:
        _run(spec, body, _ports(spec, tmp_path))
    assert e.value.code == 4  # a bug in the stage: never retried
    line = next(ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error: [train]"))
    assert "TrainParams holds the sections model, train, runtime, not 'data'" in line
    assert list((tmp_path / "out").iterdir()) == []  # no adapter, no temporary beside it


def test_a_bad_flag_value_is_one_line_and_exit_2(tmp_path, capsys):
    spec = STAGES["train"]
    ran = []
    for value, why in (
        ("sixteen", "train parameters: train.lora.r: Input should be a valid integer (got 'sixteen')"),
        ("1\n---\n2", "--train.lora.r: 2 YAML documents; expected one"),  # refused while the flags are read
    ):
        with pytest.raises(SystemExit) as e:
            _run(spec, lambda *a, **k: ran.append(a), _ports(spec, tmp_path / value[:3]) + ["--train.lora.r", value])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert f"error: [train] {why}" in err and "Traceback" not in err
    assert ran == []


def test_a_view_is_the_schema_sections_not_a_second_schema():
    cfg = Config()
    params = TrainParams.of(cfg)
    assert params.train is cfg.train and params.model is cfg.model  # the sections themselves, not copies
    with pytest.raises(Exception, match="frozen"):
        params.train = TrainConfig()
    with pytest.raises(TypeError, match=r"Bad\.train: .*core\.config types it"):

        class Bad(StageParams):
            train: LoraConfig

    with pytest.raises(TypeError, match=r"Defaulted\.model: a view declares no default"):

        class Defaulted(StageParams):
            model: ModelConfig = ModelConfig()

    with pytest.raises(TypeError, match=r"Invented\.lora_rank: .*not a config section"):

        class Invented(StageParams):
            lora_rank: int


@pytest.mark.parametrize("config", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_the_ranks_get_the_view_they_were_sent(config):
    """train.gpus > 1: distributed.launch writes the view as JSON, each rank (rank.py) reads it back."""
    params = TrainParams.of(load_config(ROOT / "configs" / config))
    assert TrainParams.model_validate(params.model_dump(mode="json")) == params
