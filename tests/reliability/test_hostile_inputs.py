"""Hostile and odd inputs, one behaviour per test: each is refused with one line naming the
file and line (or the key), no traceback, a non-zero exit and no output; or, where the input
is legal, it is read exactly as written. docs/reliability.md counts these tests."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
from helpers import ROOT, TINY, run_cli, run_pipeline, stage_cli

from core.io import read_jsonl
from stages.data_prep.stage import normalize_text

GOOD = [{"phrase": f"phrase number {i}", "tone": ["joy", "fear"][i % 2]} for i in range(20)]


def jsonl(rows) -> str:
    return "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n"


def data_prep(tmp_path: Path, data: Path, *args: str, **kw):
    out = tmp_path / "ds"
    return out, stage_cli("data_prep", "--dataset", str(out), "--data.path", str(data), *args, **kw)


def refused(proc, *expected: str, out: Path | None = None) -> str:
    """One clear error line containing every ``expected`` text, no traceback, nothing written."""
    assert proc.returncode != 0, proc.stdout[-1000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-2000:]
    for text in expected:
        assert text in errors[0], errors[0]
    if out is not None:
        assert not out.exists(), "a refused input left an output"
        assert not list(out.parent.glob(f".{out.name}.tmp-*")), "a refused input left a temporary output"
    return errors[0]


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- data files ---------------------------------------------------------------------------------


def test_fifo_as_data_path_is_refused_without_reading_it(tmp_path):
    fifo = tmp_path / "data.jsonl"
    os.mkfifo(fifo)
    # Reading a FIFO with no writer blocks forever; the timeout turns a hang into a failure.
    proc = run_pipeline(tmp_path / "run", f"data.path={fifo}", timeout=300)
    refused(proc, f"data.path: {fifo} is not a regular file")


def test_labels_differing_only_in_case_are_refused(tmp_path):
    data = write(tmp_path, "d.jsonl", jsonl(GOOD + [{"phrase": "shouting", "tone": "Joy"}]))
    out, proc = data_prep(tmp_path, data)
    refused(proc, f"{data} line 21: label 'Joy' differs only in case from 'joy' ({data} line 1)", out=out)


def test_configured_labels_differing_only_in_case_are_refused(tmp_path):
    proc = run_pipeline(tmp_path / "run", "data.labels=[joy, fear, Joy]")
    refused(proc, "data.labels: labels 'joy' and 'Joy' differ only in case")


def test_label_with_surrounding_spaces_is_stripped_with_a_warning(tmp_path):
    data = write(tmp_path, "d.jsonl", jsonl(GOOD + [{"phrase": "spaced out", "tone": " joy\t"}]))
    out, proc = data_prep(tmp_path, data)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"removed surrounding spaces from 1 label(s) (first at {data} line 21" in proc.stderr
    stats = json.loads((out / "stats.json").read_text())
    assert stats["labels"] == ["fear", "joy"] and stats["labels_stripped"] == 1


@pytest.mark.parametrize(
    "field,value,shown",
    [
        ("phrase", 42, "a number 42"),
        ("phrase", 4.5, "a number 4.5"),
        ("phrase", True, "a boolean true"),
        ("tone", 1, "a number 1"),
        ("phrase", ["a", "list"], "a list"),
        ("phrase", {"an": "object"}, "an object"),
    ],
    ids=["int", "float", "bool", "int-label", "list", "object"],
)
def test_non_text_value_where_text_is_expected_is_refused(tmp_path, field, value, shown):
    data = write(tmp_path, "d.jsonl", jsonl(GOOD + [{**GOOD[0], "phrase": "new phrase", field: value}]))
    out, proc = data_prep(tmp_path, data)
    refused(proc, f"{data} line 21: field '{field}' must be text, got {shown}", out=out)


def test_csv_quoted_newline_is_kept(tmp_path):
    data = tmp_path / "d.csv"
    with open(data, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["phrase", "tone"])
        w.writerow(["line one\nline two", "joy"])
        w.writerow(["crlf one\r\ncrlf two", "fear"])
        w.writerows([r["phrase"], r["tone"]] for r in GOOD)
    out, proc = data_prep(tmp_path, data, "--data.prompt_format", "template")
    assert proc.returncode == 0, proc.stderr[-2000:]
    prompts = {r["prompt"] for name in ("train.jsonl", "eval.jsonl") for r in read_jsonl(out / name)}
    assert "<|user|>\nline one\nline two<|end|>\n<|assistant|>\n" in prompts
    assert "<|user|>\ncrlf one\ncrlf two<|end|>\n<|assistant|>\n" in prompts  # CRLF as LF in every format
    assert json.loads((out / "stats.json").read_text())["rows_read"] == 22


# The characters str.splitlines() splits on that JSON allows raw inside a string.
LINE_SEPARATORS = ["\u2028", "\u2029", "\u0085"]
# ...and those JSON forbids raw (control characters): refused by their line, never split.
RAW_CONTROL = ["\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e"]


def test_jsonl_line_separators_inside_strings_are_kept(tmp_path):
    odd = [{"phrase": f"before{sep}after {i}", "tone": "joy"} for i, sep in enumerate(LINE_SEPARATORS)]
    text = jsonl(GOOD + odd)
    assert all(sep in text for sep in LINE_SEPARATORS)  # raw, not escaped
    data = write(tmp_path, "d.jsonl", text)
    out, proc = data_prep(tmp_path, data, "--data.prompt_format", "template")
    assert proc.returncode == 0, proc.stderr[-2000:]
    phrases = {
        r["prompt"].split("\n")[1].split("<|end|>")[0]
        for name in ("train.jsonl", "eval.jsonl")
        for r in read_jsonl(out / name)
    }
    assert {normalize_text(r["phrase"]) for r in odd} <= phrases  # NEL is a C1 control: removed, not split


@pytest.mark.parametrize("char", RAW_CONTROL, ids=[f"U+{ord(c):04X}" for c in RAW_CONTROL])
def test_jsonl_raw_control_characters_inside_strings_are_refused_by_line(tmp_path, char):
    data = write(tmp_path, "d.jsonl", jsonl(GOOD) + '{"phrase": "a' + char + 'b", "tone": "joy"}\n')
    out, proc = data_prep(tmp_path, data)
    refused(proc, f"{data} line 21: not valid JSON (Invalid control character", out=out)


def test_eval_label_unseen_in_training_is_refused(tmp_path):
    train = write(tmp_path, "train.jsonl", jsonl(GOOD))
    evals = write(tmp_path, "eval.jsonl", jsonl([{"phrase": "e1", "tone": "joy"}, {"phrase": "e2", "tone": "sadness"}]))
    out, proc = data_prep(tmp_path, train, "--data.eval_path", str(evals))
    refused(proc, f"{evals} line 2: eval label 'sadness' never occurs in the training data", out=out)


def test_dataset_under_the_minimum_is_refused(tmp_path):
    data = write(
        tmp_path,
        "d.jsonl",
        jsonl([{"phrase": "a", "tone": "joy"}, {"phrase": "b", "tone": "joy"}, {"phrase": "c", "tone": "fear"}]),
    )
    out, proc = data_prep(tmp_path, data)
    refused(proc, "label 'fear' has 1 training example(s)", "needs at least 2 per label", out=out)


def test_dataset_at_the_minimum_is_accepted(tmp_path):
    """3 unique prompts per label: 2 to train on and 1 to evaluate, for each label."""
    rows = [{"phrase": f"p{i}", "tone": t} for t in ("joy", "fear") for i in range(3)]
    data = write(tmp_path, "d.jsonl", jsonl([{**r, "phrase": r["phrase"] + r["tone"]} for r in rows]))
    out, proc = data_prep(tmp_path, data)
    assert proc.returncode == 0, proc.stderr[-2000:]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["train"]["labels"] == {"fear": 2, "joy": 2} and stats["eval"]["rows"] == 2


def test_one_prompt_with_two_labels_is_refused(tmp_path):
    data = write(tmp_path, "d.jsonl", jsonl(GOOD + [{"phrase": "phrase number 0", "tone": "fear"}]))
    out, proc = data_prep(tmp_path, data)
    refused(proc, f"{data} line 21: this prompt has label 'fear', but {data} line 1 gives it 'joy'", out=out)


def test_one_prompt_with_two_labels_across_train_and_eval_files_is_refused(tmp_path):
    train = write(tmp_path, "train.jsonl", jsonl(GOOD))
    evals = write(
        tmp_path,
        "eval.jsonl",
        jsonl([{"phrase": "phrase number 2", "tone": "joy"}, {"phrase": "phrase number 3", "tone": "joy"}]),
    )
    out, proc = data_prep(tmp_path, train, "--data.eval_path", str(evals))
    refused(proc, f"{evals} line 2: this prompt has label 'joy', but {train} line 4 gives it 'fear'", out=out)


def test_csv_row_with_extra_fields_is_refused(tmp_path):
    data = write(
        tmp_path, "d.csv", "phrase,tone\n" + "".join(f"{r['phrase']},{r['tone']}\n" for r in GOOD) + "a, b,joy\n"
    )
    out, proc = data_prep(tmp_path, data)
    refused(proc, f"{data} line 22: 3 field(s), but the header has 2 (phrase, tone)", out=out)


def test_csv_row_with_missing_fields_is_refused(tmp_path):
    data = write(tmp_path, "d.csv", "phrase,tone\nonly a phrase\n")
    out, proc = data_prep(tmp_path, data)
    refused(proc, f"{data} line 2: 1 field(s), but the header has 2", out=out)


def test_csv_header_without_a_name_is_refused(tmp_path):
    data = write(tmp_path, "d.csv", "phrase,,tone\na,x,joy\n")
    out, proc = data_prep(tmp_path, data)
    refused(proc, f"{data} line 1: header column 2 has no name", out=out)


@pytest.mark.parametrize(
    "target,error", [("weights.bin", "line 2: not UTF-8 text (byte 0x80"), ("real.jsonl", "line 2:")]
)
def test_csv_symlinked_to_another_kind_of_file_is_refused(tmp_path, target, error):
    """A .csv name over a binary file or over JSON Lines: read as CSV, refused at the first bad line."""
    real = tmp_path / target
    if target.endswith(".bin"):
        real.write_bytes(bytes(range(256)) * 8)
    else:
        write(tmp_path, target, jsonl(GOOD))
    data = tmp_path / "d.csv"
    data.symlink_to(real)
    out, proc = data_prep(tmp_path, data)
    refused(proc, f"{data} {error}", out=out)


def test_eval_path_equal_to_data_path_names_the_real_fix(tmp_path):
    data = write(tmp_path, "d.jsonl", jsonl(GOOD))
    out, proc = data_prep(tmp_path, data, "--data.eval_path", str(data))
    line = refused(proc, "data.eval_path is the same file as data.path", out=out)
    assert "unset data.eval_path" in line


def test_duplicate_key_in_a_json_row_is_refused(tmp_path):
    data = write(tmp_path, "d.jsonl", jsonl(GOOD) + '{"phrase": "a", "tone": "joy", "tone": "fear"}\n')
    out, proc = data_prep(tmp_path, data)
    refused(proc, f"{data} line 21: key 'tone' appears twice in one object", out=out)


def test_duplicate_key_in_a_json_config_is_refused(tmp_path):
    config = write(tmp_path, "c.json", '{"train": {"max_steps": 3, "max_steps": 4}}')
    proc = run_pipeline(tmp_path / "run", config=config)
    refused(proc, f"{config}: key 'max_steps' appears twice in one object")


def test_duplicate_key_in_a_yaml_config_is_refused(tmp_path):
    config = write(tmp_path, "c.yaml", TINY.read_text() + "name: twice\n")
    proc = run_pipeline(tmp_path / "run", config=config)
    refused(proc, f"{config} line", "key 'name' appears twice in one mapping")


# --- config files and values --------------------------------------------------------------------


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """9 levels of 9 aliases each: 9**9 (387 million) values once expanded, inside data.labels."""
    lines = ["data:", "  labels:", "  - &a0 [" + ", ".join(["lol"] * width) + "]"]
    lines += [f"  - &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_yaml_alias_bomb_inside_a_list_is_refused(tmp_path):
    config = write(tmp_path, "bomb.yaml", alias_bomb())
    proc = run_pipeline(tmp_path / "run", config=config, timeout=120)  # a hang guard, not a speed target
    refused(proc, f"{config} line", "aliases expand to over 100,000 values")


def test_recursive_yaml_alias_is_refused(tmp_path):
    config = write(tmp_path, "rec.yaml", "data:\n  labels: &x [joy, *x]\n")
    proc = run_pipeline(tmp_path / "run", config=config)
    refused(proc, f"{config} line 2: a recursive alias")


def test_yaml_anchors_of_ordinary_size_still_work(tmp_path):
    from core.config import load_config

    config = write(tmp_path, "ok.yaml", "data:\n  labels: &l [joy, fear]\nevaluate: {max_samples: 4}\n")
    assert load_config(config).data.labels == ["joy", "fear"]


def test_latin1_config_is_refused_with_its_line(tmp_path):
    config = tmp_path / "latin1.yaml"
    config.write_bytes("name: tone\ndata:\n  labels: [joie, peur, tristesse, caf\xe9]\n".encode("latin-1"))
    proc = run_pipeline(tmp_path / "run", config=config)
    refused(proc, f"{config} line 3: not UTF-8 text (byte 0xe9)")


@pytest.mark.parametrize(
    "setting,key",
    [
        ("train.lora.r=1000000000", "train.lora.r"),
        ("train.batch_size=100000000", "train.batch_size"),
        ("train.max_seq_len=1000000000", "train.max_seq_len"),
        ("train.max_steps=100000000000", "train.max_steps"),
        ("train.learning_rate=50", "train.learning_rate"),
        ("evaluate.max_new_tokens=1000000", "evaluate.max_new_tokens"),
        ("runtime.threads=1000000", "runtime.threads"),
        ("train.seed=-1", "train.seed"),
    ],
    ids=lambda v: v.split("=")[0] if "=" in v else None,
)
def test_absurd_sizes_are_refused_before_anything_runs(tmp_path, setting, key):
    proc = run_pipeline(tmp_path / "run", setting)
    refused(proc, f"{key}: Input should be")
    assert not (tmp_path / "run").exists()


def test_lora_rank_not_below_the_layer_width_is_refused_before_allocating(tmp_path, tiny_run):
    """r=256 passes the config's bound, but the tiny Phi-3's layers are 128 wide."""
    out = tmp_path / "adapter"
    proc = stage_cli(
        "train",
        "--dataset",
        str(tiny_run / "data_prep" / "dataset"),
        "--adapter",
        str(out),
        "--model.base",
        "tiny-random:phi3",
        "--train.lora.r",
        "256",
    )
    refused(proc, "train.lora.r=256 is not below the smallest width (128) of the target modules", out=out)


@pytest.mark.parametrize(
    "setting,expected",
    [
        (
            "images.registry=UPPER/Case Bad",
            "images.registry: 'UPPER/Case Bad': 'UPPER' is not a valid repository path component",
        ),
        ("images.registry=registry.example.com/slm//x", "is not a valid repository path component"),
        ("images.registry=bad_host:port/x", "'bad_host:port' is not a valid registry host[:port]"),
        ("images.tag=-dash", "images.tag: '-dash' is not a valid image tag"),
        ("images.tag=has space", "images.tag: 'has space' is not a valid image tag"),
        ("images.gpu_tag_suffix=+cuda", "makes the GPU tag '0.1.0+cuda' invalid"),
    ],
    ids=["uppercase-and-space", "empty-component", "bad-host", "tag-dash", "tag-space", "gpu-suffix"],
)
@pytest.mark.parametrize("command", ["run", "compile"])
def test_invalid_image_reference_is_refused(tmp_path, setting, expected, command):
    if command == "run":
        proc = run_pipeline(tmp_path / "run", setting)
    else:
        proc = run_cli(
            str(ROOT / "pipeline.py"),
            "compile",
            "--target",
            "argo",
            "--config",
            str(TINY),
            "--out",
            str(tmp_path / "wf.yaml"),
            "--set",
            setting,
        )
    refused(proc, expected)
    assert not list(tmp_path.iterdir())


def test_valid_image_references_are_accepted():
    from core.config import load_config

    for registry in ("localhost/slm-pipeline", "myregistry.azurecr.io/team/slm", "localhost:5000/a__b/c-d.e", "slm"):
        assert load_config(TINY, [f"images.registry={registry}", "images.tag=v1.2_3-rc.1"]).images.registry == registry


# --- the command line ---------------------------------------------------------------------------


def test_out_that_is_an_existing_file_is_refused(tmp_path):
    out = write(tmp_path, "already-a-file", "keep me\n")
    proc = run_pipeline(out)
    refused(proc, f"--out {out}: is a file, not a folder")
    assert out.read_text() == "keep me\n"


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder nobody may write to: a read-only tmpfs as root (CI), chmod otherwise."""
    path = tmp_path / "ro"
    path.mkdir()
    if os.geteuid() == 0:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)], check=True)
        yield path
        subprocess.run(["umount", str(path)], check=True)
    else:
        path.chmod(0o555)
        yield path
        path.chmod(0o755)


