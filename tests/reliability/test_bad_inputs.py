"""The bad-input catalogue: each case gets one clear line naming the problem, a non-zero
exit, and leaves no artifact behind. docs/reliability.md counts these cases."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import run_pipeline, stage_cli

GOOD = [{"phrase": f"phrase number {i}", "tone": ["joy", "fear"][i % 2]} for i in range(20)]


# (case id, the data file's bytes, extra overrides, expected text in the error)
def jsonl(rows) -> bytes:
    return "\n".join(json.dumps(r) for r in rows).encode()


DATA_CASES = [
    ("missing-field", jsonl(GOOD[:5] + [{"phrase": "no tone here"}]), [], "line 6: field 'tone' is missing or empty"),
    (
        "empty-field",
        jsonl(GOOD[:3] + [{"phrase": "  ", "tone": "joy"}]),
        [],
        "line 4: field 'phrase' is missing or empty",
    ),
    ("empty-file", b"", [], "is empty"),
    ("bad-json", b'{"phrase": "a", "tone": "joy"}\n{oops', [], "line 2: not valid JSON"),
    (
        "unknown-label",
        jsonl(GOOD + [{"phrase": "x", "tone": "anger"}]),
        ["data.labels=[joy, fear]"],
        "label 'anger' is not in data.labels",
    ),
    ("one-class", jsonl([{"phrase": f"p{i}", "tone": "joy"} for i in range(9)]), [], "only one label"),
    ("not-utf8", jsonl(GOOD[:1]) + b'\n{"phrase": "caf\xe9", "tone": "joy"}', [], "line 2: not UTF-8"),
    ("too-long", jsonl(GOOD + [{"phrase": "x" * 5000, "tone": "joy"}]), [], "over data.max_text_chars"),
    (
        "template-column",
        jsonl(GOOD),
        ["data.text_template=Q: {question}\nA: {tone}"],
        "names column(s) ['question'] that the data lacks",
    ),
    ("wrong-field-type", jsonl(GOOD + [{"phrase": ["a", "list"], "tone": "joy"}]), [], "field 'phrase' must be text"),
    ("row-not-object", b'["joy", "fear"]\n', [], "line 1: expected an object"),
    (
        "missing-eval-file",
        jsonl(GOOD),
        ["data.eval_path=/nonexistent/eval.jsonl"],
        "data.eval_path: /nonexistent/eval.jsonl not found",
    ),
    ("prompt-over-seq-len", jsonl(GOOD), ["train.max_seq_len=9"], "every prompt is longer than train.max_seq_len=9"),
]

CONFIG_CASES = [
    ("unknown-key", ["train.lora.rank=4"], "train.lora.rank: unknown key"),
    ("wrong-type", ["train.max_steps=lots"], "train.max_steps: Input should be a valid integer"),
    ("negative-r", ["train.lora.r=-1"], "train.lora.r: Input should be greater than 0"),
    ("zero-steps", ["train.max_steps=0"], "train.max_steps: Input should be greater than 0"),
    ("eval-fraction", ["data.eval_fraction=1.0"], "data.eval_fraction: Input should be less than 1"),
    ("bad-precision", ["onnx.precision=int3"], "onnx.precision: Input should be"),
    ("dropout-one", ["train.lora.dropout=1.0"], "train.lora.dropout: Input should be less than 1"),
    ("batch-zero", ["train.batch_size=0"], "train.batch_size: Input should be greater than 0"),
    ("bad-provider", ["onnx.execution_provider=tpu"], "onnx.execution_provider: Input should be 'cpu' or 'cuda'"),
    ("bad-bool", ["model.trust_remote_code=maybe"], "model.trust_remote_code: Input should be a valid boolean"),
    ("unknown-section", ["trainer.lr=1"], "trainer: unknown key"),
    ("block-size", ["onnx.int4_block_size=17"], "onnx.int4_block_size: Input should be 16, 32, 64, 128 or 256"),
    ("path-escape", ["data.path=../../etc/passwd"], "climbs out of the working folder"),
    ("set-without-equals", ["train.max_steps"], "expected key.path=value"),
]


def reseal(folder: Path) -> None:
    """Re-seal an artifact after changing its files, as its stage would have (a valid artifact)."""
    from core.hashing import MARKER, digest, tree_files

    marker = json.loads((folder / MARKER).read_text())
    files = tree_files(folder)
    marker.update(files=files, content_hash=digest(files))
    (folder / MARKER).write_text(json.dumps(marker))


def merge(tiny_run: Path, out: Path, base: str, *args: str, **popen):
    """The merge stage on the shared run's adapter, into ``out/model``."""
    return stage_cli(
        "merge",
        "--adapter",
        str(tiny_run / "train" / "adapter"),
        "--model",
        str(out / "model"),
        "--model.base",
        base,
        *args,
        **popen,
    )


