"""Which config fields a process reads (tests/test_config_reads.py): a read is an attribute access
to a leaf field of the schema by code outside the schema module, so validators and ``flatten``
(which every stage's parameter list goes through) do not count, and a field only declared does not."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pydantic import BaseModel

from core import config as schema

ENV = "SLM_TRACE_READS"
HERE = Path(__file__).resolve().parent


def _prefixes(model: type[BaseModel], prefix: str = "", out: dict | None = None) -> dict[type, str]:
    out = {} if out is None else out
    out[model] = prefix
    for name, info in model.model_fields.items():
        sub = info.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            _prefixes(sub, f"{prefix}{name}.", out)
    return out


def install(reads: set[str]):
    """Record reads into ``reads`` from now on; returns the function that stops it."""
    prefixes = _prefixes(schema.Config)
    schema_file = schema.__file__
    before = schema.Section.__dict__.get("__getattribute__")

    def traced(self, name):
        value = object.__getattribute__(self, name)
        cls = type(self)
        if cls in prefixes and name in cls.model_fields and not isinstance(value, BaseModel):
            if sys._getframe(1).f_code.co_filename != schema_file:
                reads.add(prefixes[cls] + name)
        return value

    schema.Section.__getattribute__ = traced

    def stop():
        if before is None:
            del schema.Section.__getattribute__
        else:
            schema.Section.__getattribute__ = before

    return stop


def from_env() -> None:
    """In a process started with ``SLM_TRACE_READS=<folder>``: write ``<who>-<pid>.json`` there at exit."""
    if not os.environ.get(ENV):
        return
    import atexit
    import json

    reads: set[str] = set()
    install(reads)

    def write() -> None:
        main = Path(sys.argv[0])
        who = main.parent.name if main.name == "__main__.py" else main.stem
        out = Path(os.environ[ENV]) / f"{who}-{os.getpid()}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"process": who, "reads": sorted(reads)}))

    atexit.register(write)


def collect(folder: Path) -> dict[str, set[str]]:
    """``{process: fields read}`` over the files that traced processes wrote into ``folder``."""
    import json

    out: dict[str, set[str]] = {}
    for f in sorted(Path(folder).glob("*.json")):
        d = json.loads(f.read_text())
        out.setdefault(d["process"], set()).update(d["reads"])
    return out


def env(folder: Path) -> dict[str, str]:
    """The env of a process whose reads are written into ``folder``."""
    root = HERE.parents[1]
    return {"PYTHONPATH": os.pathsep.join([str(HERE), str(root)]), ENV: str(folder)}
