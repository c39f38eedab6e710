"""evaluate's report.html: self-contained, rendered by headless Chromium, every section in the DOM."""

from __future__ import annotations

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