def assert_clean_failure(proc, expected: str, out: Path) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert expected in proc.stderr, proc.stderr[-2000:]
    leftovers = [p for p in out.rglob("*") if p.name.startswith(".") and ".tmp-" in p.name] if out.exists() else []
    assert not leftovers, leftovers


@pytest.mark.parametrize("case,raw,overrides,expected", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_bad_data(tmp_path, case, raw, overrides, expected):
    out = tmp_path / "run"
    data = tmp_path / "data.jsonl"
    data.write_bytes(raw)
    proc = run_pipeline(out, f"data.path={data}", *overrides)
    assert_clean_failure(proc, expected, out)
    failed = [
        n for n, st in json.loads((out / "summary.json").read_text())["stages"].items() if st["status"] == "failed"
    ]
    assert len(failed) == 1
    for stage in ("data_prep", "train", "merge", "onnx_build", "evaluate")[("data_prep", "train").index(failed[0]) :]:
        assert not any((out / stage).glob("[!.]*")), f"{stage} left an output"


@pytest.mark.parametrize("case,overrides,expected", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_bad_config(tmp_path, case, overrides, expected):
    out = tmp_path / "run"
    proc = run_pipeline(out, *overrides)
    assert_clean_failure(proc, expected, out)
    assert not out.exists(), "a config error must stop the run before anything is written"


def test_missing_data_file(tmp_path):
    out = tmp_path / "run"
    proc = run_pipeline(out, f"data.path={tmp_path / 'nope.jsonl'}")
    assert_clean_failure(proc, "data.path:", out)


def test_missing_model_folder(tmp_path):
    out = tmp_path / "run"
    proc = run_pipeline(out, f"model.base={tmp_path / 'no-such-model'}")
    assert_clean_failure(proc, "model.base: folder not found", out)


def _train(tiny_run, out, *args: str):
    """train on the tiny run's dataset into ``out/adapter``, with the given flags."""
    dataset = str(tiny_run / "data_prep" / "dataset")
    return out, stage_cli("train", "--dataset", dataset, "--adapter", str(out / "adapter"), *args)


def test_model_folder_without_tokenizer(tmp_path, tiny_run):
    model = tmp_path / "model"
    shutil.copytree(tiny_run / "merge" / "model", model)
    (model / "tokenizer.json").unlink()
    out, proc = _train(tiny_run, tmp_path / "run", "--model.base", str(model))
    assert_clean_failure(proc, "has no tokenizer", out)
    assert not (out / "adapter").exists()


def test_pickle_weights_are_refused(tmp_path, tiny_run):
    import torch
    from safetensors.torch import load_file

    model = tmp_path / "model"
    shutil.copytree(tiny_run / "merge" / "model", model)
    weights = load_file(model / "model.safetensors")
    (model / "model.safetensors").unlink()
    torch.save(weights, model / "pytorch_model.bin")
    out = tmp_path / "out"
    proc = merge(tiny_run, out, str(model))
    assert_clean_failure(proc, "has only pickle weights", out)


def test_corrupted_safetensors(tmp_path, tiny_run):
    model = tmp_path / "model"
    shutil.copytree(tiny_run / "merge" / "model", model)
    data = (model / "model.safetensors").read_bytes()
    (model / "model.safetensors").write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    proc = merge(tiny_run, out, str(model))
    assert_clean_failure(proc, "cannot load model", out)
    assert not (out / "model").exists()


def test_adapter_that_does_not_fit_the_base(tmp_path, tiny_run):
    out = tmp_path / "out"
    proc = merge(tiny_run, out, "embedded:smollm2-135m-instruct")
    assert_clean_failure(proc, "does not fit", out)
    assert not (out / "model").exists()


def _evaluate(tiny_run, onnx, tmp_path):
    """evaluate on the tiny run's dataset and merged model, with the given ONNX folder."""
    out = tmp_path / "out"
    return out, stage_cli(
        "evaluate",
        "--dataset",
        str(tiny_run / "data_prep" / "dataset"),
        "--model",
        str(tiny_run / "merge" / "model"),
        "--onnx_model",
        str(onnx),
        "--metrics",
        str(out / "m"),
    )


def test_onnx_folder_without_genai_config_is_refused(tmp_path, tiny_run):
    onnx = tmp_path / "onnx"
    shutil.copytree(tiny_run / "onnx_build" / "onnx_model", onnx)
    (onnx / "genai_config.json").unlink()
    out, proc = _evaluate(tiny_run, onnx, tmp_path)
    # The marker no longer matches the files: refused before any model is loaded.
    assert_clean_failure(proc, "was modified after it was written (genai_config.json)", out)


def test_sealed_onnx_folder_without_genai_config_is_refused_by_evaluate(tmp_path, tiny_run):
    """A builder that forgot genai_config.json but sealed its output anyway: the marker matches,
    so evaluate's own check is what stops it."""
    onnx = tmp_path / "onnx"
    shutil.copytree(tiny_run / "onnx_build" / "onnx_model", onnx)
    (onnx / "genai_config.json").unlink()
    reseal(onnx)
    out, proc = _evaluate(tiny_run, onnx, tmp_path)
    assert_clean_failure(proc, "has no genai_config.json; it is not an onnxruntime-genai model", out)
    assert not (out / "m").exists()


def test_input_without_marker_is_refused(tmp_path, tiny_run):
    ds = tmp_path / "ds"
    shutil.copytree(tiny_run / "data_prep" / "dataset", ds)
    (ds / "_artifact.json").unlink()
    out = tmp_path / "out"
    proc = stage_cli("train", "--dataset", str(ds), "--adapter", str(out / "adapter"))
    assert_clean_failure(proc, "is not a finished artifact", out)


def test_quality_gate_failure_is_clear(tmp_path, tiny_run):
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    proc = run_pipeline(out, "evaluate.min_accuracy=0.99")
    assert_clean_failure(proc, "quality gate failed", out)
    assert not (out / "evaluate" / "metrics").exists()
    assert (out / "evaluate" / "metrics.rejected.json").is_file()
    page = out / "evaluate" / "metrics.rejected.html"  # the report, with the verdict, beside it
    assert "FAILED" in page.read_text() and "evaluate.min_accuracy 0.99" in page.read_text()
    assert f"report: {page}" in proc.stdout


def test_config_file_not_found(tmp_path):
    proc = run_pipeline(tmp_path / "run", config=tmp_path / "nope.yaml")
    assert_clean_failure(proc, "config file not found", tmp_path / "run")


def test_config_file_not_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    proc = run_pipeline(tmp_path / "run", config=bad)
    assert_clean_failure(proc, "not valid YAML", tmp_path / "run")


def test_wrong_artifact_type_is_refused(tmp_path, tiny_run):
    out = tmp_path / "out"
    proc = stage_cli("train", "--dataset", str(tiny_run / "train" / "adapter"), "--adapter", str(out / "adapter"))
    assert_clean_failure(proc, "is a Model artifact, expected Dataset", out)
    assert not (out / "adapter").exists()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_corrupt_lora_weight_fails_the_parity_check(tmp_path, tiny_run, bad):
    """One LoRA weight corrupted after training (the adapter re-sealed, as a buggy trainer would
    have sealed it): the merge's own parity check must fail, at the default tolerance."""
    from safetensors.torch import load_file, save_file

    adapter = tmp_path / "adapter"
    shutil.copytree(tiny_run / "train" / "adapter", adapter)
    weights = load_file(adapter / "adapter_model.safetensors")
    name = sorted(k for k in weights if "lora_A" in k)[0]
    weights[name].view(-1)[0] = bad
    save_file(weights, adapter / "adapter_model.safetensors")
    reseal(adapter)
    out = tmp_path / "out"
    proc = stage_cli(
        "merge", "--adapter", str(adapter), "--model", str(out / "model"), "--model.base", "tiny-random:phi3"
    )
    assert_clean_failure(proc, "the merge is not faithful", out)
    assert not (out / "model").exists()


def test_parity_tolerance_below_float_rounding_fails_the_merge(tmp_path, tiny_run):
    out = tmp_path / "out"
    proc = merge(tiny_run, out, "tiny-random:phi3", "--merge.parity_tolerance", "1e-12")
    assert_clean_failure(proc, "the merge is not faithful", out)
    assert not (out / "model").exists()


def test_unknown_target_modules(tmp_path, tiny_run):
    out, proc = _train(
        tiny_run, tmp_path / "out", "--model.base", "tiny-random:phi3", "--train.lora.target_modules", "[nope_proj]"
    )
    assert_clean_failure(proc, "are not Linear layers of this model", out)
    assert not (out / "adapter").exists()


def test_disk_full_mid_write(tmp_path, tiny_run):
    """A 1 MB file-size limit makes the 2 MB weights write fail halfway, as a full disk would."""
    import resource
    import signal

    def small_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    out = tmp_path / "out"
    proc = merge(tiny_run, out, "tiny-random:phi3", preexec_fn=small_disk)
    assert_clean_failure(proc, "disk full while writing", out)
    assert not (out / "model").exists()
    assert not list(out.glob(".model.tmp-*")), "the half-written folder was not removed"


def test_link_out_of_an_artifact_is_refused(tmp_path, tiny_run):
    ds = tmp_path / "ds"
    shutil.copytree(tiny_run / "data_prep" / "dataset", ds)
    (ds / "secrets.txt").symlink_to("/etc/passwd")
    out = tmp_path / "out"
    proc = stage_cli("train", "--dataset", str(ds), "--adapter", str(out / "adapter"))
    assert_clean_failure(proc, "holds a link that leaves the artifact", out)
