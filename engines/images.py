"""The stage images: their names, their wheels, and building and pushing them (images/README.md).

    python -m engines.images build [--variant cpu|cuda] [--config C] [--base-image IMG] [--stages S ...]
    python -m engines.images push  --registry R [--variant cpu|cuda] [--config C]
    python -m engines.images names [--variant cpu|cuda] [--config C]

One shared base (a venv with torch + transformers + ...) and a thin image per stage, built from
one template (images/stage/Dockerfile), that adds the stage's own libraries and the code. Names
come from ``engines.compile_common.image_name``, the function the compile targets use.

Dependencies are resolved on the host by pip's resolver, once per image group, from the pin
lists (requirements.txt, requirements-dev.txt, requirements-nodeps.txt) and the one lock
(requirements.lock); the wheels are downloaded into ``images/.build/store-<variant>/`` and
hard-linked per image into ``images/.build/wheels/`` right before that image's build with no
network. So the images run the exact library versions the venv runs, and the builds need no network.

Docker is reached through the ``docker`` SDK only (``DOCKER_HOST``), no ``docker`` CLI. Its
``/build`` endpoint is the daemon's classic builder (what ``DOCKER_BUILDKIT=0`` picks for the
CLI), so no buildx is needed and nothing has to set that variable.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from core.config import Config, load_config
from core.errors import UserError
from core.hashing import ROOT, code_hash
from stages.registry import STAGES

from .compile_common import image_for, image_name

IMAGES = ROOT / "images"
BUILD = IMAGES / ".build"
WHEELS = BUILD / "wheels"  # the one wheels folder the Dockerfiles COPY (.dockerignore)
STAGE_DOCKERFILE = IMAGES / "stage" / "Dockerfile"  # the one template of the five stage images
VARIANTS = ("cpu", "cuda")
# The images' unprivileged user (images/base/Dockerfile). Used when the host user is root.
IMAGE_UID = IMAGE_GID = 10001
LABEL = "org.slm-pipeline"
LABEL_CODE = f"{LABEL}.code-hash"
LABEL_STAGE = f"{LABEL}.stage"
LABEL_VARIANT = f"{LABEL}.variant"
LABEL_RUN = f"{LABEL}.run"
# The cuda variant swaps these for their CUDA builds: (name, keep the pinned version?).
CUDA_SWAPS = {"onnxruntime-genai": ("onnxruntime-genai-cuda", True), "onnxruntime": ("onnxruntime-gpu", False)}


def connect(timeout: int = 60):
    """A docker SDK client for ``DOCKER_HOST`` (or the default socket), checked with a ping."""
    import docker

    where = os.environ.get("DOCKER_HOST", "the default socket (unix:///var/run/docker.sock)")
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
    except Exception as e:  # noqa: BLE001 - DockerException, connection errors, bad DOCKER_HOST
        first = str(e).splitlines()[0][:200] if str(e) else ""
        raise UserError(
            f"cannot reach a Docker daemon at {where}: {type(e).__name__}: {first}. "
            'Start one (e.g. `eval "$(bash .ci/docker.sh start)"`) or set DOCKER_HOST'
        ) from None
    return client


# --------------------------------------------------------------------------- names


def variant_config(cfg: Config, variant: str) -> Config:
    """``cfg`` as a run on that variant would see it (cuda: ``runtime.device=cuda``)."""
    out = cfg.model_copy(deep=True)
    out.runtime.device = "cuda" if variant == "cuda" else "cpu"
    return out


def stages_for(variant: str) -> list[str]:
    """The stages with an image of that variant: all for cpu; for cuda, those whose GPU resources ask for a GPU."""
    return [name for name, spec in STAGES.items() if variant != "cuda" or (spec.gpu and spec.gpu.gpu > 0)]


def stage_image(name: str, cfg: Config, variant: str = "cpu") -> str:
    return image_for(STAGES[name], variant_config(cfg, variant))


def base_image(cfg: Config, variant: str = "cpu") -> str:
    """The shared base, named like the stages (``<registry>/base:<tag>[<gpu suffix>]``)."""
    return image_name(cfg, "base", gpu=variant == "cuda")


def image_names(cfg: Config, variant: str = "cpu") -> dict[str, str]:
    return {"base": base_image(cfg, variant), **{s: stage_image(s, cfg, variant) for s in stages_for(variant)}}


# --------------------------------------------------------------------------- wheels


def canon(name: str) -> str:
    from packaging.utils import canonicalize_name

    return canonicalize_name(name)


def pin_list() -> tuple[dict[str, str], dict[str, str]]:
    """``({name: requirement line}, {nodeps name: line})`` from the pin lists: the runtime and dev
    files (the stages' cloud clients are pinned in requirements-dev.txt), and the no-deps one."""
    from packaging.requirements import Requirement

    out = []
    for fnames in (("requirements.txt", "requirements-dev.txt"), ("requirements-nodeps.txt",)):
        reqs = {}
        for fname in fnames:
            for line in (ROOT / fname).read_text().splitlines():
                line = line.split("#", 1)[0].strip()
                if line and not line.startswith("-"):
                    reqs[canon(Requirement(line).name)] = line
        out.append(reqs)
    return out[0], out[1]


def group_names(group: str) -> list[str]:
    """The package names an image group asks for (``images/<group>/requirements.in``)."""
    path = IMAGES / group / "requirements.in"
    names = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
    names = [n for n in names if n]
    pins, nodeps = pin_list()
    unknown = [n for n in names if canon(n) not in pins and canon(n) not in nodeps]
    if unknown:
        raise UserError(f"{path.relative_to(ROOT)}: {unknown} not in requirements*.txt")
    return names


def locked_versions() -> dict[str, str]:
    """``{name: version}`` of every transitive package: ``requirements.lock`` (the frozen,
    committed set the venv installs with) or, without one, this venv's ``pip freeze``."""
    lock_file = ROOT / "requirements.lock"
    if lock_file.is_file():
        text = lock_file.read_text()
    else:
        text = subprocess.run(
            [sys.executable, "-m", "pip", "freeze", "--exclude-editable"], capture_output=True, text=True, check=True
        ).stdout
    lock = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line and " @ " not in line:
            name, version = line.split("==", 1)
            lock[canon(name)] = version.strip()
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
        for name in [n for n in lines if _is_cuda(n)]:
            lines.pop(name)
    return list(lines.values())


def _is_cuda(name: str) -> bool:
    return name.startswith(("nvidia-", "cuda-")) or name == "triton"


def _swap(names: list[str], variant: str) -> list[str]:
    if variant != "cuda":
        return names
    return [CUDA_SWAPS.get(canon(n), (n, True))[0] for n in names]


def resolve(names: list[str], constraint_file: Path, variant: str) -> dict[str, str]:
    """``{name: version}``: everything pip's resolver installs for ``names`` (their closure,
    markers and extras as pip evaluates them), from its ``--dry-run --report``."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",
            "--quiet",
            "--only-binary=:all:",
            "--report",
            str(report),
            "-c",
            str(ROOT / "requirements.txt"),
            "-c",
            str(ROOT / "requirements-dev.txt"),
            "-c",
            str(constraint_file),
            *names,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise UserError(f"cannot resolve {names} for the {variant} images:\n{proc.stderr.strip()[-2000:]}")
        data = json.loads(report.read_text())
    return {canon(i["metadata"]["name"]): i["metadata"]["version"] for i in data["install"]}


def plan(variant: str) -> dict[str, dict[str, str]]:
    """``{group: {name: version}}``: base = its closure; a stage = its closure (with the base's
    names) minus the base's, plus its requirements-nodeps.txt names at their pins. One pip
    resolution per group; reused from ``images/.build/plan-<variant>.json`` while its inputs
    (names, constraints, pip's version) are unchanged."""
    import pip

    _, nodeps = pin_list()
    BUILD.mkdir(parents=True, exist_ok=True)
    cfile = BUILD / f"constraints-{variant}.txt"
    cfile.write_text("\n".join(constraints(variant)) + "\n")
    stages = stages_for(variant)
    wants = {g: _swap(group_names(g), variant) for g in ("base", *stages)}
    key = hashlib.sha256(json.dumps([pip.__version__, cfile.read_text(), wants], sort_keys=True).encode()).hexdigest()
    saved = BUILD / f"plan-{variant}.json"
    if saved.is_file() and (cached := json.loads(saved.read_text())).get("key") == key:
        return cached["groups"]
    requests = {
        "base": wants["base"],
        **{s: [*wants["base"], *(n for n in wants[s] if canon(n) not in nodeps)] for s in stages},
    }
    started = time.time()
    with ThreadPoolExecutor(max_workers=len(requests)) as pool:  # pip waits on the index, mostly
        futures = {g: pool.submit(resolve, names, cfile, variant) for g, names in requests.items()}
        closures = {g: f.result() for g, f in futures.items()}
    print(f"==> resolved {len(closures)} {variant} image groups with pip in {time.time() - started:.0f}s", flush=True)
    base = closures["base"]
    groups = {"base": base}
    for stage in stages:
        clash = {n: (v, base[n]) for n, v in closures[stage].items() if n in base and base[n] != v}
        if clash:
            raise UserError(f"the {variant} {stage} image would need other versions than its base: {clash}")
        extra = {n: v for n, v in closures[stage].items() if n not in base}
        for n in wants[stage]:  # installed with --no-deps, at the pin list's version
            if canon(n) in nodeps:
                extra[canon(n)] = nodeps[canon(n)].split("==", 1)[1]
        groups[stage] = extra
    if variant == "cpu":
        heavy = sorted({n for g in groups.values() for n in g if _is_cuda(n)})
        if heavy or not base["torch"].endswith("+cpu"):
            raise UserError(f"the CPU images would get CUDA wheels ({heavy or 'torch ' + base['torch']})")
    saved.write_text(json.dumps({"key": key, "groups": groups}, indent=2, sort_keys=True))
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
        have[(canon(name), str(version))] = f
    missing = [
        f"{n}=={v}" if variant == "cpu" or n != "torch" else f"{n}==={v}"
        for n, v in sorted(wanted.items())
        if (n, v) not in have
    ]
    if missing:
        print(f"==> downloading {len(missing)} wheels into {store.relative_to(ROOT)}", flush=True)
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            "-d",
            str(store),
            *missing,
        ]
        if subprocess.run(cmd, check=False).returncode != 0:
            raise UserError(f"pip download failed for the {variant} images (see above)")
        for f in store.glob("*.whl"):
            name, version, _, _ = parse_wheel_filename(f.name)
            have[(canon(name), str(version))] = f
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
        f"# {group}: generated by engines/images.py from images/{group}/requirements.in\n" + "\n".join(lines) + "\n"
    )


