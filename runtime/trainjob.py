"""The launcher of a multi-node stage: moves its artifacts between the engine and the TrainJob's nodes.

A Kubeflow Trainer TrainJob's pods see no KFP or Argo artifact, only the model-cache volume. So the data
goes through a job folder there (engines/trainjob.py builds the TrainJob; docs/multi-node.md):

    python -m runtime.trainjob stage-in --dataset DIR --job-dir JOB     (Argo: before the resource step)
    python -m runtime.trainjob stage-out --adapter DIR --job-dir JOB    (Argo: after it)
    python -m runtime.trainjob run --manifest JSON --inputs dataset --outputs adapter --dataset DIR
                                   --adapter DIR [--<key> VALUE ...] [--kfp-executor-input JSON]
                                                                        (KFP: all of it, in one task)

``stage-in`` copies the sealed inputs into JOB; the nodes train there and node 0 seals the adapter in
JOB; ``stage-out`` verifies that seal and copies the artifact, seal included, to the engine's output
path. ``run`` also creates the TrainJob with the run's parameter values, waits for its status
(``Complete`` or ``Failed``), and writes KFP's executor output. A failed TrainJob (a lost node) exits 1,
which the engines retry: the next TrainJob resumes from rank 0's checkpoint on the cache volume.
"""

from __future__ import annotations

import json
import logging
import secrets
import shutil
import sys
import time
from pathlib import Path

from core import artifacts
from core.errors import UserError

log = logging.getLogger("slm")

GROUP, VERSION, PLURAL = "trainer.kubeflow.org", "v1alpha1", "trainjobs"
JOB_DIR_ENV, JOB_ROOT, JOB_TOKEN = "SLM_TRAINJOB_DIR", "/cache/trainjobs", "TRAINJOB"  # as engines/trainjob.py
NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
POLL_SECONDS = 15


def stage_in(inputs: dict[str, Path], job_dir: Path) -> None:
    """Each sealed input into ``job_dir/<name>``, replacing what an earlier try left."""
    for name, src in inputs.items():
        artifacts.verify(src)
        dst = job_dir / name
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(src, dst)
        log.info("staged %s into %s", name, dst)


def stage_out(outputs: dict[str, Path], job_dir: Path) -> dict[str, dict]:
    """Node 0's sealed outputs from ``job_dir`` to the engine's output paths; their seals, by name."""
    seals = {}
    for name, dst in outputs.items():
        src = job_dir / name
        seals[name] = artifacts.verify(src)  # a node that failed leaves no seal: nothing passes for an output
        dst.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, dst, dirs_exist_ok=True)
        log.info("collected %s from %s", name, src)
    return seals


def with_values(manifest: dict, flags: dict[str, str], name: str) -> dict:
    """The TrainJob of this run: its name, its job folder, and the run's values of the stage's flags."""
    doc = json.loads(json.dumps(manifest))
    meta = doc["metadata"]
    meta["name"] = name
    meta.pop("generateName", None)
    trainer = doc["spec"]["trainer"]
    for env in trainer["env"]:
        if env["name"] == JOB_DIR_ENV:
            env["value"] = env["value"].replace(JOB_TOKEN, name)
    args = trainer["args"]
    for i, arg in enumerate(args[:-1]):
        if arg.startswith("--") and arg[2:] in flags and not args[i + 1].startswith("$("):
            args[i + 1] = flags[arg[2:]]
    return doc


def job_dir_of(doc: dict) -> Path:
    return Path(next(e["value"] for e in doc["spec"]["trainer"]["env"] if e["name"] == JOB_DIR_ENV))


def wait(api, namespace: str, name: str) -> None:
    """Until the TrainJob's Complete or Failed condition is True; Failed is a transient error."""
    while True:
        job = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        for cond in (job.get("status") or {}).get("conditions") or []:
            if cond.get("status") != "True":
                continue
            if cond.get("type") == "Complete":
                log.info("TrainJob %s complete", name)
                return
            if cond.get("type") == "Failed":
                raise ConnectionError(f"TrainJob {name} failed: {cond.get('reason')}: {cond.get('message')}")
        time.sleep(POLL_SECONDS)


def launch(manifest: dict, inputs: dict[str, Path], flags: dict[str, str]) -> Path:
    """Stage in, create the TrainJob, wait for it; its job folder."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        raise UserError(
            "a multi-node train creates a Kubeflow Trainer TrainJob from a pod of the cluster; this is no pod "
            "(kfp.local cannot run it: use train.nodes 1 there, or pipeline.py run)"
        ) from None
    namespace = NAMESPACE_FILE.read_text().strip()
    name = manifest["metadata"]["generateName"] + secrets.token_hex(3)[:5]
    doc = with_values(manifest, flags, name)
    job_dir = job_dir_of(doc)
    stage_in(inputs, job_dir)
    api = client.CustomObjectsApi()
    api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, doc)
    log.info("created TrainJob %s/%s: %d node(s)", namespace, name, doc["spec"]["trainer"]["numNodes"])
    wait(api, namespace, name)
    return job_dir


def finish(outputs: dict[str, Path], job_dir: Path, executor_input: str | None) -> None:
    """Stage out, KFP's executor output for the outputs, and the job folder removed (the outputs
    live on in the engine's artifact store)."""
    from runtime import kfp_output

    seals = stage_out(outputs, job_dir)
    if executor_input:
        kfp_output.write(json.loads(executor_input), seals, [], outputs)
    shutil.rmtree(job_dir, ignore_errors=True)


def _flags(argv: list[str]) -> dict[str, str]:
    """``--key value`` pairs (also ``--key=value``)."""
    out, i = {}, 0
    while i < len(argv):
        key, eq, value = argv[i].partition("=")
        if not key.startswith("--"):
            raise UserError(f"runtime.trainjob: expected --flag, got {argv[i]!r}")
        if eq:
            out[key[2:]] = value
        elif i + 1 < len(argv):
            out[key[2:]] = argv[i + 1]
            i += 1
        i += 1
    return out


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="[trainjob] %(message)s", stream=sys.stderr)
    if not argv or argv[0] not in ("stage-in", "stage-out", "run"):
        print("usage: python -m runtime.trainjob stage-in|stage-out|run --flag value ...", file=sys.stderr)
        return 2
    what, flags = argv[0], _flags(argv[1:])
    try:
        if what == "run":
            _run(flags)
        else:  # every flag but --job-dir names a port and its path
            job_dir = Path(flags.pop("job-dir"))
            ports = {name: Path(path) for name, path in flags.items()}
            if what == "stage-in":
                stage_in(ports, job_dir)
            else:
                stage_out(ports, job_dir)
    except KeyError as e:
        print(f"error: [trainjob] missing flag --{e.args[0]}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - one line and the stage harness's exit codes
        from core.runner import failure

        code, line = failure(e)
        print(f"error: [trainjob] {line}", file=sys.stderr)
        return code
    return 0


def _run(flags: dict[str, str]) -> None:
    manifest = json.loads(flags.pop("manifest"))
    executor_input = flags.pop("kfp-executor-input", None)
    # --inputs/--outputs: the stage's port names (comma-separated); their flags carry this pod's paths.
    inputs = {n: Path(flags.pop(n)) for n in flags.pop("inputs").split(",") if n}
    outputs = {n: Path(flags.pop(n)) for n in flags.pop("outputs").split(",") if n}
    finish(outputs, launch(manifest, inputs, flags), executor_input)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
