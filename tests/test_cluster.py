"""submit, status, --wait and schedule on KFP, Argo and AzureML, through the real clients.

Each engine's API server is a loopback recorder (tests/recorders.py) that the test starts;
the CLI (``pipeline.main``) talks to it with kfp.Client, hera's WorkflowsService and
azure-ai-ml's MLClient, unmodified. The tests assert each request's method, path and body:
the pipeline spec sent, the run parameters, the cron in each engine's dialect; and that no
canary secret set in the environment appears in a compiled file, a log line or a request
body (the Authorization header carries the engine's token, as it must).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
import recorders
import yaml

from core.config import load_config
from core.errors import UserError
from engines import base
from engines.compile_common import RUN_PARAMETERS, param_name, run_parameters
from pipeline import DAG, main

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "default.yaml")
STAGES = [s.name for s in DAG]
NAME = load_config(CONFIG).name  # slm-finetune-default
RUN = NAME + "-x7k2p"  # the name the recorder gives the workflow
CANARIES = {
    "ARGO_TOKEN": "argo-CANARY-token-7f3e1d",
    "KF_PIPELINES_TOKEN": "kfp-CANARY-token-91ab4c",
    "HF_TOKEN": "hf_CANARY_hf_token_5c0ffee",
    "AZURE_CLIENT_SECRET": "azure-CANARY-client-secret-2d9",
}

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")


@pytest.fixture(autouse=True)
def canaries(monkeypatch):
    for k, v in CANARIES.items():
        monkeypatch.setenv(k, v)
    for k in (
        "KF_PIPELINES_ENDPOINT",
        "ARGO_SERVER",
        "ARGO_NAMESPACE",
        "AZURE_SUBSCRIPTION_ID",
        "AZURE_RESOURCE_GROUP",
        "AZUREML_WORKSPACE_NAME",
        "AZURE_CLIENT_ID",
        "AZURE_TENANT_ID",
    ):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("SLM_POLL_SECONDS", "0")
    monkeypatch.setenv("HOME", str(REPO / "tests" / "data"))  # no kfp CLI context or kube config of the host's


def cli(capsys, caplog, *args: str) -> tuple[int, str]:
    """Run the CLI in-process: (exit code, stdout + stderr + log records)."""
    caplog.set_level(logging.DEBUG)
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out + out.err + "\n".join(r.getMessage() for r in caplog.records)


def assert_no_secret(*texts: str | bytes) -> None:
    for text in texts:
        text = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
        for name, value in CANARIES.items():
            assert value not in text, f"{name}'s value leaked"


def assert_bodies_clean(rec: recorders.Recorder) -> None:
    for r in rec.requests:
        assert_no_secret(r.body, r.path, json.dumps(r.query))
        for k, v in r.headers.items():
            if k != "authorization":
                assert_no_secret(v)


def expected_arguments(overrides=()) -> dict:
    from engines.kfp import kfp_value

    cfg = load_config(CONFIG, list(overrides))
    return {param_name(k): kfp_value(v) for k, v in run_parameters(DAG, cfg).items()}


RUNNING = {"data_prep": "SUCCEEDED", "train": "RUNNING"}


# ------------------------------------------------------------------------------------------
# One Target interface


def test_the_registry_is_the_one_list_of_engines():
    assert base.names() == ["argo", "azureml", "kfp"]
    for name, target in base.registry().items():
        assert target.name == name and target.settings.model_fields  # typed settings per engine


@pytest.mark.parametrize(
    "command", [["compile", "--out", "/nonexistent/x"], ["submit"], ["schedule", "--cron", "0 3 * * 1"]]
)
def test_a_typo_in_target_settings_fails_every_command(capsys, caplog, command):
    code, out = cli(
        capsys,
        caplog,
        command[0],
        "--target",
        "kfp",
        "--config",
        CONFIG,
        "--set",
        "targets.kfp.shedule=0 3 * * 1",
        *command[1:],
        *(["--host", "http://127.0.0.1:9"] if command[0] != "compile" else []),
    )
    assert code == 2 and "targets.kfp.shedule: unknown key" in out and "Traceback" not in out
    with pytest.raises(UserError, match=r"targets\.argo\.namespce: unknown key"):
        load_config(CONFIG, ["targets.argo.namespce=x"])
    with pytest.raises(UserError, match=r"unknown target\(s\) \['kfpp'\]; known: argo, azureml, kfp"):
        load_config(CONFIG, ["targets.kfpp.retries=1"])


# ------------------------------------------------------------------------------------------
# KFP


def test_kfp_submit_uploads_the_pipeline_and_starts_a_run_with_the_run_parameters(capsys, caplog, tmp_path):
    with recorders.Recorder(recorders.kfp_routes([{"state": "PENDING"}])) as rec:
        code, out = cli(
            capsys,
            caplog,
            "submit",
            "--target",
            "kfp",
            "--host",
            rec.url,
            "--config",
            CONFIG,
            "--set",
            "train.lora.r=32",
        )
    assert code == 0, out
    assert "submitted Kubeflow Pipelines run run-1" in out
    assert rec.calls() == [
        ("GET", "/apis/v2beta1/healthz"),  # kfp.Client asks whether KFP is multi-user
        ("GET", "/apis/v2beta1/pipelines"),  # is there a pipeline of this name? (no)
        ("POST", "/apis/v2beta1/pipelines/upload"),
        ("GET", "/apis/v2beta1/pipelines/pipe-1/versions"),  # the new pipeline's version, for the run
        ("GET", "/apis/v2beta1/experiments"),  # the experiment by name (none)
        ("POST", "/apis/v2beta1/experiments"),
        ("POST", "/apis/v2beta1/runs"),
    ]
    lookup = rec.requests[1]
    assert json.loads(lookup.query["filter"])["predicates"][0]["stringValue"] == NAME
    upload = rec.requests[2]
    assert upload.query["name"] == NAME
    spec = list(yaml.safe_load_all(recorders.multipart_file(upload)))
    assert spec[0]["pipelineInfo"]["name"] == NAME
    assert set(spec[0]["root"]["inputDefinitions"]["parameters"]) == {param_name(k) for k in RUN_PARAMETERS}
    assert spec[0]["root"]["inputDefinitions"]["parameters"]["train_lora_r"]["defaultValue"] == 32
    assert rec.requests[5].json["display_name"] == NAME
    run = rec.requests[6].json
    assert run["experiment_id"] == "exp-1"
    assert run["pipeline_version_reference"] == {"pipeline_id": "pipe-1", "pipeline_version_id": "ver-1"}
    assert run["runtime_config"]["parameters"] == expected_arguments(["train.lora.r=32"])
    assert run["runtime_config"]["parameters"]["train_lora_r"] == 32
    for r in rec.requests:
        assert r.headers["authorization"] == f"Bearer {CANARIES['KF_PIPELINES_TOKEN']}"
    assert_bodies_clean(rec)
    assert_no_secret(out)


def test_kfp_submit_of_a_known_pipeline_uploads_a_new_version(capsys, caplog):
    with recorders.Recorder(recorders.kfp_routes([{"state": "PENDING"}], existing_pipeline=NAME)) as rec:
        code, out = cli(capsys, caplog, "submit", "--target", "kfp", "--host", rec.url, "--config", CONFIG)
    assert code == 0, out
    assert rec.calls()[:3] == [
        ("GET", "/apis/v2beta1/healthz"),
        ("GET", "/apis/v2beta1/pipelines"),
        ("POST", "/apis/v2beta1/pipelines/upload_version"),
    ]
    assert rec.requests[2].query["pipelineid"] == "pipe-1"
    assert rec.requests[2].query["name"].startswith(NAME + "-")
    assert yaml.safe_load_all(recorders.multipart_file(rec.requests[2])).__next__()["pipelineInfo"]["name"] == NAME
    assert rec.find("POST", "/apis/v2beta1/runs")[0].json["pipeline_version_reference"] == {
        "pipeline_id": "pipe-1",
        "pipeline_version_id": "ver-2",
    }


def test_kfp_submit_wait_follows_the_run_to_success(capsys, caplog):
    states = [
        {"state": "RUNNING", "tasks": {"data_prep": "RUNNING"}},
        {"state": "RUNNING", "tasks": RUNNING},
        {"state": "SUCCEEDED", "tasks": {s: "SUCCEEDED" for s in STAGES}},
    ]
    with recorders.Recorder(recorders.kfp_routes(states)) as rec:
        code, out = cli(capsys, caplog, "submit", "--target", "kfp", "--host", rec.url, "--config", CONFIG, "--wait")
    assert code == 0, out
    lines = [ln for ln in out.splitlines() if ln.startswith("[") and ln.split(" ")[0].strip("[]") in STAGES]
    assert lines == [
        "[data_prep] pending",
        "[train] pending",
        "[merge] pending",
        "[onnx_build] pending",
        "[evaluate] pending",
        "[data_prep] running",
        "[data_prep] succeeded",
        "[train] running",
        "[train] succeeded",
        "[merge] succeeded",
        "[onnx_build] succeeded",
        "[evaluate] succeeded",
    ]
    assert "run run-1: succeeded" in out
    assert [c for c in rec.calls() if c[0] == "GET" and c[1].startswith("/apis/v2beta1/runs/")] == [
        ("GET", "/apis/v2beta1/runs/run-1")
    ] * 3


def test_kfp_wait_exits_non_zero_when_the_run_fails(capsys, caplog):
    states = [
        {"state": "RUNNING", "tasks": RUNNING},
        {"state": "FAILED", "tasks": {"data_prep": "SUCCEEDED", "train": "FAILED"}, "error": "train: exit 1"},
    ]
    with recorders.Recorder(recorders.kfp_routes(states)) as rec:
        code, out = cli(capsys, caplog, "submit", "--target", "kfp", "--host", rec.url, "--config", CONFIG, "--wait")
    assert code == 1
    assert "[train] failed" in out and "run run-1: failed (train: exit 1)" in out


def test_kfp_status_prints_the_stage_table(capsys, caplog, monkeypatch):
    with recorders.Recorder(recorders.kfp_routes([{"state": "RUNNING", "tasks": RUNNING}])) as rec:
        monkeypatch.setenv("KF_PIPELINES_ENDPOINT", rec.url)  # the host from the environment
        code, out = cli(capsys, caplog, "status", "--target", "kfp", "run-1")
        assert code == 0, out
        assert rec.calls() == [("GET", "/apis/v2beta1/healthz"), ("GET", "/apis/v2beta1/runs/run-1")]
        table = [ln.split() for ln in out.splitlines() if ln.split() and ln.split()[0] in STAGES + ["stage"]]
        assert table == [
            ["stage", "status", "seconds"],
            ["data_prep", "succeeded", "42.0"],
            ["train", "running", "-"],
            ["merge", "pending", "-"],
            ["onnx_build", "pending", "-"],
            ["evaluate", "pending", "-"],
        ]
        code, out = cli(capsys, caplog, "status", "--target", "kfp", "run-404")
    assert code == 2 and "KFP at http://127.0.0.1" in out and "HTTP 404" in out and "run run-404 not found" in out


def test_kfp_without_a_host_goes_through_the_kube_context(capsys, caplog, tmp_path, monkeypatch):
    """No --host, no KF_PIPELINES_ENDPOINT: kfp.Client reaches KFP through the kube context's API
    server (its service proxy), with the context's credentials."""
    kube_token = "kube-CANARY-token-0e77"
    proxy = r"/api/v1/namespaces/kubeflow/services/ml-pipeline:http/proxy/*"
    with recorders.Recorder(
        recorders.kfp_routes([{"state": "SUCCEEDED", "tasks": {s: "SUCCEEDED" for s in STAGES}}], prefix=proxy)
    ) as rec:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "current-context": "loopback",
                    "clusters": [{"name": "loopback", "cluster": {"server": rec.url}}],
                    "users": [{"name": "me", "user": {"token": kube_token}}],
                    "contexts": [{"name": "loopback", "context": {"cluster": "loopback", "user": "me"}}],
                }
            )
        )
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        monkeypatch.delenv("KF_PIPELINES_TOKEN")
        code, out = cli(capsys, caplog, "status", "--target", "kfp", "run-1")
    assert code == 0, out
    assert [c for c in rec.calls() if c[1].endswith("/runs/run-1")]
    assert all(re.fullmatch(proxy + r"/apis/v2beta1/.*", p) for _, p in rec.calls())
    assert all(r.headers["authorization"] == f"Bearer {kube_token}" for r in rec.requests)
    assert (
        kube_token not in out
        and "[evaluate]" not in out
        and ["evaluate", "succeeded", "42.0"] in [ln.split() for ln in out.splitlines()]
    )


