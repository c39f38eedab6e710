"""The one interface of a cluster engine, and the registry every caller reads.

An engine is a module of ``engines/`` that defines, at top level, ``TARGET = SomeTarget()``
where ``SomeTarget`` subclasses :class:`Target`. That is all a new engine touches: the CLI's
``--target`` choices, ``validate``'s target list, the compile dispatch and the typing of
``targets.<name>`` in the config (at load time, whatever the command) all read
:func:`registry`.

Discovery reads each module's source for the ``TARGET =`` line before importing it, so the
local runners (and their imports) are never loaded to find the engines, and no engine's
client library is imported until that engine submits or compiles.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import pkgutil
import re
import time
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel

from core.config import TARGET_SETTINGS
from core.errors import UserError

# States every engine's run and stage states are mapped to.
PENDING, RUNNING, SUCCEEDED, FAILED, SKIPPED, CANCELED = (
    "pending",
    "running",
    "succeeded",
    "failed",
    "skipped",
    "canceled",
)
FINAL = (SUCCEEDED, FAILED, CANCELED)


@dataclasses.dataclass
class Connection:
    """Where the engine is, from the command line; each engine also reads its own env vars."""

    host: str | None = None
    namespace: str | None = None
    subscription_id: str | None = None
    resource_group: str | None = None
    workspace: str | None = None


def run_stages(dag, reported: dict[str, str]) -> dict[str, str]:
    """The stages a status shows: the DAG's, in order, when every step the engine reports is one of
    them; otherwise (a multi-task run: ``status`` is given no config) the run's own, as reported."""
    known = [step.name for step in dag]
    if set(reported) <= set(known):
        return {name: reported.get(name, PENDING) for name in known}
    return dict(reported)


@dataclasses.dataclass
class RunStatus:
    """A run as the engine reports it: its state and each stage's, in DAG order."""

    run_id: str
    state: str  # one of PENDING ... CANCELED
    stages: dict[str, str]
    url: str | None = None
    message: str | None = None
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)  # stage: run time, where the engine says

    @property
    def done(self) -> bool:
        return self.state in FINAL


class Target:
    """A cluster engine. Subclasses set ``name``, ``title``, ``settings`` and implement the methods."""

    name: str = ""
    title: str = ""  # "Kubeflow Pipelines"
    short: str = ""  # "KFP", in one-line messages; default: name
    settings: type[BaseModel]
    default_out: str = ""  # the file (or folder) name compile writes when --out is a folder
    writes_folder: bool = False  # compile --out is a folder (AzureML), else a file
    sidecars: tuple[str, ...] = ()  # suffixes of the files written beside it: <stem><suffix>
    host_hint: str = ""  # how the user tells us where the engine is, for error messages

    def compile(self, dag, cfg, out: str | Path) -> Path:
        raise NotImplementedError

    def written(self, dag) -> list[str]:
        """What compile writes besides --out (file: sibling suffixes; folder: paths inside it),
        for the output guard (core/outputs.py): each exists only with --force."""
        return list(self.sidecars)

    def validate(self, path: Path) -> list[str]:
        """The problems of a compiled file (empty: valid)."""
        raise NotImplementedError

    def recognizes(self, first_doc: dict, path: Path) -> bool:
        """Whether a compiled file (its first YAML document) is this engine's."""
        return False

    def submit(self, dag, cfg, conn: Connection) -> RunStatus:
        raise UserError(f"submit is not supported for {self.name}")

    def status(self, dag, conn: Connection, run_id: str) -> RunStatus:
        raise UserError(f"status is not supported for {self.name}")

    def schedule(self, dag, cfg, conn: Connection, cron: str, timezone: str) -> str:
        """Create (or replace) the recurring retrain; return a one-line description."""
        raise UserError(f"schedule is not supported for {self.name}")


_REGISTRY: dict[str, Target] = {}
_TARGET_LINE = re.compile(r"^TARGET\s*=", re.M)


