"""Multi-LoRA (issue 21): one adapter-ready INT4 base, two tasks' adapters, per-request switching.

On the tiny Phi-3 (its fused qkv_proj / gate_up_proj are what the export must split): two tasks,
the bundled tone set and a sentiment set made here with its own labels, each through the real
data_prep, train, merge and onnx_build stage processes; then the shared base, the adapter
exports and the switched-vs-merged scoring. One session fixture runs the two-task DAG (``pipeline.py run``).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import ROOT
from multi_tasks import multi_config

from core.artifacts import read_marker
from core.config import encode, load_config, parse_value
from core.errors import QualityGateError, UserError
from core.io import read_jsonl
from core.models import resolve
from core.spec import step_name
from core.tasks import task_config, union_target_modules
from pipeline import TASKS_DAG
from stages.adapter_build import adapter_base, adapter_export
from stages.evaluate_tasks import switching
from stages.onnx_build import stage as onnx_stage
from stages.registry import STAGES


def test_the_run_fans_out_over_the_tasks_and_promotes_base_and_adapters(multi):
    run, cfg = multi["run"], multi["cfg"]
    summary = json.loads((run / "summary.json").read_text())
    expected = [step.name for step in TASKS_DAG.expand(t.name for t in cfg.tasks)]
    assert list(summary["stages"]) == expected and len(expected) == 10
    assert all(s["status"] == "ok" for s in summary["stages"].values()), summary["stages"]
    # side by side, each step's log lines name the step (core/runner.py STEP_ENV)
    assert "[train_tone] step" in multi["stderr"] and "[train_sentiment] step" in multi["stderr"]
    # each task's steps ran with that task's own config
    for task, r in zip(cfg.tasks, (8, 16)):
        assert read_marker(run / step_name("train", task.name) / "adapter")["params"]["train.lora.r"] == r
        dataset = read_marker(run / step_name("data_prep", task.name) / "dataset")["params"]
        assert dataset["data.path"] == task.data.path and dataset["data.label_col"] == task.data.label_col
    metrics = json.loads((run / "evaluate_tasks" / "metrics" / "metrics.json").read_text())
    assert set(metrics["tasks"]) == {"tone", "sentiment"} and metrics["verdict"]["passed"]
    for name, t in metrics["tasks"].items():
        assert t["samples"] >= 20, name
        assert t["switched"]["accuracy"] >= t["merged"]["accuracy"] - 0.01, (name, t)
    assert metrics["tasks"]["sentiment"]["switched"]["accuracy"] > 0.5  # learnt, not a coin
    assert metrics["memory"]["adapters"] == 2
    page = (run / "evaluate_tasks" / "metrics" / "report.html").read_text()
    assert 'id="task-tone"' in page and 'id="task-sentiment"' in page and 'id="memory"' in page
    promoted = json.loads((run / "promoted.json").read_text())
    assert promoted["model"]["path"] == str(run / "adapter_build" / "onnx_base")
    assert set(promoted["adapters"]) == {"tone", "sentiment"}
    lineage = json.loads((run / "evaluate_tasks" / "metrics" / "_artifact.json").read_text())["lineage_params"]
    assert {"train[tone]", "train[sentiment]", "adapter_build", "evaluate_tasks"} <= set(lineage)
    assert lineage["train[tone]"]["train.lora.r"] == 8 and lineage["train[sentiment]"]["train.lora.r"] == 16
    for name, a in promoted["adapters"].items():
        dataset = read_marker(run / step_name("data_prep", name) / "dataset")["content_hash"]
        assert a["lineage"]["dataset_hash"] == dataset and a["lineage"]["base_model"] == cfg.model.base
        assert (
            Path(a["path"]).is_file()
            and a["metrics"]["switched_accuracy"] == metrics["tasks"][name]["switched"]["accuracy"]
        )


def _graph(path: Path):
    import onnx

    return onnx.load(str(path / "model.onnx"), load_external_data=False).graph


def test_base_is_adapter_ready(multi):
    graph = _graph(multi["base"].path)
    inputs = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}
    lora = {k: v for k, v in inputs.items() if ".lora_" in k}
    # the union of both tasks' targets, Phi-3's fused projections split: 7 modules x A/B x 2 layers
    assert len(lora) == 28 and lora == multi["base"].inputs
    assert lora["model.layers.1.mlp.gate_proj.lora_A.MatMul.weight"] == [128, "model.layers.1.mlp.gate_proj.rank"]
    assert lora["model.layers.1.mlp.down_proj.lora_B.MatMul.weight"] == ["model.layers.1.mlp.down_proj.rank", 128]
    assert len({v[1] for k, v in lora.items() if ".lora_A." in k}) == 14  # a rank dim per module
    # each default is empty: no active adapter is the plain base
    defaults = {i.name: list(i.dims) for i in graph.initializer if ".lora_" in i.name}
    assert all(0 in dims for dims in defaults.values()) and set(defaults) == set(lora)
    ops = {n.name: n.op_type for n in graph.node}
    assert all(ops[n] == "MatMul" for n in adapter_base.lora_node_names(multi["base"].target_modules, 2))
    assert sum(op == "MatMulNBits" for op in ops.values()) >= 14  # the base projections are INT4


def test_build_fails_when_a_lora_matmul_is_quantized(multi, tmp_path):
    """Without the exclusions the builder's INT4 pass quantizes the LoRA MatMuls: named, one line."""
    cfg = multi["cfg"]
    placeholder = tmp_path / "placeholder"
    placeholder.mkdir()
    model = Path(resolve(cfg.model.base))
    adapter_base.write_placeholder_adapter(
        model, ["o_proj"], placeholder, rank=32
    )  # two INT4 blocks of 16: the quantizer takes it
    naive = cfg.onnx.model_copy(update={"extra_options": {"adapter_path": str(placeholder)}})
    onnx_stage.run(cfg.model_copy(update={"onnx": naive}), None, model, tmp_path / "naive")
    with pytest.raises(UserError, match=r"quantized the LoRA MatMul /model/layers\.0/attn/o_proj/lora_A/MatMul") as e:
        adapter_base.optional_lora_inputs(tmp_path / "naive" / "model.onnx")
    assert "\n" not in str(e.value)


