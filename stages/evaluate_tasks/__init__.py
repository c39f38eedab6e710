"""evaluate_tasks: score every task of a multi-task job on the one adapter-ready INT4 base,
switching the adapter per request, against that task's merged INT4 build; apply each task's gate
(``evaluate_tasks.switching``, docs/multi-adapter.md).

Output (Metrics artifact): ``metrics.json`` (per task: switched and merged metrics, their
agreement, the gate; the memory of base + N adapters against N merged models as process RSS)
and ``report.html``. A failed gate leaves ``metrics.rejected.json`` only, and the stage exits 3.
"""