def test_kfp_without_any_host_says_how_to_give_one(capsys, caplog, tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))
    code, out = cli(capsys, caplog, "status", "--target", "kfp", "run-1")
    assert code == 2 and "error: no KFP host: set --host or KF_PIPELINES_ENDPOINT" in out


def test_kfp_schedule_creates_a_recurring_run_in_kfp_cron(capsys, caplog):
    with recorders.Recorder(recorders.kfp_routes([])) as rec:
        code, out = cli(
            capsys, caplog, "schedule", "--target", "kfp", "--host", rec.url, "--config", CONFIG, "--cron", "0 3 * * 1"
        )
    assert code == 0, out
    assert rec.calls()[-1] == ("POST", "/apis/v2beta1/recurringruns")
    body = rec.requests[-1].json
    assert body["trigger"] == {"cron_schedule": {"cron": "0 0 3 * * 1"}}  # seconds first
    assert int(body["max_concurrency"]) == 1 and body["no_catchup"] is True
    assert body["mode"] == "ENABLE"
    assert body["pipeline_version_reference"] == {"pipeline_id": "pipe-1", "pipeline_version_id": "ver-1"}
    assert body["runtime_config"]["parameters"] == expected_arguments()
    assert "0 0 3 * * 1" in out
    assert_bodies_clean(rec)