def test_export_layout_matches_the_peft_adapter(multi):
    import onnxruntime as ort
    from safetensors.numpy import load_file

    d = multi["tasks"]["sentiment"]
    peft = load_file(d / "adapter" / "adapter_model.safetensors")
    fmt = ort.AdapterFormat.read_adapter(str(multi["root"] / "serve" / "adapters" / "sentiment.onnx_adapter"))
    got = {k: v.numpy() for k, v in fmt.get_parameters().items()}
    assert set(got) <= set(multi["base"].inputs)
    assert not any(".o_proj." in k for k in got)  # this task did not adapt o_proj
    key = "base_model.model.model.layers.1.self_attn.qkv_proj.lora_{}.weight"
    a, b = peft[key.format("A")], peft[key.format("B")]
    for p in ("q_proj", "k_proj", "v_proj"):
        np.testing.assert_array_equal(got[f"model.layers.1.attn.{p}.lora_A.MatMul.weight"], a.T)
    fused = np.concatenate(
        [got[f"model.layers.1.attn.{p}.lora_B.MatMul.weight"] for p in ("q_proj", "k_proj", "v_proj")], 1
    )
    np.testing.assert_allclose(fused, b.T * (32 / 16), rtol=1e-6)  # alpha / r
    gate_up = peft["base_model.model.model.layers.0.mlp.gate_up_proj.lora_B.weight"]
    gate = got["model.layers.0.mlp.gate_proj.lora_B.MatMul.weight"]
    np.testing.assert_allclose(gate, gate_up[:256].T * 2.0, rtol=1e-6)  # Phi-3 chunks gate first, then up


