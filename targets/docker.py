"""The docker target: build the stage images, push them, and run the DAG in them.

    python -m targets.docker build [--variant cpu|cuda] [--config C] [--base-image IMG]
    python -m targets.docker push  --registry R [--variant cpu|cuda] [--config C]
    python -m targets.docker names [--variant cpu|cuda] [--config C]
    python pipeline.py run --runner docker ...      (-> run_pipeline below)

Images (images/README.md): one shared base (a venv with torch + transformers + pydantic +
PyYAML) and a thin image per stage that adds the stage's own libraries and the code. Names
come from ``targets.compile_common.image_for``, the function the compile targets use.

Dependencies are resolved here, on the host, from the one pin list (requirements.txt,
requirements-nodeps.txt, requirements.lock), downloaded as
wheels into ``images/.build/store-<variant>/``, and hard-linked per image into
``images/.build/wheels/`` right before that image's ``docker build --network none``. So the
images run the exact library versions the venv runs, and the builds need no network.

The runner reuses ``targets.local.run_pipeline`` with its own ``execute``: each stage runs in
its image through the docker SDK, with the run folder at ``/io``, no network, as the host's
uid:gid (or, for root, the images' unprivileged user), logs streamed, containers removed.
"""
from __future__ import annotations

import argparse
import codecs
import fcntl
import json
import os
import posixpath
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from components.common.config import Config, load_config
from components.common.errors import UserError
from components.common.hashing import ROOT, code_hash
from components.registry import STAGES, Pipeline, StageSpec, Step

IMAGES = ROOT / "images"
BUILD = IMAGES / ".build"
WHEELS = BUILD / "wheels"  # the one wheels folder the Dockerfiles COPY (.dockerignore)
VARIANTS = ("cpu", "cuda")
# The images' unprivileged user (images/base/Dockerfile). Used when the host user is root.
IMAGE_UID = IMAGE_GID = 10001
IO = "/io"  # the run folder inside a container
APP = "/app"  # WORKDIR: the repository inside an image
CACHE = "/cache"  # the model cache inside a container
LABEL = "org.slm-pipeline"
LABEL_CODE = f"{LABEL}.code-hash"
LABEL_STAGE = f"{LABEL}.stage"
LABEL_VARIANT = f"{LABEL}.variant"
LABEL_RUN = f"{LABEL}.run"
# The cuda variant swaps these for their CUDA builds: (name, keep the pinned version?).
CUDA_SWAPS = {"onnxruntime-genai": ("onnxruntime-genai-cuda", True), "onnxruntime": ("onnxruntime-gpu", False)}


def _image_for(spec: StageSpec, cfg: Config) -> str:
    from targets.compile_common import image_for

    return image_for(spec, cfg)


# --------------------------------------------------------------------------- names


def variant_config(cfg: Config, variant: str) -> Config:
    """``cfg`` as a run on that variant would see it (cuda: ``runtime.device=cuda``)."""
    out = cfg.model_copy(deep=True)
    out.runtime.device = "cuda" if variant == "cuda" else "cpu"
    return out


def gpu_stages() -> list[str]:
    """The stages with a CUDA image: those whose GPU resources ask for a GPU."""
    return [name for name, spec in STAGES.items() if spec.gpu and spec.gpu.gpu > 0]


def stages_for(variant: str) -> list[str]:
    return gpu_stages() if variant == "cuda" else list(STAGES)


def stage_image(name: str, cfg: Config, variant: str = "cpu") -> str:
    return _image_for(STAGES[name], variant_config(cfg, variant))


def base_image(cfg: Config, variant: str = "cpu") -> str:
    """The shared base, named like the stages (``<registry>/base:<tag>[-cuda]``)."""
    tag = cfg.images.tag + (cfg.images.gpu_tag_suffix if variant == "cuda" else "")
    return f"{cfg.images.registry.rstrip('/')}/base:{tag}"


def image_names(cfg: Config, variant: str = "cpu") -> dict[str, str]:
    return {"base": base_image(cfg, variant), **{s: stage_image(s, cfg, variant) for s in stages_for(variant)}}


# --------------------------------------------------------------------------- wheels


def _canon(name: str) -> str:
    from packaging.utils import canonicalize_name

    return canonicalize_name(name)


