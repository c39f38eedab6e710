"""evaluate's report.html: self-contained, rendered by headless Chromium, every section in the DOM."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

SECTIONS = ["config", "loss", "confusion", "per-class", "agreement", "size-latency", "gate"]


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail(
        "headless Chromium is needed to render report.html and is not installed: "
        "apt-get install -y chromium (.ci/run installs it)",
        pytrace=False,
    )


def render(page: Path, tmp: Path) -> tuple[str, Path]:
    """The DOM after load and a screenshot, from headless Chromium with no network use."""
    shot = tmp / "report.png"
    proc = subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp / 'profile'}",
            "--window-size=1200,2400",
            "--virtual-time-budget=5000",
            f"--screenshot={shot}",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, shot


class Ids(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.imgs, self.external = set(), [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"])
        if tag == "img":
            self.imgs.append(a)
        for key in ("src", "href"):
            if a.get(key) and not a[key].startswith(("data:", "#")):
                self.external.append((tag, a[key]))


def test_report_is_self_contained_and_renders_in_chromium(tiny_run, tmp_path):
    page = tiny_run / "evaluate" / "metrics" / "report.html"
    assert page.is_file()
    assert json.loads((tiny_run / "summary.json").read_text())["report"] == str(page)
    text = page.read_text()
    static = Ids()
    static.feed(text)
    assert static.external == []  # no link, script or image from elsewhere
    # four charts: loss, confusion matrices, per-class, size/latency
    assert len(static.imgs) == 4 and all(i["src"].startswith("data:image/png;base64,") for i in static.imgs)

    # A copy with a probe that records, after load, each image's decoded width into the DOM.
    probe = tmp_path / "report.html"
    probe.write_text(
        text.replace(
            "</body>",
            "<script>window.addEventListener('load',()=>document.querySelectorAll"
            "('img').forEach(i=>i.setAttribute('data-w',i.naturalWidth)))</script></body>",
        )
    )
    dom, shot = render(probe, tmp_path)
    seen = Ids()
    seen.feed(dom)
    assert set(SECTIONS) <= seen.ids, f"missing sections: {set(SECTIONS) - seen.ids}"
    widths = [int(i.get("data-w", 0)) for i in seen.imgs]
    assert widths and all(w > 100 for w in widths), widths  # every embedded PNG decoded
    assert shot.is_file() and shot.stat().st_size > 20_000

    import matplotlib.image as mpimg

    pixels = mpimg.imread(shot)
    assert pixels.shape[0] >= 2000 and pixels.std() > 0.05  # a page with content, not a blank screenshot

    # the content: the lineage, the loss from the training log, the gate's verdict
    metrics = json.loads((tiny_run / "evaluate" / "metrics" / "metrics.json").read_text())
    seal = json.loads((tiny_run / "data_prep" / "dataset" / "_artifact.json").read_text())
    assert seal["content_hash"] in dom and "tiny-random:phi3" in dom and "transformers" in dom
    history = [
        json.loads(line) for line in (tiny_run / "train" / "adapter" / "train_log.jsonl").read_text().splitlines()
    ]
    loss = re.search(r'<section id="loss">.*?</section>', dom, re.S).group(0)
    assert "<img" in loss and f"{history[-1]['loss']:.4f}" in loss
    gate = re.search(r'<section id="gate">.*?</section>', dom, re.S).group(0)
    assert "PASSED" in gate and "evaluate.max_int4_drop" in gate
    agreement = re.search(r'<section id="agreement">.*?</section>', dom, re.S).group(0)
    assert f"{metrics['agreement']:.1%}" in agreement


def section(page: str, name: str) -> str:
    found = re.search(rf'<section id="{name}">.*?</section>', page, re.S)
    assert found, f"no #{name} section"
    return found.group(0)


def test_report_holds_the_run_identity_and_where_it_was_measured(tiny_run):
    from helpers import TINY

    from core.hashing import ROOT

    page = (tiny_run / "evaluate" / "metrics" / "report.html").read_text()
    identity = section(page, "identity")
    assert str(tiny_run) in identity and str(TINY) in identity
    assert hashlib.sha256(TINY.read_bytes()).hexdigest()[:16] in identity
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert head and head in identity  # the code version: this checkout's commit
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", identity)
    for stage in ("data_prep", "train", "merge", "onnx_build"):  # the stages that ran before evaluate, timed
        assert re.search(rf"<td>{stage}</td><td>\d+\.\d s</td>", identity), stage

    latency = section(page, "size-latency")
    metrics = json.loads((tiny_run / "evaluate" / "metrics" / "metrics.json").read_text())
    n = metrics["onnx_int4"]["latency_samples"]
    assert n == 24 and f"n={n} prompts" in latency and "fewer than 50" in latency  # tiny: 24 eval rows
    assert "torch threads" in latency and "load average" in latency and "batched tokens/s" in latency
    assert "INT4 batched tokens/s can be lower" in latency
    # the disagreement table shows the row's own words, not the rendered template
    agreement = section(page, "agreement")
    assert "&lt;|user|&gt;" not in agreement
    assert all(i.get("alt") for i in _imgs(page))


def _imgs(page: str) -> list[dict]:
    p = Ids()
    p.feed(page)
    return p.imgs


def test_a_failed_gate_names_only_files_that_exist_and_keeps_its_numbers(tiny_run, tmp_path):
    from helpers import run_pipeline, summary

    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    proc = run_pipeline(out, "evaluate.min_accuracy=1.0")  # the tiny random model cannot reach it
    assert proc.returncode == 3, proc.stderr[-2000:]
    said = proc.stdout + proc.stderr
    named = set(re.findall(rf"{re.escape(str(out))}[^\s,;)]*", said))
    assert any(p.endswith("metrics.rejected.html") for p in named)
    missing = [p for p in named if not Path(p).exists()]
    assert not missing, f"printed paths that do not exist: {missing}"
    assert not (out / "evaluate" / "metrics").exists()

    rejected = json.loads((out / "evaluate" / "metrics.rejected.json").read_text())
    s = summary(out)
    assert s["status"] == "failed" and s["report"] == str(out / "evaluate" / "metrics.rejected.html")
    assert s["metrics"] == rejected["summary"] and s["metrics"]["onnx_int4"]["accuracy"] < 1.0
    assert s["gate"]["passed"] is False and "evaluate.min_accuracy 1.0" in s["gate"]["failures"][0]

    page = (out / "evaluate" / "metrics.rejected.html").read_text()
    banner = re.search(r'<div id="verdict" class="banner">(.*?)</div>', page, re.S)
    assert banner and "FAILED" in banner.group(1) and "evaluate.min_accuracy 1.0" in banner.group(1)
    ids = Ids()
    ids.feed(page)
    assert set(SECTIONS) | {"identity", "verdict"} <= ids.ids  # the same page as a pass, with the banner


def test_per_class_recall_drop_is_flagged_and_gates_when_set():
    from stages.evaluate.stage import class_recall_check

    def model(recalls):
        return {"per_class": {c: {"recall": r} for c, r in recalls.items()}}

    report = {"pytorch": model({"joy": 0.9, "fear": 0.8}), "onnx_int4": model({"joy": 0.88, "fear": 0.5})}
    found, failure, checks = class_recall_check(report, "onnx_int4", ["joy", "fear"], None)
    assert found["flagged"] == ["fear"] and failure is None and checks == []  # unset: flagged, not gated
    found, failure, checks = class_recall_check(report, "onnx_int4", ["joy", "fear"], 0.2)
    assert found["drops"] == {"joy": 0.02, "fear": 0.3}
    assert "class 'fear' is 0.300 below PyTorch, over evaluate.max_class_recall_drop 0.2" in failure
    assert checks[0]["ok"] is False
    found, failure, checks = class_recall_check(report, "onnx_int4", ["joy", "fear"], 0.5)
    assert found["flagged"] == [] and failure is None and checks[0]["ok"] is True


def test_per_class_gate_on_a_real_run(tiny_run, tmp_path):
    """evaluate.max_class_recall_drop=0: any class INT4 recalls worse than PyTorch fails the gate."""
    from helpers import run_pipeline

    drops = json.loads((tiny_run / "evaluate" / "metrics" / "metrics.json").read_text())["class_recall"]["drops"]
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    proc = run_pipeline(out, "evaluate.max_class_recall_drop=0")
    worse = [c for c, d in drops.items() if d > 0]
    if worse:
        assert proc.returncode == 3 and "evaluate.max_class_recall_drop 0" in proc.stderr, proc.stderr[-2000:]
        page = (out / "evaluate" / "metrics.rejected.html").read_text()
    else:
        assert proc.returncode == 0, proc.stderr[-2000:]
        page = (out / "evaluate" / "metrics" / "report.html").read_text()
    assert "every class ≤ evaluate.max_class_recall_drop" in section(page, "gate")