def registry() -> dict[str, Target]:
    """``{name: Target}`` of every engine module in this package, in name order."""
    if not _REGISTRY:
        found: dict[str, Target] = {}
        for mod in pkgutil.iter_modules([str(Path(__file__).parent)]):
            src = Path(__file__).with_name(f"{mod.name}.py")
            if (
                mod.name.startswith("_")
                or not src.is_file()
                or not _TARGET_LINE.search(src.read_text(encoding="utf-8"))
            ):
                continue
            target = importlib.import_module(f"{__package__}.{mod.name}").TARGET
            if not isinstance(target, Target) or not target.name:
                raise TypeError(f"engines/{mod.name}.py: TARGET must be a Target with a name")
            found[target.name] = target
        _REGISTRY.update(sorted(found.items()))
    return _REGISTRY


def names() -> list[str]:
    return list(registry())


def get(name: str) -> Target:
    try:
        return registry()[name]
    except KeyError:
        raise UserError(f"unknown target {name!r}; known: {', '.join(registry())}") from None


def settings_classes() -> dict[str, type[BaseModel]]:
    """``{name: settings model}``: what ``targets.<name>`` in a config must match."""
    return {name: t.settings for name, t in registry().items()}


TARGET_SETTINGS.plug(settings_classes)  # the schema types targets.<name> with these from now on


# ---------------------------------------------------------------------------------------
# Following a run: shared by every engine's --wait


def poll_seconds() -> float:
    return float(os.environ.get("SLM_POLL_SECONDS", "10"))


def follow(
    get_status: Callable[[], RunStatus],
    first: RunStatus | None = None,
    out=None,
    sleep: Callable[[float], Any] = time.sleep,
) -> RunStatus:
    """Poll until the run ends, printing one line per stage state change (and run state change)."""
    out = out or (lambda line: print(line, flush=True))
    seen: dict[str, str] = {}
    run_state = None
    status = first or get_status()
    while True:
        for stage, state in status.stages.items():
            if seen.get(stage) != state:
                seen[stage] = state
                out(f"[{stage}] {state}")
        if status.state != run_state:
            run_state = status.state
            out(
                f"run {status.run_id}: {status.state}"
                + (f" ({status.message})" if status.message and status.done else "")
            )
        if status.done:
            return status
        sleep(poll_seconds())
        status = get_status()


def print_status(status: RunStatus, out=None) -> None:
    """The stage table, in the shape of the local runner's summary (engines/local.py)."""
    out = out or print
    out(f"\n{'stage':<12} {'status':<10} {'seconds':>8}")
    for name, state in status.stages.items():
        secs = status.seconds.get(name)
        out(f"{name:<12} {state:<10} {f'{secs:.1f}' if secs is not None else '-':>8}")
    out(f"run: {status.run_id} ({status.state})" + (f" {status.url}" if status.url else ""))


def seconds_between(start: Any, end: Any) -> float | None:
    """``end - start`` in seconds, from datetimes or ISO strings; None if either is missing."""
    import datetime as dt

    def parse(v):
        if v is None or v == "":
            return None
        v = getattr(v, "root", getattr(v, "__root__", v))  # hera's Time wraps a datetime
        if isinstance(v, dt.datetime):
            return v
        v = str(v)
        try:
            return dt.datetime.fromisoformat(v.replace("Z", "+00:00"))
        except ValueError:
            return None

    a, b = parse(start), parse(end)
    if a is None or b is None or a.year < 1971 or b < a:
        return None
    return (b - a).total_seconds()


def scrub(text: str) -> str:
    """``text`` with the value of every credential-bearing env var masked: error messages from
    client libraries may echo request headers or URLs."""
    for key, value in os.environ.items():
        if value and len(value) >= 6 and re.search(r"TOKEN|SECRET|PASSWORD|KEY|CREDENTIAL", key, re.I):
            text = text.replace(value, "***")
    return text


def one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return scrub(text[0] if text else type(err).__name__)
