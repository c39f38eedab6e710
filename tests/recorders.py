"""Loopback stand-ins for the cluster engines' API servers, recording every request.

Each :class:`Recorder` is an ``http.server`` thread on 127.0.0.1 (HTTPS with a certificate
made here when asked) that answers from a route table with the minimal JSON the real client
libraries (kfp, hera, azure-ai-ml) accept, and records each request: method, path, query,
headers and body. Nothing of the clients is replaced; these servers are the only fake.

- :func:`kfp_routes`: the KFP v2beta1 API (pipelines, upload, experiments, runs, recurring runs);
- :func:`argo_routes`: the Argo Server API (workflows, cron workflows);
- :func:`azureml_routes` and :func:`msi_routes`: the AzureML workspace API (ARM-style resource
  paths under the MFE endpoint, model assets included) and an AzureML managed-identity
  endpoint for the credential;
- :func:`azureml_mlflow_routes`: AzureML's MLflow tracking API and run-history artifact API,
  and the blob endpoint an artifact is uploaded to (what the ``azureml-mlflow`` plugin calls
  for an ``azureml://`` tracking URI);
- :func:`model_registry_routes`: the Kubeflow Model Registry REST API (registered models,
  versions, model artifacts), kept in memory so a second registration sees the first.

Runs progress through ``progression`` (a list of answers to successive GETs of a run; the
last repeats), so ``--wait`` sees stage state changes and the final state.
"""

from __future__ import annotations

import base64
import datetime
import http.server
import json
import re
import socketserver
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


Handler = Callable[[Request, re.Match], tuple[int, Any]]


@dataclass
class Recorder:
    routes: list[tuple[str, str, Handler]]
    tls: tuple[Path, Path] | None = None  # (cert.pem, key.pem)
    requests: list[Request] = field(default_factory=list)

    def __enter__(self) -> "Recorder":
        recorder = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _handle(self):
                url = urllib.parse.urlsplit(self.path)
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                req = Request(
                    self.command,
                    url.path,
                    dict(urllib.parse.parse_qsl(url.query)),
                    {k.lower(): v for k, v in self.headers.items()},
                    body,
                )
                recorder.requests.append(req)
                for method, pattern, fn in recorder.routes:
                    m = re.fullmatch(pattern, url.path)
                    if m and method == self.command:
                        code, answer = fn(req, m)
                        break
                else:
                    code, answer = (
                        404,
                        {"error": f"no route for {self.command} {url.path}", "code": 5, "message": "not found"},
                    )
                data = json.dumps(answer).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), H)
        if self.tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(self.tls[0]), str(self.tls[1]))
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.server.server_address[1]}"

    def calls(self) -> list[tuple[str, str]]:
        """``[(method, path), ...]`` in order."""
        return [(r.method, r.path) for r in self.requests]

    def find(self, method: str, pattern: str) -> list[Request]:
        return [r for r in self.requests if r.method == method and re.fullmatch(pattern, r.path)]


def progression(answers: list[Any]) -> Callable[[], Any]:
    """Successive answers; the last one repeats."""
    state = {"i": 0}

    def next_answer():
        answer = answers[min(state["i"], len(answers) - 1)]
        state["i"] += 1
        return answer

    return next_answer


def multipart_file(req: Request) -> bytes:
    """The (single) file part of a multipart/form-data body."""
    boundary = re.search(r"boundary=([^;]+)", req.headers["content-type"]).group(1).strip('"').encode()
    for part in req.body.split(b"--" + boundary):
        head, sep, content = part.partition(b"\r\n\r\n")
        if sep and b"filename=" in head:
            return content.rsplit(b"\r\n", 1)[0]
    raise AssertionError("no file part in the upload")


# ------------------------------------------------------------------------------------------
# KFP v2beta1


STAGE_SECONDS = 42.0  # every finished stage ran this long


def _times(state: str) -> dict:
    """A finished stage's start and end (``start_time``/``end_time``); a running one's start."""
    times = {"start_time": "2026-11-30T03:00:00Z"}
    if state.upper() in ("SUCCEEDED", "FAILED", "ERROR"):
        times["end_time"] = "2026-11-30T03:00:42Z"
    return times


