"""The docker runner: ``python pipeline.py run --runner docker`` runs the DAG in the stage images.

It reuses ``engines.local.run_pipeline`` with its own ``execute``: each stage runs in its image
(``engines/images.py`` names, builds and labels them) through the docker SDK, with the run folder
at ``/io``, no network, as the host's uid:gid (or, for root, the images' unprivileged user),
logs streamed, containers removed. The container's PID 1 is the stage's own Python (the
images' launcher execs it), so ``docker stop``'s SIGTERM reaches the stage: train checkpoints.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import posixpath
import signal
import sys
import threading
import uuid
from pathlib import Path

from core.config import Config
from core.errors import UserError
from core.hashing import ROOT, code_hash
from core.runner import STEP_ENV
from core.spec import Pipeline, Step

from .compile_common import image_for
from .images import IMAGE_GID, IMAGE_UID, LABEL_CODE, LABEL_RUN, LABEL_STAGE, connect

IO = "/io"  # the run folder inside a container
APP = "/app"  # WORKDIR: the repository inside an image
CACHE = "/cache"  # the model cache inside a container


def run_user() -> tuple[int, int]:
    """The host's uid:gid, so the files the stages write are the user's; root maps to the image user."""
    uid, gid = os.getuid(), os.getgid()
    return (IMAGE_UID, IMAGE_GID) if uid == 0 else (uid, gid)


def external_mounts(dag: Pipeline, cfg: Config, cwd: Path | None = None) -> dict[str, str]:
    """``{container path: host path}`` for every external file a stage reads (data.path, a local
    model.base folder, ...): mounted read-only where the stage will look for it. A relative
    path resolves like the stage resolves it (working directory, then the repository), and
    the stage sees it under /app, its working directory."""
    cwd = Path(cwd or Path.cwd())
    mounts: dict[str, str] = {}
    for step in dag:
        params = step.params(cfg)
        for key in step.spec.external_keys(params):
            value = params.get(key)
            if not isinstance(value, str) or not value or ":" in value.split("/")[0]:
                continue  # unset, or a built-in source such as embedded:... / tiny-random:...
            path = Path(value).expanduser()
            if path.is_absolute():
                host, inside = path, posixpath.normpath(str(path))
            else:
                host = next((c for c in (cwd / path, ROOT / path) if c.exists()), None)
                inside = posixpath.normpath(posixpath.join(APP, path.as_posix()))
            if host is not None and host.exists():
                mounts[inside] = str(host.resolve())
    return mounts


def chown_tree(path: Path, uid: int, gid: int) -> None:
    for p in [path, *path.rglob("*")]:
        if not p.is_symlink():
            os.chown(p, uid, gid)


class DockerExecutor:
    """``execute(step, argv, run_dir) -> exit code`` for ``engines.local.run_pipeline``
    (``engines.local.Executor``): called from the runner's worker threads, one a running stage;
    ``stop()`` stops the containers that run and starts none after it."""

    def __init__(self, client, dag: Pipeline, cfg: Config):
        from core.models import cache_dir

        self.client, self.cfg = client, cfg
        self.images = {s.name: image_for(s.spec, cfg) for s in dag}
        self.uid, self.gid = run_user()
        self.cache = cache_dir() if os.getuid() != 0 else cache_dir() / f"docker-uid{IMAGE_UID}"
        self.mounts = external_mounts(dag, cfg)
        self._prepared = False
        self._lock = threading.Lock()  # a container starts before stop() (and is stopped) or not at all
        self._running: dict[str, object] = {}  # container id -> container
        self._stopping = False

    def check_images(self, steps) -> None:
        """Every image exists and was built from the code this checkout has (else the cache
        keys and the results would silently differ from the subprocess runner's)."""
        import docker

        for step in steps:
            name = self.images[step.name]
            try:
                image = self.client.images.get(name)
            except docker.errors.ImageNotFound:
                make = "make images-gpu" if step.spec.uses_gpu(self.cfg) else "make images"
                raise UserError(f"image {name} not found; build it with `{make}`") from None
            built = (image.labels or {}).get(LABEL_CODE)
            if built != code_hash(step.spec.name):  # a task's step runs its stage's image
                raise UserError(
                    f"image {name} was built from other code than this checkout's stages/{step.spec.name} "
                    "(or the shared code or the pin list changed since); rebuild it with "
                    f"`make images{'-gpu' if step.spec.uses_gpu(self.cfg) else ''}`"
                )

    def _prepare(self, run_dir: Path) -> None:
        self.cache.mkdir(parents=True, exist_ok=True)
        if os.getuid() == 0:  # the container user is not root: let it write the run and its cache
            chown_tree(run_dir, self.uid, self.gid)
            chown_tree(self.cache, self.uid, self.gid)
        self._prepared = True

    def container_args(self, step: Step, argv: list[str], run_dir: Path) -> dict:
        """``containers.create`` keyword arguments that run ``argv`` as the image's entry point would."""
        from docker.types import DeviceRequest

        spec = step.spec
        if argv[:3] != ["python", "-m", spec.module]:
            raise UserError(f"{step.name}: argv {argv[:3]} is not the image's entry point")
        res = spec.resources(self.cfg)
        volumes = {str(run_dir): {"bind": IO, "mode": "rw"}, str(self.cache): {"bind": CACHE, "mode": "rw"}}
        volumes.update({host: {"bind": inside, "mode": "ro"} for inside, host in self.mounts.items()})
        kwargs = {
            "image": self.images[step.name],
            "command": argv[3:],
            "name": f"slm-{step.name}-{uuid.uuid4().hex[:8]}",
            "user": f"{self.uid}:{self.gid}",
            "network_mode": "none",
            "working_dir": APP,
            "environment": {
                "SLM_CACHE_DIR": CACHE,
                "HOME": "/tmp",
                "PYTHONUNBUFFERED": "1",
                "HF_HUB_OFFLINE": "1",  # no network: fail fast on a hub id instead of retrying
                STEP_ENV: step.name,  # the log lines' prefix (core/runner.py)
            },
            "volumes": volumes,
            "mem_limit": f"{res.memory_gb}g",
            "nano_cpus": int(min(res.cpu, os.cpu_count() or 1) * 1e9),
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "labels": {LABEL_RUN: str(run_dir), LABEL_STAGE: step.name},
            "detach": True,
        }
        if res.gpu and spec.uses_gpu(self.cfg):
            kwargs["device_requests"] = [DeviceRequest(count=res.gpu, capabilities=[["gpu"]])]
        return kwargs

    def __call__(self, step: Step, argv: list[str], run_dir: Path) -> int:
        with self._lock:
            if self._stopping:
                return 128 + signal.SIGTERM
            if not self._prepared:
                self._prepare(run_dir)
            kwargs = self.container_args(step, argv, run_dir)
            print(f"    image {kwargs['image']} as {kwargs['user']}, no network", flush=True)
            container = self.client.containers.create(**kwargs)
            self._running[container.id] = container
        try:
            stream = self.client.api.attach(container.id, stream=True, logs=True, demux=True)
            with self._lock:
                if self._stopping:
                    return 128 + signal.SIGTERM
                container.start()
            decoders = [codecs.getincrementaldecoder("utf-8")("replace") for _ in range(2)]
            for out, err in stream:
                for chunk, sink, dec in ((out, sys.stdout, decoders[0]), (err, sys.stderr, decoders[1])):
                    if chunk:
                        sink.write(dec.decode(chunk))
                        sink.flush()
            return int(container.wait().get("StatusCode", 1))
        finally:
            with self._lock:
                del self._running[container.id]
            with contextlib.suppress(Exception):  # already gone
                container.remove(force=True)

    def stop(self) -> None:
        """``docker stop`` every running container at once: SIGTERM, the stage cleans up and exits
        143 (SIGKILL after 20 s)."""
        with self._lock:
            self._stopping = True
            running = list(self._running.values())
        threads = [threading.Thread(target=_stop_container, args=(c,)) for c in running]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


def _stop_container(container) -> None:
    with contextlib.suppress(Exception):  # it ended meanwhile
        container.stop(timeout=20)


def run_pipeline(
    dag: Pipeline, cfg: Config, out: str | Path, use_cache: bool = True, client=None, config_file=None, jobs: int = 1
) -> int:
    """The local runner's loop and summary, with every stage in its image, up to ``jobs`` at once."""
    from engines.local import run_pipeline as run_local

    client = client or connect()
    executor = DockerExecutor(client, dag, cfg)
    executor.check_images(dag)
    return run_local(dag, cfg, out, use_cache=use_cache, execute=executor, root=IO, config_file=config_file, jobs=jobs)