def test_kfp_schedule_reads_the_cron_from_the_config(capsys, caplog):
    with recorders.Recorder(recorders.kfp_routes([])) as rec:
        code, out = cli(
            capsys,
            caplog,
            "schedule",
            "--target",
            "kfp",
            "--host",
            rec.url,
            "--config",
            CONFIG,
            "--set",
            "targets.kfp.schedule=30 2 * * 0",
        )
    assert code == 0, out
    assert rec.requests[-1].json["trigger"]["cron_schedule"]["cron"] == "0 30 2 * * 0"


def test_unreachable_kfp_is_one_line(capsys, caplog):
    code, out = cli(capsys, caplog, "submit", "--target", "kfp", "--host", "http://127.0.0.1:9", "--config", CONFIG)
    assert code == 2
    err = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert (
        err
        and err[0].startswith("error: cannot reach KFP at http://127.0.0.1:9: ")
        and "set --host or KF_PIPELINES_ENDPOINT" in err[0]
    )
    assert "Traceback" not in out
    assert_no_secret(out)


# ------------------------------------------------------------------------------------------
# Argo


def test_argo_submit_creates_the_workflow(capsys, caplog):
    with recorders.Recorder(recorders.argo_routes([{"phase": "Pending"}])) as rec:
        code, out = cli(
            capsys,
            caplog,
            "submit",
            "--target",
            "argo",
            "--host",
            rec.url,
            "--config",
            CONFIG,
            "--set",
            "train.max_steps=7",
        )
    assert code == 0, out
    assert rec.calls() == [("POST", "/api/v1/workflows/slm-pipeline")]
    wf = rec.requests[0].json["workflow"]
    assert wf["kind"] == "Workflow" and wf["metadata"]["generateName"] == NAME + "-"
    assert wf["metadata"]["namespace"] == "slm-pipeline"
    args = {p["name"]: p["value"] for p in wf["spec"]["arguments"]["parameters"]}
    assert set(args) == {param_name(k) for k in RUN_PARAMETERS} and args["train_max_steps"] == "7"
    assert [t["name"] for t in wf["spec"]["templates"] if "dag" in t] == ["main"]
    assert rec.requests[0].headers["authorization"] == f"Bearer {CANARIES['ARGO_TOKEN']}"
    assert f"submitted Argo Workflows run {RUN}" in out
    assert_bodies_clean(rec)
    assert_no_secret(out)