def kfp_routes(run_states: list[dict], existing_pipeline: str | None = None, prefix: str = "") -> list:
    """``run_states``: successive ``GET /runs/{id}`` answers (``{"state": ..., "tasks": {stage: state}}``);
    ``prefix``: a path regex before ``/apis`` (the Kubernetes API server's service proxy)."""
    runs = progression(run_states)

    def pipelines(req, m):
        if existing_pipeline:
            return 200, {"pipelines": [{"pipeline_id": "pipe-1", "display_name": existing_pipeline}], "total_size": 1}
        return 200, {}

    def run_json(state: dict) -> dict:
        return {
            "run_id": "run-1",
            "display_name": "run",
            "experiment_id": "exp-1",
            "state": state["state"],
            "run_details": {
                "task_details": [
                    {"task_id": f"t-{n}", "display_name": n, "state": s, **_times(s)}
                    for n, s in state.get("tasks", {}).items()
                ]
            },
            **({"error": {"message": state["error"]}} if state.get("error") else {}),
        }

    return [
        (method, prefix + pattern, fn)
        for method, pattern, fn in [
            ("GET", r"/apis/v2beta1/healthz", lambda r, m: (200, {"multi_user": False})),
            ("GET", r"/apis/v2beta1/pipelines", pipelines),
            (
                "POST",
                r"/apis/v2beta1/pipelines/upload",
                lambda r, m: (200, {"pipeline_id": "pipe-1", "display_name": r.query.get("name")}),
            ),
            (
                "POST",
                r"/apis/v2beta1/pipelines/upload_version",
                lambda r, m: (
                    200,
                    {
                        "pipeline_id": r.query.get("pipelineid"),
                        "pipeline_version_id": "ver-2",
                        "display_name": r.query.get("name"),
                    },
                ),
            ),
            (
                "GET",
                r"/apis/v2beta1/pipelines/([^/]+)/versions",
                lambda r, m: (
                    200,
                    {
                        "pipeline_versions": [{"pipeline_id": m.group(1), "pipeline_version_id": "ver-1"}],
                        "total_size": 1,
                    },
                ),
            ),
            ("GET", r"/apis/v2beta1/experiments", lambda r, m: (200, {})),
            (
                "POST",
                r"/apis/v2beta1/experiments",
                lambda r, m: (200, {"experiment_id": "exp-1", "display_name": r.json["display_name"]}),
            ),
            ("POST", r"/apis/v2beta1/runs", lambda r, m: (200, {**r.json, "run_id": "run-1", "state": "PENDING"})),
            ("GET", r"/apis/v2beta1/runs/run-1", lambda r, m: (200, run_json(runs()))),
            (
                "GET",
                r"/apis/v2beta1/runs/([^/]+)",
                lambda r, m: (404, {"code": 5, "message": f"run {m.group(1)} not found"}),
            ),
            (
                "POST",
                r"/apis/v2beta1/recurringruns",
                lambda r, m: (200, {**r.json, "recurring_run_id": "rr-1", "status": "ENABLED"}),
            ),
        ]
    ]


# ------------------------------------------------------------------------------------------
# Argo Server