def pin_list() -> tuple[dict[str, str], dict[str, str]]:
    """``({name: requirement line}, {nodeps name: line})`` from the one pin list."""
    from packaging.requirements import Requirement

    out = []
    for fname in ("requirements.txt", "requirements-nodeps.txt"):
        reqs = {}
        for line in (ROOT / fname).read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line and not line.startswith("-"):
                reqs[_canon(Requirement(line).name)] = line
        out.append(reqs)
    return out[0], out[1]


def group_names(group: str) -> list[str]:
    """The package names an image group asks for (``images/<group>/requirements.in``)."""
    path = IMAGES / group / "requirements.in"
    names = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
    names = [n for n in names if n]
    pins, nodeps = pin_list()
    unknown = [n for n in names if _canon(n) not in pins and _canon(n) not in nodeps]
    if unknown:
        raise UserError(f"{path.relative_to(ROOT)}: {unknown} not in requirements.txt or requirements-nodeps.txt")
    return names


def locked_versions() -> dict[str, str]:
    """``{name: version}`` of every transitive package: ``requirements.lock`` (the frozen,
    committed set the venv installs with) or, without one, this venv's ``pip freeze``."""
    lock_file = ROOT / "requirements.lock"
    if lock_file.is_file():
        text = lock_file.read_text()
    else:
        text = subprocess.run([sys.executable, "-m", "pip", "freeze", "--exclude-editable"],
                              capture_output=True, text=True, check=True).stdout
    lock = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line and " @ " not in line:
            name, version = line.split("==", 1)
            lock[_canon(name)] = version.strip()
    return lock


def constraints(variant: str) -> list[str]:
    """Constraint lines: the pin list's transitive versions, torch forced to the variant's build."""
    from packaging.version import Version

    pins, nodeps = pin_list()
    lock = locked_versions()
    lines = {name: f"{name}=={version}" for name, version in lock.items() if name not in nodeps}
    torch = Version(lock.get("torch") or pins["torch"].split("==")[1]).public
    if variant == "cpu":
        lines["torch"] = f"torch=={torch}+cpu"  # never the CUDA build PyPI serves for plain torch
    else:
        lines["torch"] = f"torch==={torch}"  # '===': not the local +cpu wheel a find-links may hold
        for name, (swap, keep) in CUDA_SWAPS.items():
            old = lines.pop(name, None)
            if keep and old:
                lines[swap] = f"{swap}=={old.split('==', 1)[1]}"
        for name in [n for n in lines if n.startswith(("nvidia-", "cuda-")) or n == "triton"]:
            lines.pop(name)
    return list(lines.values())


def _swap(names: list[str], variant: str) -> list[str]:
    if variant != "cuda":
        return names
    return [CUDA_SWAPS.get(_canon(n), (n, True))[0] for n in names]


def resolve(names: list[str], constraint_file: Path, variant: str) -> dict[str, dict]:
    """``{name: {"version", "requires"}}``: what pip's resolver installs for ``names``."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
               "--only-binary=:all:", "--report", str(report), "-c", str(ROOT / "requirements.txt"),
               "-c", str(constraint_file), *names]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise UserError(f"cannot resolve {names} for the {variant} images:\n{proc.stderr.strip()[-2000:]}")
        data = json.loads(report.read_text())
    return {
        _canon(i["metadata"]["name"]): {"version": i["metadata"]["version"], "requires": i["metadata"].get("requires_dist", [])}
        for i in data["install"]
    }


def closure(names: list[str], resolved: dict[str, dict]) -> dict[str, str]:
    """``{name: version}``: ``names`` and everything they need, walked through the resolved
    metadata (markers evaluated for this interpreter, extras followed where asked for)."""
    from packaging.requirements import Requirement

    out: dict[str, str] = {}
    todo = [(Requirement(n), "") for n in names]
    seen: set[tuple[str, str]] = set()
    while todo:
        req, extra = todo.pop()
        if req.marker and not req.marker.evaluate({"extra": extra}):
            continue
        name = _canon(req.name)
        for want in ("", *sorted(req.extras)):
            if (name, want) in seen:
                continue
            seen.add((name, want))
            out[name] = resolved[name]["version"]
            todo += [(Requirement(r), want) for r in resolved[name]["requires"]]
    return out


def plan(variant: str) -> dict[str, dict[str, str]]:
    """``{group: {name: version}}``: base = its closure; a stage = its closure minus the base's."""
    pins, nodeps = pin_list()
    BUILD.mkdir(parents=True, exist_ok=True)
    cfile = BUILD / f"constraints-{variant}.txt"
    cfile.write_text("\n".join(constraints(variant)) + "\n")
    base_names = _swap(group_names("base"), variant)
    stages = stages_for(variant)
    wants = {s: _swap(group_names(s), variant) for s in stages}
    resolved = resolve(base_names + [n for names in wants.values() for n in names if _canon(n) not in nodeps],
                       cfile, variant)
    closures = {"base": closure(base_names, resolved)}
    for stage, names in wants.items():
        closures[stage] = closure(base_names + [n for n in names if _canon(n) not in nodeps], resolved)
    groups = {"base": closures["base"]}
    for stage in stages:
        extra = {n: v for n, v in closures[stage].items() if n not in groups["base"]}
        for n in wants[stage]:  # installed with --no-deps, at the pin list's version
            if _canon(n) in nodeps:
                extra[_canon(n)] = nodeps[_canon(n)].split("==", 1)[1]
        groups[stage] = extra
    if variant == "cpu":
        heavy = sorted({n for g in groups.values() for n in g if n.startswith(("nvidia-", "cuda-")) or n == "triton"})
        if heavy or not groups["base"]["torch"].endswith("+cpu"):
            raise UserError(f"the CPU images would get CUDA wheels ({heavy or 'torch ' + groups['base']['torch']})")
    (BUILD / f"plan-{variant}.json").write_text(json.dumps(groups, indent=2, sort_keys=True))
    return groups


