"""``report.html``: one self-contained page (images embedded as base64 PNGs, no external
link, script or stylesheet) that says what the evaluate stage found.

Sections, each an element with a stable id that the tests look for: ``#verdict`` (the FAILED
banner, on a failed gate only), ``#identity`` (which run: run folder, config file and its hash,
dates, git commit, stage timings), ``#config`` (config and lineage: dataset hash, base model,
package versions), ``#loss`` (the training loss curve), ``#confusion`` (PyTorch and INT4
confusion matrices side by side), ``#per-class`` (precision and recall per class, classes INT4
recalls much worse flagged), ``#agreement`` (PyTorch vs INT4, with the rows where they
disagree), ``#size-latency`` (size, batch-1 latency and batched throughput, with the machine
and its load), ``#int4-search`` (the INT4 recipe search's front, when onnx_build ran it) and
``#gate`` (the verdict).
Rendered with matplotlib's Agg backend: no display needed.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

MAX_DISAGREEMENTS = 50


def _png(fig, alt: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _table(header: list[str], rows: list[list], cls: str = "", flagged: list[int] = ()) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        ("<tr class=flag>" if i in flagged else "<tr>")
        + "".join(f"<td>{html.escape(str(c))}</td>" for c in row)
        + "</tr>"
        for i, row in enumerate(rows)
    )
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
        ax.set_xlabel("class")
        ax.set_ylabel(metric)
    # One legend, below the plots: never over a bar.
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=len(models), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def size_latency_figure(report: dict, models: list[str]):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3))
    sizes = [report[m]["size_bytes"] / 1e6 for m in models]
    axes[0].bar(models, sizes, color=["#4c72b0", "#dd8452"][: len(models)])
    axes[0].set_ylim(0, max(sizes, default=1) * 1.15)  # room for the value labels under the title
    axes[0].set_xlabel("model")
    axes[0].set_ylabel("MB on disk")
    axes[0].set_title("size")
    for i, v in enumerate(sizes):
        axes[0].text(i, v, f"{v:.1f}", ha="center", va="bottom")
    x = range(len(models))
    axes[1].bar([i - 0.2 for i in x], [report[m]["latency_ms_p50"] for m in models], 0.4, label="p50")
    axes[1].bar([i + 0.2 for i in x], [report[m]["latency_ms_p95"] for m in models], 0.4, label="p95")
    axes[1].set_xticks(list(x), models)
    axes[1].set_xlabel("model")
    axes[1].set_ylabel("ms per prompt (batch 1)")
    axes[1].set_title(f"latency, batch 1 (n={report[models[0]].get('latency_samples', '?')} prompts)")
    axes[1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)  # beside, not over
    fig.tight_layout()
    return fig


def _load(load: dict | None) -> str:
    if not load or not load.get("before"):
        return "n/a"
    fmt = lambda xs: ", ".join(f"{x:.2f}" for x in xs)  # noqa: E731
    return f"{fmt(load['before'])} → {fmt(load['after'] or [])}"


def identity_section(identity: dict, lineage: dict) -> str:
    """Which run this page is: where, from which config, when, from which code; how long each stage took."""
    code = identity.get("git") or ", ".join(f"{k} {v}" for k, v in (lineage.get("code_version") or {}).items())
    sha = identity.get("config_sha256")
    rows = [
        ["run folder", identity.get("run_dir") or "(unknown)"],
        ["config file", (identity.get("config_file") or "(not named)") + (f"  sha256 {sha[:16]}…" if sha else "")],
        ["parameters hash", lineage.get("config_hash") or "(unknown)"],
        ["started", identity.get("started") or "(unknown)"],
        ["evaluated", identity.get("evaluated") or "(unknown)"],
        ["code (git commit)" if identity.get("git") else "code", code or "(unknown)"],
    ]
    stages = identity.get("stages") or {}
    timing = [
        [name, "cached" if s.get("cached") else f"{s.get('seconds') or 0:.1f} s", s.get("status", "ok")]
        for name, s in stages.items()
        if s and s.get("status") != "not run"  # evaluate itself, still running as the page is written
    ]
    timings = "<h3>Stage timings</h3>" + _table(["stage", "time", "status"], timing) if timing else ""
    return '<section id="identity"><h2>Run</h2>' + _table(["", "value"], rows, "mono") + timings + "</section>"


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.15em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.9em;margin:.5em 0}
td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f4f4f4}.pass{color:#17692b;font-weight:bold}.fail{color:#b00020;font-weight:bold}
.banner{background:#b00020;color:#fff;padding:.8em 1em;border-radius:4px;font-size:1.1em;margin:1em 0}
.banner code{background:#8a0019;color:#fff}tr.flag td{background:#fdecee}.note{color:#555;font-size:.9em}
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
    identity: dict | None = None,
) -> str:
    """The page, as one string. ``rows``: the eval rows (prompt, label); ``predictions``: per model,
    the parsed label of each row; ``config``: ``{stage: {key: value}}`` (the chain's parameters)."""
    import matplotlib

    matplotlib.use("Agg")
    models = ["pytorch", onnx_key]
    parts = [
        _head(report, onnx_key, lineage, verdict),
        identity_section(identity or {}, lineage),
        _config_section(lineage, config, versions),
        _loss_section(history),
        _confusion_section(report, models),
        _per_class_section(report, models, onnx_key),
        _agreement_section(report, rows, predictions, onnx_key),
        _speed_section(report, models),
    ]
    if report.get("int4_search"):
        from stages.evaluate.search_report import section

        parts.append(section(report["int4_search"], _png, _table))
    parts.append(_gate_section(verdict))
    parts.append("</body></html>")
    return "\n".join(parts)


def _head(report: dict, onnx_key: str, lineage: dict, verdict: dict) -> str:
    """The title, the FAILED banner when the gate failed, and the one-line verdict."""
    esc = html.escape
    parts = [
        f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>slm-pipeline report</title>"
        f"<style>{CSS}</style></head><body>",
        f"<h1>Evaluation report: {esc(str(lineage.get('base_model')))} fine-tuned</h1>",
    ]
    cls = "pass" if verdict["passed"] else "fail"
    if not verdict["passed"]:
        parts.append(
            '<div id="verdict" class="banner"><strong>FAILED: quality gate.</strong> '
            + esc("; ".join(verdict["failures"]))
            + ". The INT4 model is not promoted; the numbers below are what was measured.</div>"
        )
    parts.append(
        f'<p>Verdict: <span class="{cls}">{"PASSED" if verdict["passed"] else "FAILED"}</span> · '
        f"{onnx_key} accuracy {report[onnx_key]['accuracy']:.1%} · PyTorch {report['pytorch']['accuracy']:.1%} · "
        f"agreement {report['agreement']:.1%} · {report['samples']} held-out rows</p>"
    )
    return "\n".join(parts)


def _config_section(lineage: dict, config: dict, versions: dict) -> str:
    lin_rows = [
        ["dataset hash", lineage.get("dataset_hash")],
        ["base model", lineage.get("base_model")],
        ["base revision", lineage.get("base_revision") or "(default)"],
        ["config hash", lineage.get("config_hash")],
    ]
    lin_rows += [[f"code {k}", v] for k, v in (lineage.get("code_version") or {}).items()]
    cfg_rows = [[stage, key, json.dumps(value)] for stage, params in config.items() for key, value in params.items()]
    return (
        '<section id="config"><h2>Config and lineage</h2>'
        + _table(["", "value"], lin_rows, "mono")
        + "<h3>Package versions</h3>"
        + _table(["package", "version"], sorted(versions.items()))
        + "<details><summary>Every stage's parameters</summary>"
        + _table(["stage", "key", "value"], cfg_rows, "mono")
        + "</details></section>"
    )


def _loss_section(history: list[dict] | None) -> str:
    if history:
        loss = (
            _png(loss_figure(history), f"training loss by step, {len(history)} logged steps")
            + f"<p>{len(history)} logged steps; loss {history[0]['loss']:.4f} at step "
            f"{history[0]['step']} → {history[-1]['loss']:.4f} at step {history[-1]['step']}.</p>"
        )
    else:
        loss = "<p>No training log came with the merged model (it was not made by this pipeline's merge stage).</p>"
    return f'<section id="loss"><h2>Training loss</h2>{loss}</section>'


def _confusion_section(report: dict, models: list[str]) -> str:
    return (
        '<section id="confusion"><h2>Confusion matrices: PyTorch and INT4</h2>'
        + _png(
            confusion_figure(report, models),
            f"confusion matrices of {' and '.join(models)}: true class by row, predicted by column",
        )
        + "</section>"
    )


def _per_class_section(report: dict, models: list[str], onnx_key: str) -> str:
    labels, esc = report["labels"], html.escape
    recall = report.get("class_recall") or {"drops": {}, "flagged": [], "flag_at": None}
    pc_rows = [
        [label]
        + [f"{report[m]['per_class'][label][k]:.3f}" for m in models for k in ("precision", "recall")]
        + [f"{recall['drops'].get(label, 0):+.3f}", report["pytorch"]["per_class"][label]["support"]]
        + ["FLAGGED" if label in recall["flagged"] else ""]
        for label in labels
    ]
    gated = report.get("gate", {}).get("max_class_recall_drop") is not None
    if recall["flagged"]:
        said = (
            f"<p class=fail>{onnx_key} recalls {', '.join(map(esc, recall['flagged']))} more than "
            f"{recall['flag_at'] * 100:.0f} points worse than PyTorch"
            + (
                " (evaluate.max_class_recall_drop: this fails the gate)."
                if gated
                else " (flagged only; set evaluate.max_class_recall_drop to gate on it)."
            )
            + "</p>"
        )
    else:
        said = (
            f"<p>No class is recalled more than {recall['flag_at'] * 100:.0f} points worse by {onnx_key}.</p>"
            if recall["flag_at"] is not None
            else ""
        )
    return (
        '<section id="per-class"><h2>Per-class precision and recall</h2>'
        + _png(per_class_figure(report, models, labels), "precision and recall per class, one bar per model")
        + said
        + _table(
            ["class"]
            + [f"{m} {k}" for m in models for k in ("precision", "recall")]
            + [f"recall drop (PyTorch − {onnx_key})", "support", ""],
            pc_rows,
            flagged=[i for i, label in enumerate(labels) if label in recall["flagged"]],
        )
        + "</section>"
    )


def _agreement_section(report: dict, rows: list[dict], predictions: dict, onnx_key: str) -> str:
    differ = [i for i, (a, b) in enumerate(zip(predictions["pytorch"], predictions[onnx_key])) if a != b]
    dis_rows = [
        [
            i,
            rows[i].get("text") or rows[i]["prompt"][-160:],  # the row's words; older datasets: the prompt's end
            rows[i]["label"],
            predictions["pytorch"][i] or "(unparsed)",
            predictions[onnx_key][i] or "(unparsed)",
        ]
        for i in differ[:MAX_DISAGREEMENTS]
    ]
    more = f"<p>… and {len(differ) - MAX_DISAGREEMENTS} more.</p>" if len(differ) > MAX_DISAGREEMENTS else ""
    return (
        f'<section id="agreement"><h2>PyTorch vs {onnx_key} agreement</h2>'
        f"<p>The two models give the same label on {report['agreement']:.1%} of the {report['samples']} rows; "
        f"they disagree on {len(differ)}.</p>"
        + (
            _table(["row", "text", "true", "pytorch", onnx_key], dis_rows, "mono disagreements")
            if differ
            else "<p>No disagreements.</p>"
        )
        + more
        + "</section>"
    )


def _speed_section(report: dict, models: list[str]) -> str:
    env = report.get("environment") or {}
    sl_rows = [
        [
            m,
            f"{report[m]['size_bytes'] / 1e6:.1f} MB",
            report[m]["latency_ms_p50"],
            report[m]["latency_ms_p95"],
            report[m].get("latency_samples", "?"),
            report[m]["tokens_per_second"],
            report[m].get("batch_size", "?"),
            _load(report[m].get("load_average")),
        ]
        for m in models
    ]
    env_rows = [
        ["device", env.get("device")],
        ["CPU", f"{env.get('cpu')} ({env.get('cores')} cores)"],
        ["torch threads", env.get("torch_threads")],
        *([["GPU", env["gpu"]]] if env.get("gpu") else []),
        ["platform", env.get("platform")],
    ]
    n = min((report[m].get("latency_samples") or 0) for m in models)
    return (
        '<section id="size-latency"><h2>Size, latency and throughput</h2>'
        + _png(size_latency_figure(report, models), "size on disk and batch-1 latency p50/p95 per model")
        + _table(
            [
                "model",
                "size",
                "batch-1 latency p50 ms",
                "batch-1 latency p95 ms",
                "n (prompts timed)",
                "batched tokens/s",
                "batch size",
                "load average (1, 5, 15 min) before → after",
            ],
            sl_rows,
        )
        + "<p class=note><b>Batch-1 latency</b>: one prompt at a time, generation until the label is out "
        f"(n={n} prompts{'; fewer than 50, so p95 is rough' if n < 50 else ''}). <b>Batched tokens/s</b>: "
        "the whole eval split in batches of the batch size, generated tokens up to each row's end divided by "
        "the time. The two need not agree: at batch 1 decoding is bound by reading the weights, where INT4's "
        "smaller weights win; in batches the work is bound by arithmetic, where PyTorch's dense float "
        "matrix multiplies batch well while INT4 MatMulNBits dequantizes each block as it goes, and "
        "onnxruntime-genai steps every row until the longest is done. So INT4 batched tokens/s can be lower "
        "than PyTorch's even when its latency is better.</p>"
        + "<h3>Measured on</h3>"
        + _table(["", "value"], env_rows)
        + "<p class=note>Figures depend on the machine and on what else ran on it: compare them only with runs "
        "on the same hardware and a similar load.</p></section>"
    )


def _gate_section(verdict: dict) -> str:
    cls, esc = ("pass" if verdict["passed"] else "fail"), html.escape
    checks = [[c["check"], c["value"], c["threshold"], "pass" if c["ok"] else "FAIL"] for c in verdict["checks"]]
    said = (
        "PASSED: the INT4 model may be promoted"
        if verdict["passed"]
        else "FAILED: " + esc("; ".join(verdict["failures"]))
    )
    return (
        f'<section id="gate"><h2>Quality gate</h2><p class="{cls}">{said}'
        "</p>" + _table(["check", "value", "threshold", "result"], checks) + "</section>"
    )


def write(path: Path, **kwargs) -> Path:
    path.write_text(render(**kwargs), encoding="utf-8")
    return path