def argo_routes(run_states: list[dict]) -> list:
    """``run_states``: successive ``GET /workflows/{ns}/{name}`` answers
    (``{"phase": ..., "tasks": {task: phase}}``)."""
    runs = progression(run_states)
    created: dict[str, Any] = {}

    def create(req, m):
        wf = req.json["workflow"]
        wf["metadata"] = {**wf["metadata"], "name": wf["metadata"]["generateName"] + "x7k2p", "namespace": m.group(1)}
        created["wf"] = wf
        return 200, wf

    def get(req, m):
        if m.group(2) != created.get("wf", {}).get("metadata", {}).get("name"):
            return 404, {"code": 5, "message": f'workflows.argoproj.io "{m.group(2)}" not found'}
        state = runs()
        wf = dict(
            created.get("wf") or {"metadata": {}, "spec": {"entrypoint": "main", "templates": [{"name": "main"}]}}
        )
        wf["metadata"] = {"name": m.group(2), "namespace": m.group(1)}
        nodes = {
            f"{m.group(2)}-{i}": {
                "id": f"{m.group(2)}-{i}",
                "name": f"{m.group(2)}.{t}",
                "displayName": t,
                "type": "Pod",
                "phase": p,
                "templateName": t,
                **{{"start_time": "startedAt", "end_time": "finishedAt"}[k]: v for k, v in _times(p).items()},
            }
            for i, (t, p) in enumerate(state.get("tasks", {}).items())
        }
        wf["status"] = {
            "phase": state["phase"],
            "nodes": nodes,
            **({"message": state["message"]} if state.get("message") else {}),
        }
        return 200, wf

    def cron(req, m):
        cw = req.json["cronWorkflow"]
        cw["metadata"] = {**cw["metadata"], "namespace": m.group(1)}
        return 200, cw

    return [
        ("POST", r"/api/v1/workflows/([^/]+)", create),
        ("GET", r"/api/v1/workflows/([^/]+)/([^/]+)", get),
        ("POST", r"/api/v1/cron-workflows/([^/]+)", cron),
    ]


# ------------------------------------------------------------------------------------------
# AzureML: a managed-identity endpoint (plain HTTP, as on AzureML compute) and the workspace API