# --------------------------------------------------------------------------- build / push


def build(
    cfg: Config, variant: str = "cpu", base: str | None = None, stages: list[str] | None = None, client=None
) -> dict:
    """Resolve, download and build the base and each stage image; returns sizes and seconds."""
    unknown = sorted(set(stages or ()) - set(stages_for(variant)))
    if unknown:
        raise UserError(f"no {variant} image for {unknown}; the {variant} images are {stages_for(variant)}")
    client = client or connect()
    BUILD.mkdir(parents=True, exist_ok=True)
    with open(BUILD / ".lock", "w") as lock:  # one build at a time: they share images/.build/wheels
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _build(client, cfg, variant, base, stages or stages_for(variant))


def _build(client, cfg: Config, variant: str, base: str | None, stages: list[str]) -> dict:
    started = time.time()
    groups = plan(variant)
    files = download(groups, variant)
    print(f"==> wheels ready in {time.time() - started:.0f}s", flush=True)
    names = image_names(cfg, variant)
    report = {}
    for group in ["base", *stages]:
        t0 = time.time()
        stage_wheels(group, groups, files)
        labels = {LABEL_VARIANT: variant}
        if group == "base":
            dockerfile, args = IMAGES / "base" / "Dockerfile", {"VARIANT": variant}
            if base:
                args["BASE_IMAGE"] = base
        else:
            dockerfile, args = STAGE_DOCKERFILE, {"VARIANT": variant, "BASE": names["base"], "STAGE": group}
            labels.update({LABEL_STAGE: group, LABEL_CODE: code_hash(group)})
        docker_build(client, names[group], dockerfile, args, labels)
        report[group] = {
            "image": names[group],
            "seconds": round(time.time() - t0, 1),
            "bytes": image_size(client, names[group]),
        }
    shutil.rmtree(WHEELS, ignore_errors=True)
    print(f"\n{'image':<52} {'size':>9} {'build':>7}")
    for r in report.values():
        print(f"{r['image']:<52} {r['bytes'] / 1e6:>7.0f}MB {r['seconds']:>6.0f}s")
    print(f"all {len(report)} {variant} images in {time.time() - started:.0f}s")
    (BUILD / f"built-{variant}.json").write_text(json.dumps(report, indent=2))
    return report


