"""The INT4 recipe search (issue 18) on the tiny Phi-3 with a small space: real builds with the
pinned model builder, real scoring with the evaluate stage's generators.

The tiny model's accuracy means nothing, so the budget is wide (every point feasible) and the
tests check the search's behaviour: the walk, the front, the choice, the cache, the stage and
the report. The 15-minute figure on the embedded model is a benchmark (docs/benchmarks.md)."""

from __future__ import annotations

import json
import shutil
import time
from types import SimpleNamespace

import pytest
from helpers import run_cli, stage_cli
from hypothesis import given, settings
from hypothesis import strategies as st
from test_report import Ids, render

from core.config import Config, load_config
from core.errors import UserError
from stages.registry import STAGES

# 1 algo x 1 placement x 2 blocks x 2 sensitive counts: a grid of 4 recipes, 2 thread counts.
SPACE = [
    "onnx.search.algo_configs=[rtn]",
    'onnx.search.mixed_precision=[""]',
    "onnx.search.block_sizes=[16,32]",
    "onnx.search.sensitive_layers=[0,2]",
    "onnx.search.threads=[0,1]",
    "onnx.search.max_accuracy_drop=1.0",
    "onnx.search.latency_samples=3",
    "onnx.search.max_samples=12",
    "onnx.search.batch_size=4",
    "onnx.search.calibration_samples=2",
]


def test_search_section_is_strict_and_default_off():
    with pytest.raises(UserError, match=r"onnx\.search\.block_sizes\.0: Input should be 16, 32, 64, 128 or 256"):
        load_config(None, ["onnx.search.block_sizes=[48]"])
    with pytest.raises(UserError, match=r"onnx\.search\.mixed_precision: Value error|selector:type"):
        load_config(None, ['onnx.search.mixed_precision=["lm_head:int8"]'])
    with pytest.raises(UserError, match=r"onnx\.search\.max_acuracy_drop: unknown key; did you mean"):
        load_config(None, ["onnx.search.max_acuracy_drop=0.02"])
    # Off and at its defaults, a stage is not handed the section: compiled pipelines and cache keys stay as they were.
    assert not any(k.startswith("onnx.search.") for k in STAGES["onnx_build"].params(Config()))
    on = load_config(None, ["onnx.search.enabled=true"])
    assert STAGES["onnx_build"].params(on)["onnx.search.enabled"] is True
    assert "onnx.search.max_minutes" in STAGES["onnx_build"].params(Config(), every=True)


def tune(run, out, cache, *sets):
    return run_cli(
        "pipeline.py",
        "tune-int4",
        *("--run", str(run), "--out", str(out)),
        *(x for s in (*SPACE, *sets) for x in ("--set", s)),
        env={"SLM_CACHE_DIR": str(cache)},
    )