def test_read_only_out_is_refused(tmp_path, read_only_dir):
    for out in (read_only_dir, read_only_dir / "run"):
        proc = run_pipeline(out)
        refused(proc, f"--out {out}: cannot write there")


def test_binary_file_given_to_validate_is_refused(tmp_path):
    binary = tmp_path / "pipeline.yaml"
    binary.write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)))
    proc = run_cli(str(ROOT / "pipeline.py"), "validate", str(binary))
    refused(proc, f"{binary}: not a text file")


def test_debug_flag_shows_the_traceback(tmp_path):
    config = write(tmp_path, "c.yaml", "train: {max_steps: 0}\n")
    quiet = run_pipeline(tmp_path / "run", config=config)
    refused(quiet, "train.max_steps")
    for argv in (["--debug", "run"], ["run", "--debug"]):
        loud = run_cli(str(ROOT / "pipeline.py"), *argv, "--config", str(config), "--out", str(tmp_path / "run"))
        assert loud.returncode != 0 and "Traceback (most recent call last)" in loud.stderr
        assert "UserError" in loud.stderr and "train.max_steps" in loud.stderr


def start_run(out: Path, *sets: str) -> subprocess.Popen:
    """A pipeline run in its own process group, as a terminal's foreground job is."""
    import sys

    args = [sys.executable, str(ROOT / "pipeline.py"), "run", "--config", str(TINY), "--out", str(out)]
    for s in sets:
        args += ["--set", s]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    # A terminal's job takes Ctrl-C; a job started in the background (`cmd &`, as some CI runners
    # start the suite) inherits SIGINT ignored. Restore the terminal's default for the run.
    return subprocess.Popen(
        args,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def wait_for(proc: subprocess.Popen, text: str, lines: list[str]) -> None:
    for line in proc.stdout:
        lines.append(line)
        if text in line:
            return
    raise AssertionError(f"the run ended before {text!r}:\n" + "".join(lines[-30:]))


@pytest.mark.parametrize("when", ["==> train", "step 2/"], ids=["stage-starting", "mid-training"])
def test_ctrl_c_during_a_run_gives_one_line_per_process_and_no_traceback(tmp_path, when):

    out = tmp_path / "run"
    # Far more steps than the tiny config's 12: the run must still be training when the signal lands.
    proc = start_run(out, "train.checkpoint_every=1", "train.max_steps=5000")
    lines: list[str] = []
    try:
        wait_for(proc, when, lines)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: SIGINT to the whole foreground group
        lines += proc.stdout.readlines()
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = "".join(lines)
    assert proc.returncode == 130, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    errors = [line for line in lines if line.startswith("error:")]
    assert 1 <= len(errors) <= 2 and errors[-1].startswith("error: interrupted;"), text[-3000:]
    assert not (out / "train" / "adapter").exists(), text[-4000:]
    assert json.loads((out / "summary.json").read_text())["stages"]["train"]["status"] == "interrupted"
    if when == "step 2/":  # SIGTERM reached the stage: it checkpointed, and says so
        assert "checkpoint saved at step" in errors[0]
        assert (out / "train" / "adapter.checkpoints" / "latest" / "meta.json").is_file()


def test_second_run_into_the_same_out_is_refused_while_the_first_runs(tmp_path):
    import fcntl

    out = tmp_path / "run"
    first = start_run(out)
    lines: list[str] = []
    try:
        wait_for(first, "==> train", lines)
        second = run_pipeline(out, "train.lora.r=4")
        refused(second, f"--out {out} is in use by another run (pid {first.pid})")
        os.killpg(first.pid, signal.SIGTERM)
        first.wait(timeout=300)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    summary = json.loads((out / "summary.json").read_text())  # the first run's, never the refused one's
    assert summary["status"] == "interrupted" and summary["stages"]["data_prep"]["status"] == "ok"
    with open(out / ".run.lock", "a+") as fh:  # the lock went with the first run's process
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_run_lock_of_a_killed_run_does_not_block_the_next(tmp_path):
    import sys

    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); "
            "fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(600)",
            str(out / ".run.lock"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    refused(run_pipeline(out, "train.max_steps=0"), "train.max_steps")  # config errors come first
    refused(run_pipeline(out), f"--out {out} is in use by another run")
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    proc = run_pipeline(out, "data.path=/nonexistent.jsonl")  # gets the lock, then fails in data_prep
    refused(proc, "data.path: /nonexistent.jsonl not found")