def test_argo_submit_wait_and_status(capsys, caplog, monkeypatch):
    states = [
        {"phase": "Running", "tasks": {"data-prep": "Running"}},
        {"phase": "Failed", "tasks": {"data-prep": "Succeeded", "train": "Failed"}, "message": "child 'train' failed"},
    ]
    with recorders.Recorder(recorders.argo_routes(states)) as rec:
        monkeypatch.setenv("ARGO_SERVER", rec.url)  # the host from the environment
        code, out = cli(capsys, caplog, "submit", "--target", "argo", "--config", CONFIG, "--wait")
        assert code == 1
        assert "[data_prep] running" in out and "[data_prep] succeeded" in out and "[train] failed" in out
        assert f"run {RUN}: failed (child 'train' failed)" in out
        assert (
            rec.calls()
            == [("POST", "/api/v1/workflows/slm-pipeline")] + [("GET", f"/api/v1/workflows/slm-pipeline/{RUN}")] * 2
        )
        code, out = cli(capsys, caplog, "status", "--target", "argo", RUN, "--wait")  # already over: one look
        assert code == 1  # the run failed
        rows = [ln.split() for ln in out.splitlines()]
        assert (
            ["data_prep", "succeeded", "42.0"] in rows
            and ["train", "failed", "42.0"] in rows
            and ["merge", "pending", "-"] in rows
        )
        assert rec.calls()[-1] == ("GET", f"/api/v1/workflows/slm-pipeline/{RUN}")
        code, out = cli(capsys, caplog, "status", "--target", "argo", "--namespace", "other", "nope")
        assert code == 2 and "Argo at http://127.0.0.1" in out and "not found" in out
        assert rec.calls()[-1] == ("GET", "/api/v1/workflows/other/nope")