def download(groups: dict[str, dict[str, str]], variant: str) -> dict[str, Path]:
    """Download every planned wheel (pip's cache makes a repeat instant); ``{name: file}``."""
    from packaging.utils import parse_wheel_filename

    store = BUILD / f"store-{variant}"
    store.mkdir(parents=True, exist_ok=True)
    wanted = {n: v for g in groups.values() for n, v in g.items()}
    have = {}
    for f in store.glob("*.whl"):
        name, version, _, _ = parse_wheel_filename(f.name)
        have[(_canon(name), str(version))] = f
    missing = [f"{n}=={v}" if variant == "cpu" or n != "torch" else f"{n}==={v}"
               for n, v in sorted(wanted.items()) if (n, v) not in have]
    if missing:
        print(f"==> downloading {len(missing)} wheels into {store.relative_to(ROOT)}", flush=True)
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "-d", str(store), *missing]
        if subprocess.run(cmd).returncode != 0:
            raise UserError(f"pip download failed for the {variant} images (see above)")
        for f in store.glob("*.whl"):
            name, version, _, _ = parse_wheel_filename(f.name)
            have[(_canon(name), str(version))] = f
    files = {}
    for n, v in wanted.items():
        if (n, v) not in have:
            raise UserError(f"no wheel for {n}=={v} in {store}")
        files[n] = have[(n, v)]
    return files


def stage_wheels(group: str, groups: dict, files: dict[str, Path]) -> None:
    """Make images/.build/wheels/ hold exactly this image's wheels (hard links) and their list."""
    shutil.rmtree(WHEELS, ignore_errors=True)
    WHEELS.mkdir(parents=True)
    lines = []
    for name, version in sorted(groups[group].items()):
        src = files[name]
        try:
            os.link(src, WHEELS / src.name)
        except OSError:
            shutil.copy2(src, WHEELS / src.name)
        lines.append(f"{name}=={version}")
    (WHEELS / "requirements.txt").write_text(
        f"# {group}: generated by targets/docker.py from images/{group}/requirements.in\n" + "\n".join(lines) + "\n"
    )


# --------------------------------------------------------------------------- build / push


def _docker_cli(args: list[str], **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "DOCKER_BUILDKIT": "0"}  # the legacy builder: no buildx needed
    return subprocess.run(["docker", *args], env=env, **kw)


def build(cfg: Config, variant: str = "cpu", base: str | None = None, stages: list[str] | None = None) -> dict:
    """Resolve, download and build the base and each stage image; returns sizes and seconds."""
    if not shutil.which("docker"):
        raise UserError("the docker CLI is not installed (apt-get install docker.io)")
    BUILD.mkdir(parents=True, exist_ok=True)
    with open(BUILD / ".lock", "w") as lock:  # one build at a time: they share images/.build/wheels
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _build(cfg, variant, base, stages)


