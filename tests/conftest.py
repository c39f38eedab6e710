"""Shared fixtures: one full pipeline run on the tiny Phi-3, reused by many tests."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # helpers.py, for tests in subfolders too
sys.path.insert(0, str(Path(__file__).parent / "trace"))
import config_trace  # noqa: E402
from helpers import run_pipeline  # noqa: E402


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """One full DAG run on the tiny Phi-3; tests read its artifacts, never modify them."""
    out = tmp_path_factory.mktemp("tiny") / "run"
    # With an MLflow file store, as AzureML's MLFLOW_TRACKING_URI would: tests/test_mlflow.py reads it back.
    store = out.parent / "mlruns"
    # (MLflow 3 keeps its file store behind MLFLOW_ALLOW_FILE_STORE; its sqlite store needs SQLAlchemy.)
    proc = run_pipeline(
        out,
        env={
            "MLFLOW_TRACKING_URI": store.as_uri(),
            "MLFLOW_EXPERIMENT_NAME": "tiny-run",
            "MLFLOW_ALLOW_FILE_STORE": "true",
            # Which config fields each stage reads: tests/test_config_reads.py.
            **config_trace.env(out.parent / "reads"),
        },
        text=False,
    )
    # What a user's log file would hold (the run is not on a terminal): tests/test_progress.py reads it.
    (out.parent / "stdout.log").write_bytes(proc.stdout)
    (out.parent / "stderr.log").write_bytes(proc.stderr)
    assert proc.returncode == 0, (proc.stdout[-3000:] + proc.stderr[-3000:]).decode(errors="replace")
    return out


@pytest.fixture(scope="session")
def multi(tmp_path_factory) -> dict:
    """The two-task DAG, run once (tests/multi_tasks.py); its stages' config reads are traced."""
    from multi_tasks import run_tasks

    tmp = tmp_path_factory.mktemp("multi")
    return run_tasks(tmp, env=config_trace.env(tmp / "reads"))


@pytest.fixture(scope="session")
def hub(tmp_path_factory) -> dict[str, str]:
    """The env of a process that finds ``HUB_ID`` in an offline Hugging Face hub cache, as a pinned
    mirror would serve it: two snapshots of the tiny Phi-3, refs ``main`` and ``v2``, whose weights
    and tokenizers differ (only v2 has a chat template). Only the revision tells them apart."""
    from helpers import HUB_CHAT, HUB_COMMITS, HUB_ID
    from safetensors.torch import load_file, save_file

    from core.models import resolve

    root = tmp_path_factory.mktemp("hub")
    tiny = Path(resolve("tiny-random:phi3"))
    repo = root / ("models--" + HUB_ID.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    for ref, commit in HUB_COMMITS.items():
        shutil.copytree(tiny, repo / "snapshots" / commit)
        (repo / "refs" / ref).write_text(commit)
    v2 = repo / "snapshots" / HUB_COMMITS["v2"]
    weights = load_file(v2 / "model.safetensors")
    weights = {k: (t + 1.0 if k.endswith("embed_tokens.weight") else t).contiguous() for k, t in weights.items()}
    save_file(weights, v2 / "model.safetensors", metadata={"format": "pt"})
    tok_cfg = json.loads((v2 / "tokenizer_config.json").read_text())
    tok_cfg["chat_template"] = HUB_CHAT
    (v2 / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    return {"HF_HUB_CACHE": str(root), "HF_HUB_OFFLINE": "1"}


# --------------------------------------------------------------------------- containers
# The container tests need a Docker daemon (DOCKER_HOST, as `.ci/docker.sh start` exports it)
# and the CPU stage images. With CI, DOCKER_HOST or SLM_REQUIRE_DOCKER set (as `make test`
# does), a missing daemon or image FAILS them: they are never silently skipped there.
REQUIRED = any(
    os.environ.get(k, "").lower() not in ("", "0", "false", "no") for k in ("CI", "DOCKER_HOST", "SLM_REQUIRE_DOCKER")
)


def docker_unavailable(reason: str):
    how = 'set up with `eval "$(bash .ci/docker.sh start)" && bash .ci/docker.sh images`'
    if REQUIRED:
        pytest.fail(
            f"container tests required here (CI/DOCKER_HOST/SLM_REQUIRE_DOCKER) but {reason}; {how}", pytrace=False
        )
    pytest.skip(f"{reason}; {how}")


@pytest.fixture(scope="session")
def client():
    from engines import images as im

    try:
        return im.connect(timeout=30)
    except Exception as e:  # noqa: BLE001 - UserError with the daemon's address, or no docker SDK
        docker_unavailable(str(e))


@pytest.fixture(scope="session")
def images(client) -> dict[str, str]:
    """The tiny config's stage images, built from this checkout."""
    import docker
    from helpers import TINY

    from core.config import load_config
    from engines import images as im
    from stages.registry import STAGES

    cfg = load_config(TINY)
    names = {s: im.stage_image(s, cfg) for s in STAGES}
    missing = []
    for name in names.values():
        try:
            client.images.get(name)
        except docker.errors.ImageNotFound:
            missing.append(name)
    if missing:
        docker_unavailable(f"images {missing} are not built")
    return names