def test_argo_submits_a_two_task_run_and_status_lists_its_own_steps(tmp_path, capsys, caplog, monkeypatch):
    """``status`` has no config: a multi-task run's steps come from the run itself."""
    import yaml
    from multi_tasks import multi_config

    config = tmp_path / "multi.yaml"
    config.write_text(yaml.safe_dump(multi_config(tmp_path)))
    states = [{"phase": "Running", "tasks": {"data-prep-tone": "Succeeded", "train-tone": "Running"}}]
    with recorders.Recorder(recorders.argo_routes(states)) as rec:
        monkeypatch.setenv("ARGO_SERVER", rec.url)
        code, out = cli(capsys, caplog, "submit", "--target", "argo", "--config", str(config))
        assert code == 0
        submitted = rec.requests[0].json["workflow"]
        (dag,) = [t for t in submitted["spec"]["templates"] if "dag" in t]
        assert {t["name"] for t in dag["dag"]["tasks"]} >= {"train-tone", "train-sentiment", "adapter-build"}
        run = submitted["metadata"]["generateName"] + "x7k2p"
        code, out = cli(capsys, caplog, "status", "--target", "argo", run)
        rows = [ln.split() for ln in out.splitlines()]
        assert ["data-prep-tone", "succeeded", "42.0"] in rows and ["train-tone", "running", "-"] in rows
        assert not any(r and r[0] in ("merge", "train") for r in rows)  # not the single-task DAG's steps


def test_argo_schedule_creates_a_cron_workflow(capsys, caplog):
    with recorders.Recorder(recorders.argo_routes([])) as rec:
        code, out = cli(
            capsys,
            caplog,
            "schedule",
            "--target",
            "argo",
            "--host",
            rec.url,
            "--config",
            CONFIG,
            "--cron",
            "0 3 * * 1",
            "--timezone",
            "Europe/Berlin",
        )
    assert code == 0, out
    assert rec.calls() == [("POST", "/api/v1/cron-workflows/slm-pipeline")]
    cw = rec.requests[0].json["cronWorkflow"]
    assert cw["kind"] == "CronWorkflow" and cw["metadata"]["name"] == NAME + "-retrain"
    spec = cw["spec"]
    assert spec["schedules"] == ["0 3 * * 1"] and spec["timezone"] == "Europe/Berlin"  # Argo takes the 5-field cron
    assert spec["concurrencyPolicy"] == "Forbid" and spec["startingDeadlineSeconds"] > 0
    assert {p["name"] for p in spec["workflowSpec"]["arguments"]["parameters"]} == {
        param_name(k) for k in RUN_PARAMETERS
    }
    assert_bodies_clean(rec)