def test_export_names_the_parameter_that_does_not_fit(multi, tmp_path):
    from safetensors.numpy import load_file, save_file

    bad = tmp_path / "bad"
    shutil.copytree(multi["tasks"]["tone"] / "adapter", bad)
    weights = load_file(bad / "adapter_model.safetensors")
    key = "base_model.model.model.layers.0.self_attn.o_proj.lora_A.weight"
    weights[key] = weights[key][:, :100]  # in_features 100, the graph's is 128
    save_file(weights, bad / "adapter_model.safetensors")
    out = tmp_path / "bad.onnx_adapter"
    with pytest.raises(UserError, match=r"model\.layers\.0\.attn\.o_proj\.lora_A\.MatMul\.weight has shape \[100, 8\]"):
        adapter_export.export(bad, multi["base"], out)
    assert not out.exists() and not list(tmp_path.glob("*.partial"))
    # a lora_B without its lora_A
    weights = load_file(multi["tasks"]["tone"] / "adapter" / "adapter_model.safetensors")
    del weights[key]
    save_file(weights, bad / "adapter_model.safetensors")
    with pytest.raises(UserError, match=r"o_proj\.lora_B\.MatMul\.weight has no lora_A/lora_B partner"):
        adapter_export.export(bad, multi["base"], out)
    # a module the base was not built for
    narrow = adapter_base.AdapterBase(
        multi["base"].path,
        {k: v for k, v in multi["base"].inputs.items() if ".o_proj." not in k},
        ["down_proj", "gate_up_proj", "qkv_proj"],
        multi["base"].dtype,
    )
    with pytest.raises(UserError, match=r"model\.layers\.0\.attn\.o_proj\.lora_A\.MatMul\.weight is not an input"):
        adapter_export.export(multi["tasks"]["tone"] / "adapter", narrow, out)


def _tasks(multi, **gate) -> list[switching.TaskEval]:
    serve = multi["root"] / "serve"
    return [
        switching.TaskEval(name, d / "dataset", serve / "adapters" / f"{name}.onnx_adapter", d / "merged_int4", **gate)
        for name, d in multi["tasks"].items()
    ]


def test_the_gate_fails_a_task_under_its_floor(multi, tmp_path):
    with pytest.raises(QualityGateError, match=r"tone: switched accuracy [0-9.]+ < min_accuracy 1.0"):
        switching.evaluate_tasks(
            multi["base"].path, _tasks(multi, min_accuracy=1.0)[:1], multi["cfg"].evaluate, tmp_path, memory=False
        )
    assert (tmp_path / "metrics.rejected.json").is_file() and not (tmp_path / "metrics.json").exists()


def test_memory_of_one_base_and_adapters_against_merged_models(multi):
    serve = multi["root"] / "serve"
    adapters = {n: serve / "adapters" / f"{n}.onnx_adapter" for n in multi["tasks"]}
    merged = [d / "merged_int4" for d in multi["tasks"].values()]
    mem = switching.measure_rss(multi["base"].path, adapters, merged)
    one, many = mem["base_plus_adapters"], mem["merged_side_by_side"]
    assert one["after"]["VmRSS"] > one["before_load"]["VmRSS"] > 0
    assert many["after"]["VmRSS"] > many["before_load"]["VmRSS"] > 0
    # A tiny model's weights are ~1 MB, so its ratio is ~1 and says nothing; the saving is measured on
    # SmolLM2 by bench/multi_adapter.py --memory-only (docs/multi-adapter.md). Here: the numbers are real.
    assert mem["ratio_rss"] == round(one["after"]["VmRSS"] / many["after"]["VmRSS"], 4)
    assert many["after"]["VmHWM"] >= many["after"]["VmRSS"]