def test_tune_int4_finds_the_front_and_a_warm_rerun_scores_nothing(tiny_run, tmp_path):
    cache = tmp_path / "cache"
    proc = tune(tiny_run, tmp_path / "tune", cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads((tmp_path / "tune" / "search.json").read_text())
    points = found["points"]
    names = [p["name"] for p in points]
    assert found["chosen"] in names and found["chosen_in_budget"]
    recipes = {json.dumps(p["recipe"], sort_keys=True) for p in points}
    # Every point is in budget, so the walk only steps toward speed from the fastest: the
    # accuracy step (top2 int8 layers) is pruned and the grid is not exhausted.
    assert len(recipes) == found["builds"] < 4
    assert not any(p["recipe"]["sensitive"] for p in points)
    chosen = next(p for p in points if p["name"] == found["chosen"])
    assert chosen["latency_ms_p50"] == min(p["latency_ms_p50"] for p in points if p["feasible"])
    # Both thread counts were scored on the chosen recipe; the front is the non-dominated set.
    assert {p["threads"] for p in points if p["recipe"] == chosen["recipe"]} == {0, 1}
    for p in points:
        dominated = any(
            q["latency_ms_p50"] <= p["latency_ms_p50"] and q["accuracy"] >= p["accuracy"] and q is not p for q in points
        )
        assert p["on_front"] or dominated
    for key in ("accuracy", "macro_f1", "latency_ms_p50", "latency_ms_p95", "tokens_per_second", "size_bytes"):
        assert isinstance(chosen[key], (int, float)), key
    assert found["pytorch"]["accuracy"] - chosen["accuracy"] == pytest.approx(chosen["accuracy_drop"], abs=1e-4)
    # The chosen model is a loadable onnxruntime-genai folder that runs as it was scored.
    model = tmp_path / "tune" / "model"
    genai = json.loads((model / "genai_config.json").read_text())
    threads = genai["model"]["decoder"]["session_options"].get("intra_op_num_threads")
    assert threads == (chosen["threads"] or None)
    from core.generators import OnnxGenerator

    assert isinstance(OnnxGenerator(model, 2).generate(["<|user|>\nhello<|end|>\n<|assistant|>\n"])[0], str)
    assert "| PyTorch fp32 |" in proc.stdout and "**chosen**" in proc.stdout

    start = time.perf_counter()
    again = tune(tiny_run, tmp_path / "tune2", cache)
    seconds = time.perf_counter() - start
    assert again.returncode == 0, again.stderr[-3000:]
    warm = json.loads((tmp_path / "tune2" / "search.json").read_text())
    assert warm["made"] == {"builds": 0, "scores": 0}  # every build and score came from the cache
    assert all(p["cached"] for p in warm["points"])
    assert [p["name"] for p in warm["points"]] == names and warm["chosen"] == found["chosen"]
    print(f"warm re-run: {seconds:.1f} s")  # the 30 s target is the bench's (bench/int4_latency.py), not a test's


def test_tune_int4_buys_accuracy_when_nothing_is_in_budget(tiny_run, tmp_path):
    """A budget no point meets: the walk takes accuracy steps (int8 for the most sensitive
    layers, by their measured output error) and, still out of budget, ships the most accurate point."""
    proc = tune(tiny_run, tmp_path / "tune", tmp_path / "cache", "onnx.search.max_accuracy_drop=0.0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads((tmp_path / "tune" / "search.json").read_text())
    if found["chosen_in_budget"]:  # some build matched PyTorch exactly: then it must be the fastest such
        from stages.onnx_build.search import speed_order  # p50 is rounded: ties are broken by one order

        best = min((p for p in found["points"] if p["feasible"]), key=speed_order)
        assert found["chosen"] == best["name"]
        return
    assert any(p["recipe"]["sensitive"] == 2 for p in found["points"])
    top = found["sensitivity_top"]
    assert top and all(top[i][1] >= top[i + 1][1] for i in range(len(top) - 1))
    assert all(n.startswith(("/model/layers.", "/lm_head/")) for n, _ in top)
    chosen = next(p for p in found["points"] if p["name"] == found["chosen"])
    assert chosen["accuracy"] == max(p["accuracy"] for p in found["points"])


def test_onnx_build_searches_and_the_report_plots_the_front(tiny_run, tmp_path):
    onnx, metrics = tmp_path / "onnx_model", tmp_path / "metrics"
    flags = [x for s in ("onnx.search.enabled=true", *SPACE) for k, v in [s.split("=", 1)] for x in (f"--{k}", v)]
    env = {"SLM_CACHE_DIR": str(tmp_path / "cache")}
    proc = stage_cli(
        "onnx_build",
        *("--model", str(tiny_run / "merge" / "model"), "--dataset", str(tiny_run / "data_prep" / "dataset")),
        *("--onnx_model", str(onnx), *flags, "--runtime.threads", "1"),
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((onnx / "build_info.json").read_text())
    search = info["search"]
    assert search["chosen"] in search["front"]  # every point is in budget: the fastest is chosen, on the front
    assert info["options"] == next(p for p in search["points"] if p["name"] == search["chosen"])["builder_args"]
    proc = stage_cli(
        "evaluate",
        *("--dataset", str(tiny_run / "data_prep" / "dataset"), "--model", str(tiny_run / "merge" / "model")),
        *("--onnx_model", str(onnx), "--metrics", str(metrics), "--evaluate.max_samples", "12"),
        *("--evaluate.min_accuracy", "0", "--evaluate.max_int4_drop", "1", "--evaluate.max_new_tokens", "4"),
        *("--runtime.threads", "1"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    page = metrics / "report.html"
    assert 'id="int4-search"' in page.read_text()
    dom, shot = render(page, tmp_path)
    ids = Ids()
    ids.feed(dom)
    assert "int4-search" in ids.ids and not ids.external
    plot = [i for i in ids.imgs if i.get("alt", "").startswith("INT4 search")]
    assert plot and plot[0]["src"].startswith("data:image/png;base64,")
    assert shot.stat().st_size > 10_000


def test_a_pruned_lm_head_is_run_in_batches_of_one_length(tiny_run, tmp_path):
    """onnxruntime-genai pads a batch on the right and a pruned LM head computes the last
    position's logits only, so a shorter row decodes from padding. The generator runs such a
    model in batches of one token length: each row gets the tokens it gets alone."""
    onnx = tmp_path / "pruned"
    proc = stage_cli(
        "onnx_build",
        *("--model", str(tiny_run / "merge" / "model"), "--dataset", str(tiny_run / "data_prep" / "dataset")),
        *("--onnx_model", str(onnx), "--onnx.extra_options", '{"prune_lm_head": "true"}', "--runtime.threads", "1"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    from core.generators import OnnxGenerator

    gen = OnnxGenerator(onnx, 4, threads=1)
    rows = [json.loads(line) for line in (tiny_run / "data_prep" / "dataset" / "eval.jsonl").open()]
    prompts = [r["prompt"] for r in rows[:12]]
    assert len({len(gen.tokenizer.encode(p)) for p in prompts}) > 1  # padded as one batch
    alone = [gen.generate([p])[0] for p in prompts]
    assert gen.generate(prompts) == alone
    # The pinned onnxruntime-genai's fault that the grouping works around: one padded batch
    # gives other tokens. Once this fails, the grouping in OnnxGenerator.generate can go.
    assert gen._generate(prompts) != alone


point_strategy = st.fixed_dictionaries(
    {
        "latency_ms_p50": st.sampled_from([90.0, 100.0, 110.0]),  # few values: rounded p50s tie
        "accuracy": st.sampled_from([0.8, 0.85, 0.9]),
        "tokens_per_second": st.floats(10, 20),
    }
)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.lists(point_strategy, min_size=1, max_size=8), st.sampled_from([0.8, 0.85, 0.9, 0.95]))
def test_the_chosen_point_is_on_the_front(points, floor):
    """Whatever the measured points (ties of the rounded p50 included), an in-budget choice is on the
    front the report plots: one order decides both."""
    from stages.onnx_build.search import Search

    search = object.__new__(Search)  # the choice and the front need only the points
    search.points = {
        i: dict(p, name=f"p{i}", recipe={"i": i}, feasible=p["accuracy"] >= floor) for i, p in enumerate(points)
    }
    search.reference, search.sc = {}, SimpleNamespace(max_accuracy_drop=0.01)
    search.made, search.spent, search.started, search.truth, search.failed = {}, 0.0, 0.0, [], {}
    result = search.result("test")
    if result["chosen_in_budget"]:
        assert result["chosen"] in result["front"]
        chosen = next(p for p in result["points"] if p["name"] == result["chosen"])
        assert chosen["feasible"] and all(
            p["latency_ms_p50"] >= chosen["latency_ms_p50"] for p in result["points"] if p["feasible"]
        )


def test_an_onnx_model_runs_on_the_stage_threads_unless_it_names_its_own(tiny_run, tmp_path, monkeypatch):
    """onnxruntime's own default ran one thread on a 2-core VM while PyTorch ran two: INT4 was scored
    and served on half the cores. The generator asks for the stage's count (what PyTorch gets), and a
    model whose genai_config.json names a count (the INT4 search writes its choice there) keeps it."""
    import onnxruntime_genai as og
    import torch

    from core.generators import OnnxGenerator

    asked: list[dict] = []
    overlay = og.Config.overlay
    monkeypatch.setattr(og.Config, "overlay", lambda self, text: (asked.append(json.loads(text)), overlay(self, text)))
    model = tiny_run / "onnx_build" / "onnx_model"
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    OnnxGenerator(model, 2)
    OnnxGenerator(model, 2, threads=1)
    named = shutil.copytree(model, tmp_path / "named")
    genai = json.loads((named / "genai_config.json").read_text())
    genai["model"]["decoder"].setdefault("session_options", {})["intra_op_num_threads"] = 2
    (named / "genai_config.json").write_text(json.dumps(genai))
    OnnxGenerator(named, 2)
    assert [a["model"]["decoder"]["session_options"]["intra_op_num_threads"] for a in asked] == [3, 1]