def docker_build(client, tag: str, dockerfile: Path, buildargs: dict[str, str], labels: dict[str, str]) -> None:
    """``docker build --network none`` of the repository (``.dockerignore``: an allowlist), its log streamed."""
    import docker

    print(f"==> build {tag} from {dockerfile.relative_to(ROOT)} {buildargs}", flush=True)
    try:
        stream = client.api.build(
            path=str(ROOT),
            dockerfile=str(dockerfile.relative_to(ROOT)),
            tag=tag,
            buildargs=buildargs,
            labels=labels,
            network_mode="none",
            rm=True,
            decode=True,
            timeout=3600,  # a quiet RUN step (installing torch) may take minutes
        )
        for chunk in stream:
            if "stream" in chunk:
                sys.stdout.write(chunk["stream"])
                sys.stdout.flush()
            if "error" in chunk:
                detail = (chunk.get("errorDetail") or {}).get("message") or chunk["error"]
                raise UserError(f"docker build of {tag} failed: {detail.strip()}")
    except docker.errors.APIError as e:
        raise UserError(f"docker build of {tag} failed: {e.explanation or e}") from None


def image_size(client, name: str) -> int:
    """The image's size in bytes; a UserError, never 0, if the daemon cannot say."""
    import docker

    try:
        return int(client.images.get(name).attrs["Size"])
    except docker.errors.ImageNotFound:
        raise UserError(f"image {name} not found after its build") from None
    except (docker.errors.APIError, KeyError, TypeError, ValueError) as e:
        raise UserError(f"cannot read the size of {name}: {type(e).__name__}: {e}") from None


