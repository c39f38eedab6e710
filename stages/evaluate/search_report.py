"""report.html's ``#int4-search`` section: the INT4 recipe search's points (build_info.json's
``search``, stages/onnx_build/search.py), accuracy against batch-1 latency, size as marker
area, the Pareto front joined, the chosen point marked, PyTorch as the reference."""

from __future__ import annotations

import html


def figure(search: dict):
    import matplotlib.pyplot as plt

    points, ref = search["points"], search["pytorch"]
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    area = [max(p["size_bytes"] / 1e6, 1.0) * 2 for p in points]  # 2 pt² per MB
    colors = ["#4c72b0" if p["feasible"] else "#bbbbbb" for p in points]
    ax.scatter([p["latency_ms_p50"] for p in points], [p["accuracy"] for p in points], s=area, c=colors, alpha=0.6)
    front = sorted((p for p in points if p["on_front"]), key=lambda p: p["latency_ms_p50"])
    ax.plot([p["latency_ms_p50"] for p in front], [p["accuracy"] for p in front], "-", color="#4c72b0", lw=1)
    chosen = next(p for p in points if p["name"] == search["chosen"])
    ax.scatter([chosen["latency_ms_p50"]], [chosen["accuracy"]], s=220, marker="*", c="#dd8452", zorder=3)
    ax.annotate("chosen", (chosen["latency_ms_p50"], chosen["accuracy"]), xytext=(6, -12), textcoords="offset points")
    ref_area = max(ref["size_bytes"] / 1e6, 1.0) * 2
    ax.scatter([ref["latency_ms_p50"]], [ref["accuracy"]], marker="s", edgecolors="k", facecolors="none", s=ref_area)
    ax.annotate("PyTorch fp32", (ref["latency_ms_p50"], ref["accuracy"]), xytext=(6, 4), textcoords="offset points")
    budget = ref["accuracy"] - search["max_accuracy_drop"]
    if budget > 0:  # a budget wider than the accuracy itself draws no line
        ax.axhline(budget, color="#c44e52", ls="--", lw=1)
        ax.annotate("accuracy budget", (ax.get_xlim()[0], budget), xytext=(4, 3), textcoords="offset points")
    ax.set_xlabel("batch-1 latency p50, ms (lower is better)")
    ax.set_ylabel("eval accuracy")
    ax.set_title(f"INT4 recipe search: {len(points)} points, marker area = size on disk")
    ax.grid(alpha=0.3)
    return fig


def section(search: dict, png, table) -> str:
    """The section's HTML; ``png`` and ``table`` are report.py's helpers (one look for the page)."""
    ref, esc = search["pytorch"], html.escape
    rows = [
        [
            ("★ " if p["name"] == search["chosen"] else "") + p["name"],
            f"{p['accuracy']:.3f}",
            f"{p['accuracy_drop']:+.3f}",
            f"{p['macro_f1']:.3f}",
            p["latency_ms_p50"],
            p["latency_ms_p95"],
            f"{p['latency_ratio']:.2f}×",
            p["tokens_per_second"],
            f"{p['throughput_ratio']:.2f}×",
            f"{p['size_bytes'] / 1e6:.0f} MB",
            "yes" if p["on_front"] else "",
        ]
        for p in search["points"]
    ]
    verdict = (
        f"The chosen point is the fastest within {search['max_accuracy_drop']:.3f} accuracy of PyTorch."
        if search["chosen_in_budget"]
        else f"No point came within {search['max_accuracy_drop']:.3f} of PyTorch; the most accurate one was chosen "
        "and the quality gate decides."
    )
    return (
        '<section id="int4-search"><h2>INT4 recipe search</h2>'
        + png(figure(search), "INT4 search: accuracy against batch-1 latency, marker area size, chosen point starred")
        + f"<p>{esc(verdict)} PyTorch fp32: accuracy {ref['accuracy']:.3f}, p50 {ref['latency_ms_p50']} ms, "
        f"{ref['tokens_per_second']} tokens/s. {search['builds']} builds, {len(search['points'])} points "
        f"(stopped: {esc(search['stopped'])}); {search['eval_rows']} eval rows; ratios are INT4 / PyTorch, "
        "measured in the onnx_build stage on its machine.</p>"
        + table(
            ["point", "accuracy", "drop", "macro-F1", "p50 ms", "p95 ms", "p50 ×"]
            + ["tokens/s", "tokens/s ×", "size", "front"],
            rows,
            "mono",
            [i for i, p in enumerate(search["points"]) if p["name"] == search["chosen"]],
        )
        + "</section>"
    )