def test_argo_needs_a_server(capsys, caplog):
    code, out = cli(capsys, caplog, "submit", "--target", "argo", "--config", CONFIG)
    assert code == 2 and "error: no Argo server: set --host or ARGO_SERVER" in out
    code, out = cli(capsys, caplog, "status", "--target", "argo", "--host", "http://127.0.0.1:9", "x")
    assert code == 2 and "error: cannot reach Argo at http://127.0.0.1:9: " in out and "Traceback" not in out


# ------------------------------------------------------------------------------------------
# No secret in a compiled file


@pytest.mark.parametrize("target", ["kfp", "argo", "azureml"])
def test_no_secret_in_compiled_files(capsys, caplog, tmp_path, target):
    out_path = tmp_path / base.get(target).default_out
    code, out = cli(
        capsys,
        caplog,
        "compile",
        "--target",
        target,
        "--config",
        CONFIG,
        "--out",
        str(out_path),
        "--set",
        f"targets.{target}.schedule=0 3 * * 1",
    )
    assert code == 0, out
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert files
    for p in files:
        assert_no_secret(p.read_bytes())
    assert_no_secret(out)


# ------------------------------------------------------------------------------------------
# AzureML: the workspace API over HTTPS (a certificate made here, REQUESTS_CA_BUNDLE), the
# credential from DefaultAzureCredential's managed-identity step (MSI_ENDPOINT + MSI_SECRET,
# as on AzureML compute), answering a JWT whose audience is the resource asked for.

SUB, RG, WSNAME = "00000000-0000-0000-0000-0000000000ff", "slm-rg", "slm-ws"
WS_PATH = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.MachineLearningServices/workspaces/{WSNAME}"
MSI_SECRET = "msi-CANARY-secret-4b1e"


@pytest.fixture
def azure(tmp_path, monkeypatch):
    """Start the loopback workspace; yields a function that sets the job progression."""
    ca, cert, key = recorders.make_tls(tmp_path)
    holder = {}

    def start(job_states):
        msi = recorders.Recorder(recorders.msi_routes(MSI_SECRET)).__enter__()
        mfe = recorders.Recorder(recorders.azureml_routes(job_states), tls=(cert, key)).__enter__()
        holder.update(msi=msi, mfe=mfe)
        monkeypatch.setenv("AZUREML_DEV_URL_MFE", mfe.url)
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca))
        monkeypatch.setenv("MSI_ENDPOINT", msi.url + "/msi/token")
        monkeypatch.setenv("MSI_SECRET", MSI_SECRET)
        monkeypatch.setenv("AZURE_SUBSCRIPTION_ID", SUB)  # the workspace from the environment
        monkeypatch.setenv("AZURE_RESOURCE_GROUP", RG)
        return msi, mfe

    yield start
    for rec in holder.values():
        rec.__exit__(None, None, None)


def _ws_calls(rec) -> list[tuple[str, str]]:
    """The workspace calls, paths relative to the workspace, collapsing repeats of one call."""
    out: list[tuple[str, str]] = []
    for method, path in rec.calls():
        short = (method, path.replace(WS_PATH, "{ws}"))
        if not out or out[-1] != short:
            out.append(short)
    return out