def _doc_code() -> str:
    text = (ROOT / "docs" / "multi-adapter.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) == 1, "docs/multi-adapter.md must hold exactly one python block"
    return blocks[0]


def test_the_documented_serving_lines_answer_per_task(multi, monkeypatch):
    code = _doc_code()
    assert len([line for line in code.splitlines() if line.strip()]) <= 16
    monkeypatch.chdir(multi["root"] / "serve")
    ns: dict = {}
    exec(compile(code, "docs/multi-adapter.md", "exec"), ns)  # noqa: S102 - the doc's own lines
    gen = switching.SwitchingGenerator(
        multi["base"].path, {n: Path(f"adapters/{n}.onnx_adapter") for n in multi["tasks"]}, 8
    )
    for name, d in multi["tasks"].items():
        prompt = read_jsonl(d / "dataset" / "eval.jsonl")[0]["prompt"]
        gen.active = name
        assert ns["answer"](name, prompt) == gen.generate([prompt])[0], name


def _tasks_yaml(tmp_path, tasks: str) -> Path:
    (tmp_path / "c.yaml").write_text("model: {base: tiny-random:phi3}\ntasks:\n" + tasks)
    return tmp_path / "c.yaml"


def test_a_task_becomes_the_single_task_config_its_stages_run(tmp_path):
    cfg = load_config(
        _tasks_yaml(
            tmp_path,
            "  - {name: tone, data: {path: data/tone.jsonl}, lora: {r: 4, target_modules: [o_proj]},"
            " gate: {min_accuracy: 0.7}}\n"
            "  - {name: intent, data: {path: x.jsonl, text_cols: [t, i], label_col: i, text_template: '{t} -> {i}'}}\n",
        )
    )
    tone, intent = task_config(cfg, "tone"), task_config(cfg, "intent")
    assert tone.tasks is None and tone.train.lora.r == 4 and tone.evaluate.min_accuracy == 0.7
    assert intent.data.label_col == "i" and intent.model == cfg.model and intent.onnx == cfg.onnx
    assert intent.train.lora.target_modules is None and tone.name == "slm-finetune-default-tone"
    assert union_target_modules(cfg, ["qkv_proj", "o_proj"]) == ["o_proj", "qkv_proj"]
    with pytest.raises(UserError, match="no task 'nope'"):
        task_config(cfg, "nope")


@pytest.mark.parametrize(
    "tasks, message",
    [
        ("  - {name: a, data: {}, lora: {modules_to_save: [lm_head]}}\n", "cannot be served from a shared base"),
        ("  - {name: a, data: {}}\n  - {name: a, data: {}}\n", r"task names \['a'\] are listed twice"),
        ("  - {name: A_b, data: {}}\n", "tasks.0.name"),
        ("  - {name: a}\n", "tasks.0.data"),
    ],
)
def test_bad_tasks_are_one_line_errors(tmp_path, tasks, message):
    with pytest.raises(UserError, match=message) as e:
        load_config(_tasks_yaml(tmp_path, tasks))
    assert str(e.value).count("\n") <= 2, str(e.value)


def test_a_config_without_tasks_is_the_single_task_job():
    from core.config import Config, to_yaml

    assert load_config(ROOT / "configs" / "tiny-phi3.yaml").tasks is None
    assert Config().tasks is None and "tasks: null" in to_yaml(Config())


def test_no_active_adapter_is_the_plain_base_and_switching_changes_answers(multi):
    serve, d = multi["root"] / "serve", multi["tasks"]["sentiment"]
    gen = switching.SwitchingGenerator(
        multi["base"].path, {n: serve / "adapters" / f"{n}.onnx_adapter" for n in multi["tasks"]}, 4
    )
    rows, labels = switching._task_rows(switching.TaskEval("sentiment", d / "dataset", None, None), 24)
    gen.active = None  # the empty defaults: the random base never learnt these labels
    plain = switching.score(gen, rows, labels, 8)[0]["accuracy"]
    gen.active = "sentiment"
    switched = switching.score(gen, rows, labels, 8)[0]["accuracy"]
    gen.active = "tone"  # the other task's adapter answers with its own labels
    other = switching.score(gen, rows, labels, 8)[0]
    assert plain < 0.5 < switched and other["unparsed"] > len(rows) // 2, (plain, switched, other["unparsed"])


@pytest.mark.parametrize("engine", ["kfp", "argo", "azureml"])
def test_the_two_task_config_compiles_to_one_node_a_step_and_passes_the_engines_checks(tmp_path, engine):
    from helpers import run_cli

    from engines.validate import validate_file

    (tmp_path / "multi.yaml").write_text(yaml.safe_dump(multi_config(tmp_path)))
    out = tmp_path / ("pipeline.yaml" if engine == "kfp" else engine)
    proc = run_cli(
        str(ROOT / "pipeline.py"),
        "compile",
        "--target",
        engine,
        "--config",
        str(tmp_path / "multi.yaml"),
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    validate_file(out, engine)  # the engine's own loader / CRD schema (engines/validate.py)
    cfg = load_config(tmp_path / "multi.yaml")
    names = [step.name for step in TASKS_DAG.expand(t.name for t in cfg.tasks)]
    if engine == "kfp":
        ir = next(yaml.safe_load_all(out.read_text()))
        assert sorted(ir["root"]["dag"]["tasks"]) == sorted(n.replace("_", "-") for n in names)
        ranks = {
            t: ir["components"][f"comp-train-{t}"]["inputDefinitions"]["parameters"]["train_lora_r"]["defaultValue"]
            for t in ("tone", "sentiment")
        }
        assert ranks == {"tone": 8, "sentiment": 16}  # each task's own LoRA, compiled in
        assert "train_lora_r" not in ir["root"]["inputDefinitions"]["parameters"]  # not one knob for all tasks
        # a list holding numbers goes as its JSON text: KFP's struct values would make 300 a float
        tasks = ir["components"]["comp-evaluate-tasks"]["inputDefinitions"]["parameters"]["tasks"]
        assert tasks["parameterType"] == "STRING"
        assert parse_value(tasks["defaultValue"]) == STAGES["evaluate_tasks"].params(cfg)["tasks"]
        assert parse_value(tasks["defaultValue"])[0]["data"]["max_rows"] == 300
        gathered = ir["root"]["dag"]["tasks"]["adapter-build"]["inputs"]["artifacts"]
        assert {k: v["taskOutputArtifact"]["producerTask"] for k, v in gathered.items()} == {
            "adapter_tone": "train-tone",
            "adapter_sentiment": "train-sentiment",
        }
    elif engine == "argo":
        wf = yaml.safe_load(out.read_text())
        (dag,) = [t for t in wf["spec"]["templates"] if "dag" in t]
        tasks = {t["name"]: t for t in dag["dag"]["tasks"]}
        assert sorted(tasks) == sorted(n.replace("_", "-") for n in names)
        assert sorted(tasks["evaluate-tasks"]["dependencies"]) == [
            "adapter-build",
            "data-prep-sentiment",
            "data-prep-tone",
            "onnx-build-sentiment",
            "onnx-build-tone",
        ]
    else:
        job = yaml.safe_load((out / "pipeline.yml").read_text())
        assert list(job["jobs"]) == names
        assert (
            job["jobs"]["adapter_build"]["inputs"]["adapter_sentiment"]["path"]
            == "${{parent.jobs.train_sentiment.outputs.adapter}}"
        )


@pytest.mark.parametrize("config", ["default", "tasks"])
def test_every_kfp_parameter_default_reaches_the_stage_as_the_config_value(tmp_path, config):
    """The class behind max_rows 300 -> 300.0: what KFP carries (a component input's default, rendered
    by its launcher: JSON for a non-string) parses back, in the stage, to exactly the config's value."""
    import json as _json

    from engines import kfp
    from engines.compile_common import param_name, task_params
    from pipeline import dag_for

    cfg = load_config(ROOT / "configs" / f"{config}.yaml")
    ir = next(yaml.safe_load_all(kfp.compile_pipeline(dag_for(cfg), cfg, tmp_path / "p.yaml").read_text()))
    for step in dag_for(cfg):
        declared = ir["components"][f"comp-{step.name.replace('_', '-')}"]["inputDefinitions"]["parameters"]
        for key, value in task_params(step.spec, step.config(cfg)).items():
            spec = declared[param_name(key)]
            carried = spec["defaultValue"]
            if spec["parameterType"] == "NUMBER_INTEGER":  # typed: the launcher renders it as an integer
                carried = int(carried)
            argv = carried if isinstance(carried, str) else _json.dumps(carried)  # the launcher's rendering
            assert encode(parse_value(argv)) == encode(value), (step.name, key, carried)