def _build(cfg: Config, variant: str, base: str | None, stages: list[str] | None) -> dict:
    unknown = sorted(set(stages or ()) - set(stages_for(variant)))
    if unknown:
        raise UserError(f"no {variant} image for {unknown}; the {variant} images are {stages_for(variant)}")
    started = time.time()
    groups = plan(variant)
    files = download(groups, variant)
    print(f"==> wheels ready in {time.time() - started:.0f}s", flush=True)
    names = image_names(cfg, variant)
    todo = ["base", *(stages or stages_for(variant))]
    report = {}
    for group in todo:
        t0 = time.time()
        stage_wheels(group, groups, files)
        args = ["build", "--network", "none", "-f", str(IMAGES / group / "Dockerfile"), "-t", names[group],
                "--label", f"{LABEL_VARIANT}={variant}", "--build-arg", f"VARIANT={variant}"]
        if group == "base":
            if base:
                args += ["--build-arg", f"BASE_IMAGE={base}"]
        else:
            args += ["--build-arg", f"BASE={names['base']}", "--label", f"{LABEL_STAGE}={group}",
                     "--label", f"{LABEL_CODE}={code_hash(group)}"]
        print(f"==> docker {' '.join(args)} .", flush=True)
        if _docker_cli([*args, str(ROOT)]).returncode != 0:
            raise UserError(f"docker build of {names[group]} failed (see above)")
        report[group] = {"image": names[group], "seconds": round(time.time() - t0, 1), "bytes": image_size(names[group])}
    shutil.rmtree(WHEELS, ignore_errors=True)
    print(f"\n{'image':<52} {'size':>9} {'build':>7}")
    for group, r in report.items():
        print(f"{r['image']:<52} {r['bytes'] / 1e6:>7.0f}MB {r['seconds']:>6.0f}s")
    print(f"all {len(report)} {variant} images in {time.time() - started:.0f}s")
    (BUILD / f"built-{variant}.json").write_text(json.dumps(report, indent=2))
    return report


def image_size(name: str) -> int:
    proc = _docker_cli(["image", "inspect", "--format", "{{.Size}}", name], capture_output=True, text=True)
    return int(proc.stdout.strip() or 0)


def push(cfg: Config, registry: str, variant: str = "cpu") -> None:
    """Tag each stage image as ``image_for`` names it under ``registry`` and push it."""
    target = cfg.model_copy(deep=True)
    target.images.registry = registry
    for stage in stages_for(variant):
        src, dst = stage_image(stage, cfg, variant), stage_image(stage, target, variant)
        if _docker_cli(["image", "inspect", src], capture_output=True).returncode != 0:
            raise UserError(f"{src} is not built; run `make images{'-gpu' if variant == 'cuda' else ''}` first")
        if src != dst and _docker_cli(["tag", src, dst]).returncode != 0:
            raise UserError(f"docker tag {src} {dst} failed")
        print(f"==> docker push {dst}", flush=True)
        if _docker_cli(["push", dst]).returncode != 0:
            raise UserError(f"docker push {dst} failed (logged in to {registry}?)")


# --------------------------------------------------------------------------- run


def connect(timeout: int = 60):
    """A docker SDK client for ``DOCKER_HOST`` (or the default socket), checked with a ping."""
    import docker

    where = os.environ.get("DOCKER_HOST", "the default socket (unix:///var/run/docker.sock)")
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
    except Exception as e:  # noqa: BLE001 - DockerException, connection errors, bad DOCKER_HOST
        raise UserError(
            f"cannot reach a Docker daemon at {where}: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}. "
            "Start one (e.g. `eval \"$(bash .ci/docker.sh start)\"`) or set DOCKER_HOST"
        ) from None
    return client


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
        params = step.spec.params(cfg)
        for key in step.spec.external:
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


def _chown_tree(path: Path, uid: int, gid: int) -> None:
    for p in [path, *path.rglob("*")]:
        if not p.is_symlink():
            os.chown(p, uid, gid)