def test_azureml_submit_creates_the_pipeline_job(azure, capsys, caplog):
    msi, mfe = azure([{"status": "NotStarted"}])
    code, out = cli(
        capsys,
        caplog,
        "submit",
        "--target",
        "azureml",
        "--workspace",
        WSNAME,
        "--config",
        CONFIG,
        "--set",
        "train.max_steps=9",
    )
    assert code == 0, out
    calls = _ws_calls(mfe)
    job_put = mfe.find("PUT", WS_PATH + r"/jobs/[a-z0-9_]+")
    assert len(job_put) == 1
    job_name = job_put[0].path.rsplit("/", 1)[1]
    assert calls[0] == ("GET", "{ws}/computes/cpu-cluster")  # the node's compute exists
    assert {c for c in calls if "/environments/" in c[1]} and {c for c in calls if "/components/" in c[1]}
    assert calls[-1] == ("PUT", f"{{ws}}/jobs/{job_name}")
    kinds = [c[1].split("/")[1] if c[1].startswith("{ws}/") else "workspace" for c in calls]
    order = ["computes", "environments", "workspace", "components", "jobs"]
    assert sorted(kinds, key=lambda k: order.index(k) if k != "environments" else 0) == kinds  # computes+envs, ws, ...
    assert sorted(set(kinds), key=order.index) == order
    # one environment per stage image, one component per stage
    assert len(mfe.find("PUT", WS_PATH + r"/components/.*")) == len(STAGES)
    images = {r.json["properties"]["image"] for r in mfe.find("PUT", WS_PATH + r"/environments/.*")}
    assert images == {f"localhost/slm-pipeline/{s}:0.1.0" for s in STAGES}
    job = job_put[0].json["properties"]
    assert job["jobType"] == "Pipeline" and job["experimentName"] == NAME
    assert list(job["jobs"]) == STAGES
    inputs = {k: v["value"] for k, v in job["inputs"].items()}
    assert set(inputs) == {param_name(k) for k in RUN_PARAMETERS} and inputs["train_max_steps"] == "9"
    assert job["jobs"]["train"]["inputs"]["train_max_steps"]["value"] == "${{parent.inputs.train_max_steps}}"
    assert all(r.headers["authorization"].startswith("Bearer ey") for r in mfe.requests)
    assert all(r.query == {"api-version": "2017-09-01", "resource": r.query["resource"]} for r in msi.requests)
    assert f"submitted Azure Machine Learning run {job_name}: https://ml.azure.com/runs/{job_name}" in out
    assert_bodies_clean(mfe)
    assert_no_secret(out)
    assert MSI_SECRET not in out


def test_azureml_submit_wait_and_status(azure, capsys, caplog):
    states = [
        {"status": "Running", "steps": {"data_prep": "Running"}},
        {"status": "Running", "steps": {"data_prep": "Completed", "train": "Running"}},
        {"status": "Failed", "steps": {"data_prep": "Completed", "train": "Failed"}},
    ]
    msi, mfe = azure(states)
    code, out = cli(
        capsys, caplog, "submit", "--target", "azureml", "--workspace", WSNAME, "--config", CONFIG, "--wait"
    )
    assert code == 1, out
    job_name = mfe.find("PUT", WS_PATH + r"/jobs/[a-z0-9_]+")[0].path.rsplit("/", 1)[1]
    lines = [ln for ln in out.splitlines() if ln.startswith("[") and ln.split(" ")[0].strip("[]") in STAGES]
    assert lines[5:] == ["[data_prep] running", "[data_prep] succeeded", "[train] running", "[train] failed"]
    assert f"run {job_name}: failed" in out
    after = _ws_calls(mfe)[_ws_calls(mfe).index(("PUT", f"{{ws}}/jobs/{job_name}")) + 1 :]
    job, steps = ("GET", f"{{ws}}/jobs/{job_name}"), ("GET", f"/history/v1.0{{ws}}/runs/{job_name}/children")
    # each poll: the job (ours, then the SDK's before listing children, each with the workspace's
    # location), then its steps from run history, found through the workspace's discovery URL
    ws = ("GET", "{ws}")
    assert after == [job, ws, job, ws, ("GET", "/discovery"), steps] * 3
    code, out = cli(capsys, caplog, "status", "--target", "azureml", "--workspace", WSNAME, job_name)
    assert code == 1
    assert ["train", "failed", "-"] in [ln.split() for ln in out.splitlines()]


