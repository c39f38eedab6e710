"""Model quality on the real embedded model, with the quality gate on.

SmolLM2-135M-Instruct (``configs/default.yaml``: real pretrained weights, its chat template,
LoRA r=16 on q/k/v/o) on the bundled tone data, a 40-step schedule instead of the default 60 so
the run fits CI (~5 min on 2 cores), evaluated on the whole held-out split (137 unique phrases).

The gate is the pipeline's own (``evaluate.min_accuracy``, ``evaluate.max_int4_drop``): a model
under the floor fails the evaluate stage, so the run fails, and so does this test.

Why these numbers (docs/reliability.md, "Model quality"): on CPU the run is deterministic, and
this schedule measured PyTorch 89.1 % (122/137) and INT4 86.9 % (119/137), a drop of 2.2 points.
The floor, 0.80, sits 6.9 points (9 phrases) under INT4: a broken prompt/label path, tokenizer, merge or
INT4 build costs far more (zero-shot is 44 %, the builder's default INT4 recipe lost ~25 points), while another
CPU's float rounding moves a phrase or two, not nine. The INT4 drop limit is the default
config's, 0.05.
"""

from __future__ import annotations

import json

from helpers import ROOT, run_pipeline, summary

CONFIG = ROOT / "configs" / "default.yaml"
STEPS = 40
FLOOR = 0.80
MAX_DROP = 0.05


def test_smollm2_int4_accuracy_holds_the_floor_with_the_gate_on(tmp_path):
    out = tmp_path / "run"
    proc = run_pipeline(
        out,
        f"train.max_steps={STEPS}",
        "runtime.threads=1",
        f"evaluate.min_accuracy={FLOOR}",
        f"evaluate.max_int4_drop={MAX_DROP}",
        config=CONFIG,
        timeout=3600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]  # a failed gate fails the evaluate stage
    metrics = json.loads((out / "evaluate" / "metrics" / "metrics.json").read_text())
    assert metrics["gate"] == {"min_accuracy": FLOOR, "max_int4_drop": MAX_DROP, "max_class_recall_drop": None}
    assert metrics["samples"] == json.loads((out / "data_prep" / "dataset" / "stats.json").read_text())["eval"]["rows"]
    assert metrics["samples"] >= 130  # the whole held-out split, not a sample of it
    int4, torch_acc = metrics["onnx_int4"]["accuracy"], metrics["pytorch"]["accuracy"]
    assert int4 >= FLOOR, f"INT4 accuracy {int4:.3f} under the floor {FLOOR}"
    assert torch_acc - int4 <= MAX_DROP, f"INT4 is {torch_acc - int4:.3f} below PyTorch"
    assert summary(out)["metrics"]["onnx_int4"]["accuracy"] == int4
