"""``report.html``: one self-contained page (images embedded as base64 PNGs, no external
link, script or stylesheet) that says what the evaluate stage found.

Sections, each an element with a stable id that the tests look for:
``#config`` (config and lineage: dataset hash, base model, package versions), ``#loss`` (the
training loss curve), ``#confusion`` (PyTorch and INT4 confusion matrices side by side),
``#per-class`` (precision and recall per class), ``#agreement`` (PyTorch vs INT4, with the rows
where they disagree), ``#size-latency`` (size and latency bars) and ``#gate`` (the verdict).
Rendered with matplotlib's Agg backend: no display needed.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

MAX_DISAGREEMENTS = 50


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return f'<img alt="" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _table(header: list[str], rows: list[list], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def loss_figure(history: list[dict]):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3))
    steps = [h["step"] for h in history]
    ax.plot(steps, [h["loss"] for h in history], marker="o", markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    return fig


def confusion_figure(report: dict, models: list[str]):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models), 4.4), squeeze=False)
    for ax, name in zip(axes[0], models):
        cm = report[name]["confusion_matrix"]
        counts = cm["counts"]
        ax.imshow(counts, cmap="Blues")
        ax.set_xticks(range(len(cm["columns"])), cm["columns"], rotation=40, ha="right")
        ax.set_yticks(range(len(cm["rows"])), cm["rows"])
        top = max((max(r) for r in counts), default=0)
        for i, row in enumerate(counts):
            for j, n in enumerate(row):
                ax.text(j, i, str(n), ha="center", va="center", color="white" if n > top / 2 else "black", fontsize=9)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{name} (accuracy {report[name]['accuracy']:.1%})")
    fig.tight_layout()
    return fig


def per_class_figure(report: dict, models: list[str], labels: list[str]):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    width = 0.8 / len(models)
    for ax, metric in zip(axes, ("precision", "recall")):
        for k, name in enumerate(models):
            values = [report[name]["per_class"][label][metric] for label in labels]
            ax.bar([i + k * width for i in range(len(labels))], values, width, label=name)
        ax.set_xticks([i + width * (len(models) - 1) / 2 for i in range(len(labels))], labels)
        ax.set_ylim(0, 1.05)
        ax.set_title(metric)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def size_latency_figure(report: dict, models: list[str]):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3))
    sizes = [report[m]["size_bytes"] / 1e6 for m in models]
    axes[0].bar(models, sizes, color=["#4c72b0", "#dd8452"][: len(models)])
    axes[0].set_ylabel("MB on disk")
    axes[0].set_title("size")
    for i, v in enumerate(sizes):
        axes[0].text(i, v, f"{v:.1f}", ha="center", va="bottom")
    x = range(len(models))
    axes[1].bar([i - 0.2 for i in x], [report[m]["latency_ms_p50"] for m in models], 0.4, label="p50")
    axes[1].bar([i + 0.2 for i in x], [report[m]["latency_ms_p95"] for m in models], 0.4, label="p95")
    axes[1].set_xticks(list(x), models)
    axes[1].set_ylabel("ms per prompt (batch 1)")
    axes[1].set_title("latency")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    return fig


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.15em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.9em;margin:.5em 0}
td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f4f4f4}.pass{color:#17692b;font-weight:bold}.fail{color:#b00020;font-weight:bold}
img{max-width:100%}code{background:#f4f4f4;padding:0 .2em}
td.mono,.mono td{font-family:ui-monospace,monospace;white-space:pre-wrap}
"""