def push(cfg: Config, registry: str, variant: str = "cpu", client=None) -> None:
    """Tag each stage image as ``image_for`` names it under ``registry`` and push it."""
    import docker
    from docker.utils import parse_repository_tag

    client = client or connect()
    target = cfg.model_copy(deep=True)
    target.images.registry = registry
    for stage in stages_for(variant):
        src, dst = stage_image(stage, cfg, variant), stage_image(stage, target, variant)
        try:
            image = client.images.get(src)
        except docker.errors.ImageNotFound:
            make = "make images-gpu" if variant == "cuda" else "make images"
            raise UserError(f"{src} is not built; run `{make}` first") from None
        repo, tag = parse_repository_tag(dst)
        if src != dst and not image.tag(repo, tag):
            raise UserError(f"tagging {src} as {dst} failed")
        print(f"==> push {dst}", flush=True)
        try:
            for chunk in client.api.push(repo, tag=tag, stream=True, decode=True):
                if "error" in chunk:
                    raise UserError(f"push of {dst} failed (logged in to {registry}?): {chunk['error']}")
                if chunk.get("status") and "progress" not in chunk:
                    print(f"    {chunk.get('id', '')} {chunk['status']}".rstrip(), flush=True)
        except docker.errors.APIError as e:
            raise UserError(f"push of {dst} failed (logged in to {registry}?): {e.explanation or e}") from None


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m engines.images", description=__doc__.split("\n\n")[0])
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