class DockerExecutor:
    """``execute(step, argv, run_dir) -> exit code`` for ``targets.local.run_pipeline``."""

    def __init__(self, client, dag: Pipeline, cfg: Config, variant: str):
        from components.common.models import cache_dir

        self.client, self.cfg, self.variant = client, cfg, variant
        self.images = {s.name: _image_for(s.spec, cfg) for s in dag}
        self.uid, self.gid = run_user()
        self.cache = cache_dir() if os.getuid() != 0 else cache_dir() / f"docker-uid{IMAGE_UID}"
        self.mounts = external_mounts(dag, cfg)
        self._prepared = False

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
            if built != code_hash(step.name):
                raise UserError(
                    f"image {name} was built from other code than this checkout's components/{step.name} "
                    "(or the shared code or the pin list changed since); rebuild it with "
                    f"`make images{'-gpu' if step.spec.uses_gpu(self.cfg) else ''}`"
                )

    def _prepare(self, run_dir: Path) -> None:
        self.cache.mkdir(parents=True, exist_ok=True)
        if os.getuid() == 0:  # the container user is not root: let it write the run and its cache
            _chown_tree(run_dir, self.uid, self.gid)
            _chown_tree(self.cache, self.uid, self.gid)
        self._prepared = True

    def __call__(self, step: Step, argv: list[str], run_dir: Path) -> int:
        from docker.types import DeviceRequest

        if not self._prepared:
            self._prepare(run_dir)
        spec = step.spec
        if argv[:3] != ["python", "-m", spec.module]:
            raise UserError(f"{step.name}: argv {argv[:3]} is not the image's entry point")
        res = spec.resources(self.cfg)
        volumes = {str(run_dir): {"bind": IO, "mode": "rw"}, str(self.cache): {"bind": CACHE, "mode": "rw"}}
        volumes.update({host: {"bind": inside, "mode": "ro"} for inside, host in self.mounts.items()})
        kwargs = dict(
            image=self.images[step.name],
            command=argv[3:],
            name=f"slm-{step.name}-{uuid.uuid4().hex[:8]}",
            user=f"{self.uid}:{self.gid}",
            network_mode="none",
            working_dir=APP,
            environment={
                "SLM_CACHE_DIR": CACHE,
                "HOME": "/tmp",
                "PYTHONUNBUFFERED": "1",
                "HF_HUB_OFFLINE": "1",  # no network: fail fast on a hub id instead of retrying
            },
            volumes=volumes,
            mem_limit=f"{res.memory_gb}g",
            nano_cpus=int(min(res.cpu, os.cpu_count() or 1) * 1e9),
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            labels={LABEL_RUN: str(run_dir), LABEL_STAGE: step.name},
            detach=True,
        )
        if res.gpu and spec.uses_gpu(self.cfg):
            kwargs["device_requests"] = [DeviceRequest(count=res.gpu, capabilities=[["gpu"]])]
        print(f"    image {kwargs['image']} as {kwargs['user']}, no network", flush=True)
        container = self.client.containers.create(**kwargs)
        try:
            stream = self.client.api.attach(container.id, stream=True, logs=True, demux=True)
            container.start()
            decoders = (codecs.getincrementaldecoder("utf-8")("replace"), codecs.getincrementaldecoder("utf-8")("replace"))
            for out, err in stream:
                for chunk, sink, dec in ((out, sys.stdout, decoders[0]), (err, sys.stderr, decoders[1])):
                    if chunk:
                        sink.write(dec.decode(chunk))
                        sink.flush()
            return int(container.wait().get("StatusCode", 1))
        except KeyboardInterrupt:
            container.stop(timeout=20)  # SIGTERM: the stage cleans up and exits 143
            raise
        finally:
            try:
                container.remove(force=True)
            except Exception:  # noqa: BLE001 - already gone
                pass


def run_pipeline(dag: Pipeline, cfg: Config, out: str | Path, use_cache: bool = True, client=None) -> int:
    """The local runner's loop and summary, with every stage in its image."""
    from targets.local import run_pipeline as run_local

    client = client or connect()
    variant = "cuda" if any(s.spec.uses_gpu(cfg) for s in dag) else "cpu"
    executor = DockerExecutor(client, dag, cfg, variant)
    executor.check_images(dag)
    return run_local(dag, cfg, out, use_cache=use_cache, execute=executor, root=IO)


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m targets.docker", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("build", "push", "names"):
        c = sub.add_parser(name)
        c.add_argument("--config", default="configs/default.yaml")
        c.add_argument("--variant", choices=VARIANTS, default="cpu")
        if name == "build":
            c.add_argument("--base-image", help="the image with Python 3.11 to build on (default: python:3.11-slim)")
            c.add_argument("--stages", nargs="*", help="only these stage images (default: all of the variant)")
        if name == "push":
            c.add_argument("--registry", required=True)
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config)
        if args.command == "build":
            build(cfg, args.variant, args.base_image, args.stages)
        elif args.command == "push":
            push(cfg, args.registry, args.variant)
        else:
            for group, name in image_names(cfg, args.variant).items():
                print(f"{group:<11} {name}")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