def render(
    report: dict,
    onnx_key: str,
    rows: list[dict],
    predictions: dict[str, list],
    lineage: dict,
    config: dict,
    versions: dict,
    history: list[dict] | None,
    verdict: dict,
) -> str:
    """The page, as one string. ``rows``: the eval rows (prompt, label); ``predictions``: per model,
    the parsed label of each row; ``config``: ``{stage: {key: value}}`` (the chain's parameters)."""
    import matplotlib

    matplotlib.use("Agg")
    models = ["pytorch", onnx_key]
    labels = report["labels"]
    esc = html.escape
    parts = [
        f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>slm-pipeline report</title>"
        f"<style>{CSS}</style></head><body>",
        f"<h1>Evaluation report: {esc(str(lineage.get('base_model')))} fine-tuned</h1>",
    ]
    cls = "pass" if verdict["passed"] else "fail"
    parts.append(
        f'<p>Verdict: <span class="{cls}">{"PASSED" if verdict["passed"] else "FAILED"}</span> · '
        f"{onnx_key} accuracy {report[onnx_key]['accuracy']:.1%} · PyTorch {report['pytorch']['accuracy']:.1%} · "
        f"agreement {report['agreement']:.1%} · {report['samples']} held-out rows</p>"
    )

    # config and lineage
    lin_rows = [
        ["dataset hash", lineage.get("dataset_hash")],
        ["base model", lineage.get("base_model")],
        ["base revision", lineage.get("base_revision") or "(default)"],
        ["config hash", lineage.get("config_hash")],
    ]
    lin_rows += [[f"code {k}", v] for k, v in (lineage.get("code_version") or {}).items()]
    cfg_rows = [[stage, key, json.dumps(value)] for stage, params in config.items() for key, value in params.items()]
    parts.append(
        '<section id="config"><h2>Config and lineage</h2>'
        + _table(["", "value"], lin_rows, "mono")
        + "<h3>Package versions</h3>"
        + _table(["package", "version"], sorted(versions.items()))
        + "<details><summary>Every stage's parameters</summary>"
        + _table(["stage", "key", "value"], cfg_rows, "mono")
        + "</details></section>"
    )

    # training loss
    if history:
        loss = (
            _png(loss_figure(history)) + f"<p>{len(history)} logged steps; loss {history[0]['loss']:.4f} at step "
            f"{history[0]['step']} → {history[-1]['loss']:.4f} at step {history[-1]['step']}.</p>"
        )
    else:
        loss = "<p>No training log came with the merged model (it was not made by this pipeline's merge stage).</p>"
    parts.append(f'<section id="loss"><h2>Training loss</h2>{loss}</section>')

    parts.append(
        '<section id="confusion"><h2>Confusion matrices: PyTorch and INT4</h2>'
        + _png(confusion_figure(report, models))
        + "</section>"
    )

    pc_rows = [
        [label]
        + [f"{report[m]['per_class'][label][k]:.3f}" for m in models for k in ("precision", "recall")]
        + [report["pytorch"]["per_class"][label]["support"]]
        for label in labels
    ]
    parts.append(
        '<section id="per-class"><h2>Per-class precision and recall</h2>'
        + _png(per_class_figure(report, models, labels))
        + _table(["class"] + [f"{m} {k}" for m in models for k in ("precision", "recall")] + ["support"], pc_rows)
        + "</section>"
    )

    differ = [i for i, (a, b) in enumerate(zip(predictions["pytorch"], predictions[onnx_key])) if a != b]
    dis_rows = [
        [
            i,
            rows[i]["prompt"][-160:],
            rows[i]["label"],
            predictions["pytorch"][i] or "(unparsed)",
            predictions[onnx_key][i] or "(unparsed)",
        ]
        for i in differ[:MAX_DISAGREEMENTS]
    ]
    more = f"<p>… and {len(differ) - MAX_DISAGREEMENTS} more.</p>" if len(differ) > MAX_DISAGREEMENTS else ""
    parts.append(
        f'<section id="agreement"><h2>PyTorch vs {onnx_key} agreement</h2>'
        f"<p>The two models give the same label on {report['agreement']:.1%} of the {report['samples']} rows; "
        f"they disagree on {len(differ)}.</p>"
        + (
            _table(["row", "prompt (end)", "true", "pytorch", onnx_key], dis_rows, "mono disagreements")
            if differ
            else "<p>No disagreements.</p>"
        )
        + more
        + "</section>"
    )

    sl_rows = [
        [
            m,
            f"{report[m]['size_bytes'] / 1e6:.1f} MB",
            report[m]["latency_ms_p50"],
            report[m]["latency_ms_p95"],
            report[m]["tokens_per_second"],
        ]
        for m in models
    ]
    parts.append(
        '<section id="size-latency"><h2>Size and latency</h2>'
        + _png(size_latency_figure(report, models))
        + _table(["model", "size", "latency p50 ms", "latency p95 ms", "tokens/s"], sl_rows)
        + "</section>"
    )

    checks = [[c["check"], c["value"], c["threshold"], "pass" if c["ok"] else "FAIL"] for c in verdict["checks"]]
    said = (
        "PASSED: the INT4 model may be promoted"
        if verdict["passed"]
        else "FAILED: " + esc("; ".join(verdict["failures"]))
    )
    parts.append(
        f'<section id="gate"><h2>Quality gate</h2><p class="{cls}">{said}'
        "</p>" + _table(["check", "value", "threshold", "result"], checks) + "</section>"
    )
    parts.append("</body></html>")
    return "\n".join(parts)


def write(path: Path, **kwargs) -> Path:
    path.write_text(render(**kwargs), encoding="utf-8")
    return path