def jwt(claims: dict) -> str:
    def b64(d: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()

    return f"{b64({'typ': 'JWT', 'alg': 'none'})}.{b64(claims)}.c2ln"


def msi_routes(secret: str) -> list:
    """AzureML's identity endpoint (``MSI_ENDPOINT`` + ``MSI_SECRET``): a JWT for the asked resource."""

    def token(req, m):
        if req.headers.get("secret") != secret:
            return 401, {"error": "unauthorized"}
        resource = req.query.get("resource", "https://ml.azure.com")
        now = int(time.time())
        claims = {
            "aud": resource.rstrip("/") if "ml.azure.com" in resource else resource,
            "iss": "https://sts.windows.net/t/",
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
            "oid": "00000000-0000-0000-0000-000000000001",
            "tid": "00000000-0000-0000-0000-0000000000aa",
            "appid": "loopback",
        }
        return 200, {
            "access_token": jwt(claims),
            "expires_on": str(now + 3600),
            "resource": resource,
            "token_type": "Bearer",
        }

    return [("GET", r"/msi/token", token)]


def make_tls(folder: Path, host: str = "127.0.0.1") -> tuple[Path, Path, Path]:
    """A CA and a server certificate for ``host`` (an IP address or a DNS name): (ca.pem, cert.pem, key.pem)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    try:
        san = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        san = x509.DNSName(host)

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "slm-pipeline loopback CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([san]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = folder / "ca.pem", folder / "cert.pem", folder / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


WS = r"/subscriptions/([^/]+)/resourceGroups/([^/]+)/providers/Microsoft\.MachineLearningServices/workspaces/([^/]+)"


def azureml_routes(job_states: list[dict]) -> list:
    """The workspace API as the SDK calls it for a pipeline job, its status and a schedule.

    ``job_states``: successive answers for the job and its steps (``{"status": ..., "steps": {stage: status}}``)."""
    jobs: dict[str, dict] = {}
    polls = {"i": 0}  # one poll: GET the job (twice: ours, and the SDK's before listing steps), then its steps

    def state() -> dict:
        return job_states[min(polls["i"], len(job_states) - 1)]

    def echo(req, m, **props):
        body = req.json or {}
        name = req.path.rstrip("/").rsplit("/", 1)[-1]
        return 200, {
            "id": req.path,
            "name": name,
            "type": "x",
            **body,
            "properties": {**(body.get("properties") or {}), **props},
        }

    def compute(req, m):
        return 200, {
            "id": req.path,
            "name": m.group(4),
            "location": "westeurope",
            "properties": {
                "computeType": "AmlCompute",
                "provisioningState": "Succeeded",
                "properties": {"vmSize": "STANDARD_DS3_V2", "scaleSettings": {"maxNodeCount": 4, "minNodeCount": 0}},
            },
        }

    def workspace(req, m):  # its discovery URL points the run-history client back here
        return 200, {
            "id": req.path,
            "name": m.group(3),
            "location": "westeurope",
            "properties": {
                "discoveryUrl": f"https://{req.headers['host']}/discovery",
                "mlFlowTrackingUri": f"azureml://westeurope.api.azureml.ms/mlflow/v1.0{req.path}",
                "workspaceId": "11111111-2222-3333-4444-555555555555",
            },
        }

    def discovery(req, m):
        here = f"https://{req.headers['host']}"
        return 200, {
            k: here
            for k in (
                "api",
                "catalog",
                "experimentation",
                "gallery",
                "history",
                "hyperdrive",
                "labeling",
                "modelmanagement",
                "pipelines",
                "studiotrace",
            )
        }

    def put_job(req, m):
        name = m.group(4)
        code, body = echo(
            req,
            m,
            status="NotStarted",
            services={"Studio": {"endpoint": f"https://ml.azure.com/runs/{name}?wsid=/subscriptions/{m.group(1)}"}},
        )
        jobs[name] = body
        return code, body

    def job_json(name: str, status: str, parent: str | None = None, display: str | None = None) -> dict:
        base = jobs.get(name) or {"id": "", "name": name, "properties": {"jobType": "Command"}}
        props = dict(base["properties"])
        props.update(status=status)
        if parent:
            props = {
                "jobType": "Command",
                "status": status,
                "displayName": display,
                "experimentName": "x",
                "command": "echo",
                "environmentId": "azureml:env:1",
                "computeId": "cpu-cluster",
                "properties": {"azureml.parentrunid": parent},
            }
        return {
            "id": base.get("id") or f"/jobs/{name}",
            "name": name,
            "type": "Microsoft.MachineLearningServices/workspaces/jobs",
            "properties": props,
        }

    def get_job(req, m):
        name = m.group(4)
        if name not in jobs:
            return 404, {"error": {"code": "UserError", "message": f"job {name} not found"}}
        return 200, job_json(name, state()["status"])

    def children(req, m):  # the run-history API: the pipeline job's steps as child runs
        parent = m.group(4)
        steps = state().get("steps", {})
        polls["i"] += 1
        return 200, {
            "value": [
                {
                    "runId": f"{parent}_{stage}",
                    "parentRunId": parent,
                    "displayName": stage,
                    "status": status,
                    "experimentId": "x",
                }
                for stage, status in steps.items()
            ],
            "nextLink": None,
        }

    models: dict[str, list[dict]] = {}  # model assets: name -> versions

    def model_versions(req, m):
        return 200, {"value": sorted(models.get(m.group(4), []), key=lambda v: -int(v["name"]))}

    def put_model(req, m):  # the service answers with the version's flavors, an empty map here
        code, body = echo(req, m, provisioningState="Succeeded", flavors={})
        models.setdefault(m.group(4), []).append(body)
        return code, body

    return [
        ("GET", r"/discovery", discovery),
        ("GET", WS + r"/models/([^/]+)/versions", model_versions),
        ("PUT", WS + r"/models/([^/]+)/versions/([^/]+)", put_model),
        ("GET", WS + r"/models/([^/]+)", lambda r, m: (404, {"error": {"code": "NotFound", "message": "no model"}})),
        ("GET", WS + r"/computes/([^/]+)", compute),
        ("GET", WS, workspace),
        ("PUT", WS + r"/environments/([^/]+)/versions/([^/]+)", lambda r, m: echo(r, m)),
        ("PUT", WS + r"/components/([^/]+)/versions/([^/]+)", lambda r, m: echo(r, m)),
        (
            "GET",
            WS + r"/components/([^/]+)/versions/([^/]+)",
            lambda r, m: (404, {"error": {"code": "NotFound", "message": "no"}}),
        ),
        ("PUT", WS + r"/jobs/([^/]+)", put_job),
        ("GET", WS + r"/jobs/([^/]+)", get_job),
        ("GET", r"/history/v1\.0" + WS + r"/runs/([^/]+)/children", children),
        ("PUT", WS + r"/schedules/([^/]+)", lambda r, m: echo(r, m, provisioningState="Succeeded")),
    ]


MODEL_REGISTRY_API = "/api/model_registry/v1"


def model_registry_routes() -> list:
    """The REST calls ``model_registry.ModelRegistry`` makes to connect, look up and register."""
    store: dict[str, dict[str, dict]] = {"registered_models": {}, "model_versions": {}, "artifacts": {}}
    ids = iter(range(1, 10**6))

    def create(kind: str, extra: dict | None = None):
        def handler(req, m):
            body = {
                **req.json,
                **(extra or {}),
                "id": str(next(ids)),
                "createTimeSinceEpoch": "1",
                "lastUpdateTimeSinceEpoch": "1",
            }
            if m.groups():
                body["modelVersionId"] = m.group(1)
            store[kind][body["id"]] = body
            return 201, body

        return handler

    def find(kind: str, **match):
        def handler(req, m):
            for item in store[kind].values():
                if all(item.get(field) == req.query.get(q) for field, q in match.items()):
                    return 200, item
            return 404, {"code": "404", "message": f"no {kind} matches {req.query}"}

        return handler

    def listing(req, m):
        items = list(store["registered_models"].values())
        return 200, {
            "items": items,
            "size": len(items),
            "pageSize": int(req.query.get("pageSize", 100)),
            "nextPageToken": "",
        }

    api = re.escape(MODEL_REGISTRY_API)
    return [
        ("GET", api + r"/registered_models", listing),
        ("GET", api + r"/registered_model", find("registered_models", name="name")),
        ("POST", api + r"/registered_models", create("registered_models")),
        ("GET", api + r"/model_version", find("model_versions", name="name", registeredModelId="parentResourceId")),
        ("POST", api + r"/model_versions", create("model_versions")),
        ("POST", api + r"/model_versions/([^/]+)/artifacts", create("artifacts")),
    ]


def azureml_mlflow_routes(run_id: str, experiment_id: str) -> list:
    """The job's MLflow run (AzureML keeps it: ``runs/get`` answers it), batches of params,
    metrics and tags, and report.html through an empty artifact plus a SAS blob upload."""
    mlflow_api = r"/mlflow/v2\.0" + WS + r"/api/2\.0/mlflow"

    def get_run(req, m):
        here = (
            f"azureml://{req.headers['host']}/mlflow/v2.0/subscriptions/{m.group(1)}/resourceGroups/{m.group(2)}"
            f"/providers/Microsoft.MachineLearningServices/workspaces/{m.group(3)}"
        )
        return 200, {
            "run": {
                "info": {
                    "run_id": run_id,
                    "experiment_id": experiment_id,
                    "status": "RUNNING",
                    "start_time": 1,
                    "lifecycle_stage": "active",
                    "artifact_uri": f"{here}/experiments/{experiment_id}/runs/{run_id}/artifacts",
                },
                "data": {"params": [], "metrics": [], "tags": []},
            }
        }

    def empty_artifacts(req, m):
        paths = [p["path"] for p in req.json["paths"]]
        blob = f"https://{req.headers['host']}/devstoreaccount1/azureml/ExperimentRun/dcid.{run_id}"
        return 200, {
            "artifacts": {p: {"path": p, "origin": "ExperimentRun", "container": f"dcid.{run_id}"} for p in paths},
            "artifactContentInformation": {
                p: {
                    "contentUri": f"{blob}/{p}?sv=2021-08-06&sig=sas-CANARY",
                    "origin": "ExperimentRun",
                    "container": f"dcid.{run_id}",
                    "path": p,
                }
                for p in paths
            },
        }

    experiment = {"experiment": {"experiment_id": experiment_id, "name": "slm", "lifecycle_stage": "active"}}
    return [
        ("GET", mlflow_api + r"/runs/get", get_run),
        ("GET", mlflow_api + r"/experiments/get", lambda r, m: (200, experiment)),
        ("POST", mlflow_api + r"/runs/(update|log-batch)", lambda r, m: (200, {})),
        (
            "POST",
            r"/history/v1\.0" + WS + r"/experiments/([^/]+)/runs/([^/]+)/artifacts/batch/metadata",
            empty_artifacts,
        ),
        ("PUT", r"/devstoreaccount1/azureml/ExperimentRun/.+", lambda r, m: (201, {})),
    ]
