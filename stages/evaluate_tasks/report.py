"""report.html of a multi-task job: one section per task (switched on the base vs its merged INT4
build, per class), and the memory of one base + N adapters against N merged models."""

from __future__ import annotations

import html
from pathlib import Path

from stages.evaluate.report import CSS, _png, _table


def accuracy_figure(tasks: dict):
    import matplotlib.pyplot as plt

    names = list(tasks)
    fig, ax = plt.subplots(figsize=(1.6 + 1.2 * len(names), 3))
    width = 0.38
    for i, (key, label) in enumerate((("switched", "base + adapter"), ("merged", "merged INT4"))):
        ax.bar(
            [j + (i - 0.5) * width for j in range(len(names))],
            [tasks[n][key]["accuracy"] for n in names],
            width,
            label=label,
        )
    ax.set_xticks(range(len(names)), names)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.legend(loc="lower right")
    return fig


def _task_section(name: str, task: dict) -> str:
    gate = task["gate"]
    rows = [
        [label, f"{task[key]['accuracy']:.3f}", f"{task[key]['macro_f1']:.3f}", f"{task[key]['tokens_per_second']}"]
        for key, label in (("switched", "base + adapter (switched)"), ("merged", "merged INT4"))
    ]
    per_class = [
        [c, f"{task['switched']['per_class'][c]['f1']:.3f}", f"{task['merged']['per_class'][c]['f1']:.3f}"]
        for c in task["labels"]
        if c in task["switched"]["per_class"] and c in task["merged"]["per_class"]
    ]
    verdict = "passed" if gate["passed"] else "FAILED"
    return (
        f'<section id="task-{html.escape(name)}"><h2>Task {html.escape(name)}</h2>'
        f"<p>{task['samples']} held-out rows · agreement {task['agreement']:.1%} · gate {verdict} "
        f"(min accuracy {gate['min_accuracy']}, max switch drop {gate['max_switch_drop']})</p>"
        + _table(["model", "accuracy", "macro F1", "tokens/s"], rows)
        + _table(["class", "F1 switched", "F1 merged"], per_class)
        + "</section>"
    )


def _memory_section(memory: dict | None) -> str:
    if not memory:
        return ""
    one, many, n = memory["base_plus_adapters"]["after"], memory["merged_side_by_side"]["after"], memory["adapters"]
    rows = [
        [f"one base + {n} adapters, one process", f"{one['VmRSS'] / 2**20:.1f} MB", f"{one['VmHWM'] / 2**20:.1f} MB"],
        [f"{n} merged INT4 models side by side", f"{many['VmRSS'] / 2**20:.1f} MB", f"{many['VmHWM'] / 2**20:.1f} MB"],
        ["ratio", f"{memory['ratio_rss']:.3f}", f"{memory['ratio_peak']:.3f}"],
    ]
    return (
        '<section id="memory"><h2>Memory: one base + adapters vs merged models</h2>'
        "<p>Process resident set after one request per task (VmRSS; peak VmHWM).</p>"
        + _table(["", "RSS", "peak"], rows)
        + "</section>"
    )


def render(report: dict) -> str:
    import matplotlib

    matplotlib.use("Agg")
    verdict = report["verdict"]
    cls = "pass" if verdict["passed"] else "fail"
    parts = [
        f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>slm-pipeline tasks report</title>"
        f"<style>{CSS}</style></head><body>",
        f"<h1>Tasks on one INT4 base: {len(report['tasks'])} adapters</h1>",
        f'<p>Verdict: <span class="{cls}">{"PASSED" if verdict["passed"] else "FAILED"}</span>'
        + (": " + html.escape("; ".join(verdict["failures"])) if verdict["failures"] else "")
        + "</p>",
        _png(accuracy_figure(report["tasks"]), "accuracy per task, switched and merged"),
        *(_task_section(name, task) for name, task in report["tasks"].items()),
        _memory_section(report.get("memory")),
        "</body></html>",
    ]
    return "\n".join(parts)


def write(path: Path, report: dict) -> Path:
    path.write_text(render(report), encoding="utf-8")
    return path