def test_azureml_schedule_creates_a_job_schedule(azure, capsys, caplog, tmp_path, monkeypatch):
    msi, mfe = azure([])
    # the workspace from the config.json the portal hands out, in the working folder
    for k in ("AZURE_SUBSCRIPTION_ID", "AZURE_RESOURCE_GROUP"):
        monkeypatch.delenv(k)
    (tmp_path / "config.json").write_text(
        json.dumps({"subscription_id": SUB, "resource_group": RG, "workspace_name": WSNAME})
    )
    monkeypatch.chdir(tmp_path)
    code, out = cli(
        capsys,
        caplog,
        "schedule",
        "--target",
        "azureml",
        "--config",
        CONFIG,
        "--cron",
        "0 3 * * 1",
        "--timezone",
        "W. Europe Standard Time",
    )
    assert code == 0, out
    assert all(p.startswith((WS_PATH, "/history/v1.0" + WS_PATH, "/discovery")) for _, p in mfe.calls())
    assert _ws_calls(mfe)[-1] == ("PUT", f"{{ws}}/schedules/{param_name(NAME).replace('-', '_')}_retrain")
    sched = mfe.requests[-1].json["properties"]
    assert sched["trigger"]["triggerType"] == "Cron" and sched["trigger"]["expression"] == "0 3 * * 1"  # 5 fields
    assert sched["trigger"]["timeZone"] == "W. Europe Standard Time"
    assert sched["action"]["actionType"] == "CreateJob"
    assert list(sched["action"]["jobDefinition"]["jobs"]) == STAGES
    assert "no concurrency limit or catch-up setting" in out
    assert_bodies_clean(mfe)


def test_azureml_needs_a_workspace(capsys, caplog, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no config.json here
    code, out = cli(capsys, caplog, "submit", "--target", "azureml", "--config", CONFIG)
    assert code == 2 and "error: no AzureML workspace (missing subscription, resource group, workspace)" in out
    assert "Traceback" not in out


def test_a_secret_echoed_by_a_server_is_masked_in_the_error(capsys, caplog):
    def refuse(req, m):  # a proxy that quotes the request's Authorization header back
        return 401, {"code": 16, "message": f"token {req.headers.get('authorization')} rejected"}

    with recorders.Recorder(
        [("GET", r"/apis/v2beta1/runs/([^/]+)", refuse), ("GET", r"/apis/v2beta1/healthz", lambda r, m: (200, {}))]
    ) as rec:
        code, out = cli(capsys, caplog, "status", "--target", "kfp", "--host", rec.url, "run-1")
    assert code == 2 and "HTTP 401" in out and "token Bearer *** rejected" in out
    assert_no_secret(out)


# ------------------------------------------------------------------------------------------
# A fourth engine is one new file


TOY = """
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from .base import Target


class ToySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    greeting: str = "hello"


class ToyTarget(Target):
    name = "toy"
    title = "Toy engine"
    settings = ToySettings
    default_out = "toy.txt"

    def compile(self, dag, cfg, out):
        from .compile_common import settings

        Path(out).write_text(settings(cfg, "toy").greeting + " " + " -> ".join(s.name for s in dag) + "\\n")
        return Path(out)

    def validate(self, path):
        return [] if Path(path).read_text().startswith("hello") else ["not a toy file"]

    def recognizes(self, first_doc, path):
        return str(path).endswith(".txt")


TARGET = ToyTarget()
"""


def test_a_fourth_engine_is_one_new_file(tmp_path):
    import shutil

    from helpers import run_cli

    for item in ("pipeline.py", "core", "runtime", "stages", "engines", "cli", "configs"):
        src = REPO / item
        (
            shutil.copytree(src, tmp_path / item, ignore=shutil.ignore_patterns("__pycache__"))
            if src.is_dir()
            else shutil.copy(src, tmp_path / item)
        )
    (tmp_path / "engines" / "toy.py").write_text(TOY)
    env = {"PYTHONPATH": str(tmp_path)}

    def cli(*args: str):
        return run_cli("pipeline.py", *args, cwd=tmp_path, env=env, timeout=300)

    compile_toy = ["compile", "--target", "toy", "--config", "configs/default.yaml"]
    r = cli(*compile_toy, "--out", "out.txt")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out.txt").read_text() == "hello data_prep -> train -> merge -> onnx_build -> evaluate\n"
    r = cli("validate", "out.txt")  # guessed: the toy's
    assert r.returncode == 0 and "out.txt: valid" in r.stdout, r.stderr
    r = cli(*compile_toy, "--out", "o.txt", "--set", "targets.toy.greting=hi")
    assert r.returncode == 2 and "targets.toy.greting: unknown key" in r.stderr
    assert "{argo,azureml,kfp,toy}" in cli("submit", "--help").stdout
