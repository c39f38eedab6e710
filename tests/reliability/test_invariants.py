"""The invariants of issue 19, one class per section, each held where it is decided:

- ownership: ``core/outputs.claim`` (what a verb may write) and
  ``artifacts.refuse_unowned`` (what may be replaced or deleted);
- bounds: ``core/io.py`` (the one YAML/JSON loader, regular files only);
- types: pydantic strict, ``core/cron.py``, ``core/names.py``;
- data formats: ``stages/data_prep/stage._rows``;
- exit codes: every user-input error exits 2, which no compiled retry policy retries.

Hypothesis tests run with a fixed seed (``derandomize``) and a small example budget.
docs/reliability.md lists which test holds which invariant.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from helpers import ROOT, TINY, run_cli, run_pipeline, stage_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# As in every process that compiles or submits (pipeline.py loads the engines): their settings models
# are plugged into the config, so targets.<engine> is typed at load time. Without it this file passed
# only when an earlier test module had loaded them.
import engines.base  # noqa: E402,F401
from core import cron, names
from core.config import load_config
from core.errors import UserError
from core.io import MAX_DEPTH, load_json, load_yaml
from core.outputs import claim

PIPELINE = str(ROOT / "pipeline.py")
PROPERTY = settings(
    derandomize=True, max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
GOOD = [{"phrase": f"phrase number {i}", "tone": ["joy", "fear"][i % 2]} for i in range(20)]


def one_error(proc, *expected: str, code: int = 2) -> str:
    """Exit ``code``, no traceback, exactly one ``error:`` line holding every ``expected`` text."""
    assert proc.returncode == code, (proc.returncode, proc.stdout[-800:], proc.stderr[-1500:])
    assert "Traceback" not in proc.stderr, proc.stderr[-1500:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-1500:]
    for text in expected:
        assert text in errors[0], errors[0]
    return errors[0]


def snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(root.rglob("*"))
    }


# --- 1. ownership -------------------------------------------------------------------------------


def test_compile_never_creates_parents_under_a_missing_top_level_folder():
    missing = Path(f"/slm-nonexistent-{os.getpid()}")
    proc = run_cli(PIPELINE, "compile", "--target", "kfp", "--config", str(TINY), "--out", f"{missing}/dir/x.yaml")
    one_error(proc, f"{missing} does not exist, and no folder is created at the filesystem root")
    assert not missing.exists()


def test_compile_and_import_olive_never_overwrite_an_input_or_an_existing_file(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(TINY.read_text())
    before = config.read_text()
    proc = run_cli(PIPELINE, "compile", "--target", "argo", "--config", str(config), "--out", str(config), "--force")
    one_error(proc, "is the --config file")
    assert config.read_text() == before
    out = tmp_path / "w.yaml"
    out.write_text("mine\n")
    proc = run_cli(PIPELINE, "compile", "--target", "argo", "--config", str(config), "--out", str(out))
    one_error(proc, f"{out} exists; pass --force")
    assert out.read_text() == "mine\n"
    proc = run_cli(PIPELINE, "compile", "--target", "argo", "--config", str(config), "--out", str(out), "--force")
    assert proc.returncode == 0, proc.stderr[-1500:]
    proc = run_cli(PIPELINE, "import-olive", str(ROOT / "tests" / "data" / "olive-phi3.json"), "--out", str(out))
    one_error(proc, "exists; pass --force")


@pytest.mark.parametrize("out", [".", "core", "stages/train", "engines", str(ROOT)])
def test_run_out_in_the_source_tree_is_refused(tmp_path, out):
    before = snapshot(ROOT / "components")
    proc = run_pipeline(Path(out))
    # the root and "." contain the --config file, which is named first; the rest are source folders
    one_error(proc, "choose a path outside it" if out in (".", str(ROOT)) else "source tree")
    assert snapshot(ROOT / "components") == before


def test_run_never_deletes_a_folder_it_did_not_make(tmp_path):
    # A user folder that is not a run folder, and a user folder where a stage output goes.
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep\n")
    one_error(run_pipeline(user), "not a run folder")
    run = tmp_path / "run"
    (run / "train" / "adapter").mkdir(parents=True)
    (run / ".run.lock").write_text("")
    (run / "train" / "adapter" / "mine.txt").write_text("keep\n")
    one_error(run_pipeline(run), "not an artifact this pipeline wrote", "nothing was deleted")
    assert (run / "train" / "adapter" / "mine.txt").read_text() == "keep\n"
    assert (user / "notes.txt").read_text() == "keep\n"


def test_run_out_holding_the_data_is_refused(tmp_path):
    data = tmp_path / "run" / "d.jsonl"
    data.parent.mkdir()
    data.write_text("\n".join(json.dumps(r) for r in GOOD) + "\n")
    one_error(run_pipeline(tmp_path / "run", f"data.path={data}"), "contains data.path")
    assert data.is_file()


ENTRIES = ["cfg.yaml", "data.jsonl", "user", "user/notes.txt", "runs", "runs/r1", "models/m"]


@PROPERTY
@given(
    target=st.sampled_from(ENTRIES + ["new.yaml", "user/new.yaml", "deep/er/x.yaml", "user/notes.txt/x"]),
    folder=st.booleans(),
    run=st.booleans(),
    force=st.booleans(),
)
def test_property_claim_changes_no_pre_existing_file(tmp_path, target, folder, run, force):
    """Whatever is asked, claim() returns a path or raises one UserError line; it never changes a
    file that existed, and an input, the config or a folder holding them is never returned."""
    root = tmp_path / "tree"
    if not root.exists():
        for entry in ENTRIES:
            p = root / entry
            if "." in p.name:
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_text(entry)
            else:
                p.mkdir(parents=True, exist_ok=True)
    before = {k: v for k, v in snapshot(root).items() if v != "dir"}
    inputs = [(root / "cfg.yaml", "the --config file"), (root / "data.jsonl", "data.path"), (root / "models/m", "m")]
    try:
        path = claim(root / target, inputs=inputs, folder=folder, run=run, force=force)
    except UserError as e:
        assert "\n" not in str(e)
    else:
        real = Path(os.path.realpath(path))
        for p, _ in inputs:
            p = Path(os.path.realpath(p))
            assert real != p and p not in real.parents and real not in p.parents
        if not force and not (folder or run):
            assert not path.exists()
    after = {k: v for k, v in snapshot(root).items() if v != "dir"}
    assert {k: after.get(k) for k in before} == before


# --- 2. bounded parsing -------------------------------------------------------------------------


def argo_alias_bomb() -> str:
    lines = [
        "apiVersion: argoproj.io/v1alpha1",
        "kind: Workflow",
        "metadata: {generateName: x-}",
        "spec:",
        "  entrypoint: main",
        "  arguments:",
        "    parameters:",
        "    - &a0 [" + ", ".join(["lol"] * 9) + "]",
    ]
    lines += [f"    - &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    return "\n".join(lines) + "\n"


def test_validate_refuses_an_argo_alias_bomb_fast(tmp_path):
    bomb = tmp_path / "wf.yaml"
    bomb.write_text(argo_alias_bomb())
    started = time.time()
    proc = run_cli(PIPELINE, "validate", str(bomb), timeout=120)
    one_error(proc, "aliases expand to over 100,000 values")
    assert time.time() - started < 60


def test_runs_lists_a_fifo_summary_as_unreadable_without_hanging(tmp_path):
    (tmp_path / "r").mkdir()
    os.mkfifo(tmp_path / "r" / "summary.json")
    proc = run_cli(PIPELINE, "runs", "--root", str(tmp_path), timeout=60)
    assert proc.returncode == 0 and "unreadable" in proc.stdout, proc.stderr


@pytest.mark.parametrize(
    "text,expected",
    [
        ("a: " + "[" * 5000 + "]" * 5000, "nested more than"),
        ("- 1\n" * 210_000, "too large"),
        ("a: &x [1, *x]\n", "a recursive alias"),
    ],
    ids=["deep", "large-plain-list", "recursive"],
)
def test_loader_bounds_are_one_line_errors(tmp_path, text, expected):
    config = tmp_path / "c.yaml"
    config.write_text(text)
    one_error(run_pipeline(tmp_path / "run", config=config, timeout=120), expected)


def test_json_nesting_is_a_one_line_error(tmp_path):
    config = tmp_path / "c.json"
    config.write_text("[" * 100_000 + "]" * 100_000)
    one_error(run_pipeline(tmp_path / "run", config=config), "nested more than")


def test_template_format_specs_are_refused_at_load():
    for template in ("{phrase:>100000000}{tone}", "{phrase!r}{tone}", "{phrase.__class__}{tone}", "{0}{tone}"):
        with pytest.raises(UserError, match="data.text_template"):
            load_config(TINY, [f"data.text_template={json.dumps(template)}"])


tree = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-1000, 1000), st.text(max_size=8)),
    lambda kids: st.one_of(st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=5), kids, max_size=4)),
    max_leaves=30,
)


@PROPERTY
@given(value=tree)
def test_property_loader_reads_what_yaml_and_json_write(value):
    """Ordinary YAML and JSON read back exactly as written (the bounds only refuse the hostile)."""
    assert load_yaml(yaml.safe_dump(value), "t") == value
    assert load_json(json.dumps(value), "t") == value


@PROPERTY
@given(depth=st.integers(1, 3 * MAX_DEPTH), width=st.integers(1, 12), levels=st.integers(1, 9))
def test_property_loader_refuses_deep_or_explosive_input_with_one_line(depth, width, levels):
    texts = ["[" * depth + "]" * depth]
    lines = ["- &a0 [" + ", ".join(["x"] * width) + "]"]
    lines += [f"- &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels)]
    texts.append("\n".join(lines))
    for text in texts:
        try:
            load_yaml(text, "t")
        except UserError as e:
            assert "\n" not in str(e)
    if depth > MAX_DEPTH + 1:
        with pytest.raises(UserError, match="nested more than"):
            load_yaml(texts[0], "t")
    if width**levels > 200_000 + 100_000:
        with pytest.raises(UserError, match="alias bomb"):
            load_yaml(texts[1], "t")


# --- 3. strict types, cron, names ---------------------------------------------------------------


@pytest.mark.parametrize(
    "setting",
    ["train.max_steps=true", "targets.kfp.retries=true", 'train.packing="true"', 'targets.argo.gpu_toleration="no"'],
)
def test_no_coercion_between_bool_int_and_str(setting):
    with pytest.raises(UserError, match=setting.split("=")[0].replace(".", r"\.")):
        load_config(TINY, [setting])


@PROPERTY
@given(key=st.sampled_from(["train.max_steps", "train.lora.r", "evaluate.batch_size", "targets.argo.retries"]))
def test_property_a_bool_is_never_an_int(key):
    for value in ("true", "false"):
        with pytest.raises(UserError):
            load_config(TINY, [f"{key}={value}"])


FIELDS = {"minute": (0, 59), "hour": (0, 23), "dom": (1, 31), "month": (1, 12), "dow": (0, 6)}


@PROPERTY
@given(values=st.tuples(*[st.integers(-2, 70) for _ in FIELDS]), dialect=st.sampled_from(cron.DIALECTS))
def test_property_cron_accepts_exactly_the_in_range_values(values, dialect):
    expr = " ".join(str(v) for v in values)
    ok = all(lo <= v <= hi for v, (lo, hi) in zip(values, FIELDS.values()))
    if ok:
        assert cron.parse(expr, dialect) == expr.split()
        if dialect == "kfp":
            assert cron.parse("0 " + expr, "kfp")
    else:
        with pytest.raises(ValueError):
            cron.parse(expr, dialect)


def test_cron_dialects_and_forms():
    assert cron.parse("@daily", "argo") == ["@daily"] and cron.parse("@every 6h", "kfp")
    for bad, dialect in (("@daily", "azureml"), ("0 0 3 * * 1", "argo"), ("* * *", "kfp"), ("61 * * * *", "kfp")):
        with pytest.raises(ValueError):
            cron.parse(bad, dialect)
    for target in ("kfp", "argo", "azureml"):
        with pytest.raises(UserError, match="minute 61 is out of range"):
            load_config(TINY, [f"targets.{target}.schedule=61 * * * *"])


def test_validate_applies_the_cron_and_name_rules(tmp_path):
    cfg = load_config(TINY, ["targets.argo.schedule=0 3 * * 1"])
    from engines import argo
    from engines.validate import validate_file
    from pipeline import DAG

    path = argo.compile_pipeline(DAG, cfg, tmp_path / "wf.yaml")
    cron_file = path.with_name("wf.cron.yaml")
    cron_file.write_text(cron_file.read_text().replace("0 3 * * 1", "61 * * * *"))
    with pytest.raises(UserError, match="minute 61 is out of range"):
        validate_file(cron_file, "argo")
    path.write_text(path.read_text().replace("generateName: slm-finetune-tiny-", "generateName: '---'"))
    with pytest.raises(UserError, match="generateName"):
        validate_file(path, "argo")


@PROPERTY
@given(name=st.text(alphabet="abcXYZ019-_.;$ \n", min_size=0, max_size=12))
def test_property_config_name_is_accepted_exactly_when_every_engine_accepts_it(name):
    engine_ok = bool(names.DNS1123_LABEL.match(name)) and bool(names.KFP_PIPELINE.match(name))
    try:
        load_config(TINY, [f"name={json.dumps(name)}"])
        accepted = True
    except UserError as e:
        assert "\n" not in str(e).strip() or "name" in str(e)
        accepted = False
    assert accepted == engine_ok, name


@pytest.mark.parametrize(
    "setting",
    [
        'targets.azureml.experiment_name="x; rm -rf /"',
        "targets.azureml.compute_cpu=-x",
        "targets.argo.namespace=Bad_NS",
        'targets.kfp.hf_token_secret="a b"',
        "targets.kfp.schedule_timezone=Mars/Base",
    ],
)
def test_engine_names_are_checked_at_load_for_run_and_compile(tmp_path, setting):
    key = setting.split("=")[0]
    one_error(run_pipeline(tmp_path / "run", setting), key)
    proc = run_cli(PIPELINE, "compile", "--target", "kfp", "--config", str(TINY), "--set", setting, "--out", "-")
    one_error(proc, key)


# --- 4. data formats ----------------------------------------------------------------------------


def _write_formats(tmp_path: Path) -> dict[str, Path]:
    jl = "\n".join(json.dumps(r) for r in GOOD) + "\n"
    files = {}
    files["jsonl.gz"] = tmp_path / "a.jsonl.gz"
    files["jsonl.gz"].write_bytes(gzip.compress(jl.encode()))
    files["json.gz"] = tmp_path / "b.json.gz"
    files["json.gz"].write_bytes(gzip.compress(json.dumps(GOOD).encode()))
    files["rows-object"] = tmp_path / "c.json"
    files["rows-object"].write_text(json.dumps({"rows": GOOD}, indent=2))
    import pyarrow as pa
    import pyarrow.parquet as pq

    files["parquet"] = tmp_path / "e.parquet"
    pq.write_table(pa.Table.from_pylist(GOOD), files["parquet"])
    return files


def test_compressed_parquet_and_row_object_files_read_like_jsonl(tmp_path):
    from core.config import DataConfig
    from stages.data_prep.stage import Reader

    plain = tmp_path / "plain.jsonl"
    plain.write_text("\n".join(json.dumps(r) for r in GOOD) + "\n")
    want = Reader(DataConfig(prompt_format="template"), None).read(plain, "data.path")
    for name, path in _write_formats(tmp_path).items():
        assert Reader(DataConfig(prompt_format="template"), None).read(path, "data.path") == want, name


TEXT = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=30)


@PROPERTY
@given(st.lists(TEXT, min_size=2, max_size=6, unique=True))
def test_property_text_is_normalized_alike_in_every_format(tmp_path, phrases):
    """NUL, CR and other control characters, and non-NFC text: every format gives the same rows."""
    import csv
    import unicodedata

    from core.config import DataConfig
    from stages.data_prep.stage import Reader, normalize_text

    rows = [{"phrase": f"x{p}", "tone": ["joy", "fear"][i % 2]} for i, p in enumerate(phrases)]
    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    (folder / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (folder / "d.json").write_text(json.dumps(rows))
    with open(folder / "d.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, ["phrase", "tone"])
        writer.writeheader()
        writer.writerows(rows)
    got = {}
    for name in ("d.jsonl", "d.json", "d.csv"):
        try:
            got[name] = Reader(DataConfig(prompt_format="template"), None).read(folder / name, "data.path")
        except UserError as e:
            got[name] = str(e).rsplit(";", 1)[-1]  # the same refusal (its line numbers differ per format)
    assert got["d.jsonl"] == got["d.json"] == got["d.csv"], got
    for p in phrases:
        clean = normalize_text(p)
        assert normalize_text(clean) == clean and unicodedata.is_normalized("NFC", clean)
        assert not any(unicodedata.category(c) == "Cc" and c not in "\t\n" for c in clean)


def test_unknown_format_is_named(tmp_path):
    import zipfile

    data = tmp_path / "d.jsonl"
    with zipfile.ZipFile(data, "w") as z:
        z.writestr("x.jsonl", "{}")
    out = tmp_path / "ds"
    one_error(stage_cli("data_prep", "--dataset", str(out), "--data.path", str(data)), "a zip archive", code=2)
    assert not out.exists()


def test_dataset_dict_without_train_is_refused_listing_its_splits(tmp_path):
    import datasets

    rows = datasets.Dataset.from_list(GOOD)
    datasets.DatasetDict({"validation": rows, "test": rows}).save_to_disk(str(tmp_path / "hf"))
    out = tmp_path / "ds"
    proc = stage_cli("data_prep", "--dataset", str(out), "--data.path", str(tmp_path / "hf"))
    one_error(proc, "splits ['validation', 'test'] and no 'train'")
    assert not out.exists()
    datasets.DatasetDict({"train": rows, "test": datasets.Dataset.from_list(GOOD[:6])}).save_to_disk(
        str(tmp_path / "hf2")
    )
    proc = stage_cli(
        "data_prep", "--dataset", str(out), "--data.path", str(tmp_path / "hf2"), "--data.eval_split", "test"
    )
    assert proc.returncode == 0, proc.stderr[-1500:]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["eval"]["rows"] == 6 and stats["train"]["rows"] == 14  # the eval prompts left training


# --- 5. exit codes ------------------------------------------------------------------------------


def test_every_user_input_error_class_exits_2_which_no_engine_retries(tmp_path):
    """One command per class of bad input; each exits 2, and 2 is in the codes the compiled retry
    policies never retry (engines/compile_common.DETERMINISTIC_EXIT_CODES, as Argo compiles it)."""
    from engines.compile_common import DETERMINISTIC_EXIT_CODES

    assert 2 in DETERMINISTIC_EXIT_CODES
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(argo_alias_bomb())
    user = tmp_path / "user"
    user.mkdir()
    (user / "f").write_text("x")
    kfp = ["compile", "--target", "kfp", "--config", str(TINY)]
    cases = {
        "ownership: out under a missing root": [*kfp, "--out", f"/slm-none-{os.getpid()}/x.yaml"],
        "ownership: out is the config": [*kfp, "--out", str(TINY)],
        "ownership: run into a user folder": ["run", "--config", str(TINY), "--out", str(user)],
        "bounds: alias bomb": ["validate", str(bomb)],
        "bounds: format spec": [*kfp, "--set", "data.text_template={phrase:>99}{tone}", "--out", "x"],
        "types: bool as int": [*kfp, "--set", "train.max_steps=true", "--out", "x"],
        "types: cron": [*kfp, "--set", "targets.kfp.schedule=61 * * * *", "--out", "x"],
        "types: name": [*kfp, "--set", "name=a_b", "--out", "x"],
        "config: unknown key": [*kfp, "--set", "train.nope=1", "--out", "x"],
        "config: missing file": ["run", "--config", str(tmp_path / "none.yaml"), "--out", str(tmp_path / "r")],
    }
    for what, argv in cases.items():
        proc = run_cli(PIPELINE, *argv, timeout=120)
        assert proc.returncode == 2, (what, proc.returncode, proc.stderr[-800:])
        assert "Traceback" not in proc.stderr, what
    golden = next((ROOT / "tests" / "golden" / "argo").glob("*.yaml")).read_text()
    assert "not in [2, 3, 4]" in golden  # the compiled Argo retry policy skips exit codes 2, 3 and 4


@pytest.mark.parametrize(
    "error,code",
    [
        (UserError("bad"), 2),
        (OSError(28, "No space left on device"), 2),
        (RuntimeError("safetensors: os error 28"), 2),
        (MemoryError(), 137),
        (ConnectionError("reset by peer"), 1),
        (TimeoutError(), 1),
        (OSError(110, "connection timed out"), 1),
        (FileNotFoundError(2, "gone"), 4),
        (PermissionError(13, "denied"), 4),
        (KeyError("x"), 4),
        (TypeError("x"), 4),
        (ValueError("x"), 4),
        (AssertionError(), 4),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_one_map_decides_the_exit_code_and_only_transient_ones_are_retried(error, code):
    from core.errors import exit_code
    from engines.compile_common import DETERMINISTIC_EXIT_CODES

    assert exit_code(error) == code
    assert (code in DETERMINISTIC_EXIT_CODES) == (code in (2, 3, 4))


def test_property_exit_code_is_total_and_documented():
    """Every exception class Python raises maps to one of the documented codes."""
    import builtins

    from core.errors import exit_code

    classes = [c for c in vars(builtins).values() if isinstance(c, type) and issubclass(c, Exception)]
    for cls in classes:
        try:
            e = cls()
        except TypeError:
            continue  # needs arguments (UnicodeDecodeError and kin)
        assert exit_code(e) in (1, 2, 3, 4, 137), cls


@pytest.mark.parametrize("where", ["stage", "runner"])
def test_two_sigterms_during_cleanup_give_one_line_and_no_traceback(tmp_path, tiny_run, where):
    """A second SIGTERM 0.3 s after the first lands in the cleanup: it is ignored until cleanup ends,
    so each process prints one line."""
    import signal
    import subprocess
    import sys

    from engines.local import stage_argv
    from pipeline import DAG

    settings = ["train.max_steps=400", "train.log_every=1", "train.checkpoint_every=1000"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    run = tmp_path / "run"
    if where == "stage":
        import shutil

        shutil.copytree(tiny_run / "data_prep", run / "data_prep")
        argv = [sys.executable, *stage_argv(DAG["train"], load_config(TINY, settings), str(run))[1:]]
        expected = 143
    else:
        argv = [sys.executable, PIPELINE, "run", "--config", str(TINY), "--out", str(run)]
        argv += [x for s in settings for x in ("--set", s)]
        expected = 130
    proc = subprocess.Popen(argv, env=env, cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if "step 2/400" in line:
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            proc.send_signal(signal.SIGTERM)
            break
    lines += proc.stderr.readlines()
    proc.wait(timeout=300)
    err = "".join(lines)
    assert proc.returncode == expected, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    tail = err[err.index("step 2/400") :]
    errors = [ln for ln in tail.splitlines() if ln.startswith("error:")]
    # one line per process: the stage's, and the runner's after it
    assert [e.startswith("error: [train]") for e in errors] == ([True] if where == "stage" else [True, False]), tail
