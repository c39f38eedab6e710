"""Security: no remote code or pickle by default, no secret in any output, pinned deps, non-root images."""

from __future__ import annotations

import re
import shutil
from importlib.metadata import version

import pytest
from helpers import ROOT, run_cli, run_pipeline, stage_cli

from core.config import load_config

SECRETS = {
    "HF_TOKEN": "hf_FAKEsecretTOKEN0123456789abcdef",
    "AZURE_CLIENT_SECRET": "az-FAKE-client-secret-9f8e7d6c5b4a",
    "AZURE_STORAGE_KEY": "FAKEstorageKEY+abc123==",
}


@pytest.mark.parametrize("name", ["default", "tiny-phi3", "phi3-mini"])
def test_remote_code_and_pickle_are_off_in_shipped_configs(name):
    cfg = load_config(ROOT / "configs" / f"{name}.yaml")
    assert cfg.model.trust_remote_code is False and cfg.model.allow_pickle is False


def test_trust_remote_code_warns(tmp_path, tiny_run):
    proc = stage_cli(
        "merge",
        "--adapter",
        str(tiny_run / "train" / "adapter"),
        "--model",
        str(tmp_path / "m"),
        "--model.base",
        "tiny-random:phi3",
        "--model.trust_remote_code",
        "true",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "model.trust_remote_code is on" in proc.stderr


def test_no_secret_in_compiled_files_logs_or_summary(tmp_path, tiny_run):
    texts = []
    for target, out in (
        ("kfp", tmp_path / "kfp.yaml"),
        ("azureml", tmp_path / "aml"),
        ("argo", tmp_path / "argo.yaml"),
    ):
        proc = run_cli(
            str(ROOT / "pipeline.py"),
            "compile",
            "--target",
            target,
            "--config",
            str(ROOT / "configs/phi3-mini.yaml"),
            "--out",
            str(out),
            env=SECRETS,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        texts += [proc.stdout, proc.stderr]
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    proc = run_pipeline(run, "evaluate.max_new_tokens=3", env=SECRETS)  # evaluate re-runs with the secrets set
    assert proc.returncode == 0, proc.stderr[-2000:]
    texts += [proc.stdout, proc.stderr]
    files = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix not in (".safetensors", ".data", ".onnx")]
    assert len(files) > 20
    texts += [p.read_text(errors="replace") for p in files]
    for name, value in SECRETS.items():
        leaks = [t[:80] for t in texts if value in t]
        assert not leaks, f"{name} leaked"
    kfp = (tmp_path / "kfp.yaml").read_text()
    assert "secretName: hf-token" in kfp and "secretKey: token" in kfp  # a reference, not a value


def test_fragile_dependencies_are_pinned_exactly():
    pins = {}
    text = (ROOT / "requirements.txt").read_text() + (ROOT / "requirements-dev.txt").read_text()
    for line in text.splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, ver = line.partition("==")
            pins[name.lower()] = ver
    for fragile in (
        "torch",
        "transformers",
        "peft",
        "bitsandbytes",
        "onnxruntime",
        "onnxruntime-genai",
        "kfp",
        "azure-ai-ml",
        "hera",
        "datasets",
    ):
        assert pins.get(fragile), f"{fragile} must be pinned with == in requirements*.txt"


def test_installed_versions_match_the_lock():
    lock = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, ver = line.split("==")
            lock[name.lower()] = ver
    for name in ("torch", "transformers", "peft", "onnxruntime-genai", "kfp", "requests", "protobuf", "numpy"):
        assert version(name).split("+")[0] == lock[name], name


def test_images_run_as_non_root():
    dockerfiles = list((ROOT / "images").glob("*/Dockerfile"))
    assert {df.parent.name for df in dockerfiles} == {"base", "stage"}  # the base, and the stages' one template
    for df in dockerfiles:
        users = re.findall(r"^USER\s+(\S+)", df.read_text(), re.M)  # the last one is the final stage's
        assert users and users[-1] not in ("root", "0", "0:0"), f"{df} runs as root"


def test_hf_token_reaches_the_hub_loader_and_nowhere_else(tmp_path, tiny_run):
    """HF_TOKEN is the secret the code really reads: a hub model id sends it to the hub. A fake hub
    on loopback proves the loader sent it (so this test could see a leak), and then that it is in
    no output, log line, artifact or summary."""
    import http.server
    import threading

    seen: list[str] = []

    class FakeHub(http.server.BaseHTTPRequestHandler):
        def _answer(self):
            seen.append(self.headers.get("authorization", ""))
            self.send_response(404)
            self.send_header("X-Error-Code", "RepoNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_HEAD = _answer

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {
        **SECRETS,
        "HF_ENDPOINT": f"http://127.0.0.1:{server.server_port}",
        "HF_HUB_OFFLINE": "0",
        "TRANSFORMERS_OFFLINE": "0",
        "HF_HOME": str(tmp_path / "hf-home"),
    }
    try:
        run = tmp_path / "run"
        shutil.copytree(tiny_run / "data_prep", run / "data_prep")
        (run / ".run.lock").touch()  # a run folder of this pipeline's, so the runner may reuse its data_prep
        proc = run_pipeline(run, "model.base=fake-org/fake-model", env=env)
    finally:
        server.shutdown()
    assert f"Bearer {SECRETS['HF_TOKEN']}" in seen, f"the hub loader never sent HF_TOKEN: {seen[:3]}"
    assert proc.returncode != 0 and "cannot load" in proc.stderr and "fake-org/fake-model" in proc.stderr
    texts = [proc.stdout, proc.stderr] + [p.read_text(errors="replace") for p in run.rglob("*") if p.is_file()]
    assert not [t[:80] for t in texts if SECRETS["HF_TOKEN"] in t], "HF_TOKEN leaked"
