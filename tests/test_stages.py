"""Each stage on the tiny Phi-3, checked on what it wrote."""

from __future__ import annotations

import json

from helpers import stage_cli

from core.io import read_jsonl
from core.prompts import parse_label


def test_data_prep_dedupes_and_splits_without_leakage(tmp_path):
    rows = [{"phrase": f"text {i}", "tone": ["joy", "fear", "sadness"][i % 3]} for i in range(60)]
    rows += rows[:10]  # exact duplicates
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "ds"
    proc = stage_cli(
        "data_prep",
        *("--dataset", str(out), "--data.path", str(data), "--data.eval_fraction", "0.2"),
        *("--data.prompt_format", "template"),  # the Phi-3 template, checked below
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    stats = json.loads((out / "stats.json").read_text())
    train, evals = read_jsonl(out / "train.jsonl"), read_jsonl(out / "eval.jsonl")
    assert stats["duplicates_removed"] == 10
    assert len(train) + len(evals) == 60
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in evals}
    assert stats["eval"]["labels"] == {"fear": 4, "joy": 4, "sadness": 4}  # stratified: 20% of 20 per label
    assert train[0]["prompt"].startswith("<|user|>\n") and train[0]["completion"].endswith("<|end|>")


def test_data_prep_split_is_seeded(tmp_path):
    outs = []
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        out = tmp_path / name
        assert (
            stage_cli("data_prep", "--dataset", str(out), "--data.seed", str(seed), "--data.max_rows", "200").returncode
            == 0
        )
        outs.append((out / "eval.jsonl").read_text())
    assert outs[0] == outs[1] and outs[0] != outs[2]


def test_data_prep_eval_path_overrides_split(tmp_path):
    rows = [{"phrase": f"text {i}", "tone": ["joy", "fear"][i % 2]} for i in range(40)]
    train, evals = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    train.write_text("\n".join(json.dumps(r) for r in rows))
    evals.write_text("\n".join(json.dumps(r) for r in rows[:6]))  # overlaps the training file
    out = tmp_path / "ds"
    proc = stage_cli("data_prep", "--dataset", str(out), "--data.path", str(train), "--data.eval_path", str(evals))
    assert proc.returncode == 0, proc.stderr[-2000:]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["eval"]["rows"] == 6 and stats["train"]["rows"] == 34
    assert stats["eval_overlap_removed_from_train"] == 6


def test_data_prep_reads_csv(tmp_path):
    data = tmp_path / "d.csv"
    data.write_text("phrase,tone\n" + "\n".join(f"row {i},{['joy', 'fear'][i % 2]}" for i in range(20)))
    out = tmp_path / "ds"
    assert stage_cli("data_prep", "--dataset", str(out), "--data.path", str(data)).returncode == 0
    assert json.loads((out / "stats.json").read_text())["labels"] == ["fear", "joy"]


def test_train_learns_and_writes_a_safetensors_adapter(tiny_run):
    adapter = tiny_run / "train" / "adapter"
    log = read_jsonl(adapter / "train_log.jsonl")
    assert log[-1]["loss"] < log[0]["loss"] * 0.8
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert set(cfg["target_modules"]) == {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}  # Phi-3's fused layers
    assert cfg["base_model_name_or_path"] == "tiny-random:phi3"
    assert (adapter / "adapter_model.safetensors").stat().st_size > 0
    assert not list(adapter.glob("*.bin"))


def test_merge_passes_parity_and_saves_a_portable_model(tiny_run):
    model = tiny_run / "merge" / "model"
    parity = json.loads((model / "parity.json").read_text())
    assert parity["relative_diff"] <= parity["tolerance"]
    config = json.loads((model / "config.json").read_text())
    assert config["torch_dtype"] == "float32" and "rope_theta" in config  # transformers 4.x spellings
    assert json.loads((model / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(model)
    assert not any("lora" in name for name, _ in merged.named_parameters())


def test_onnx_build_reads_the_lm_head_once(tiny_run):
    onnx = tiny_run / "onnx_build" / "onnx_model"
    assert (onnx / "build.log").read_text().count("Reading LM head") == 1
    info = json.loads((onnx / "build_info.json").read_text())
    assert info["precision"] == "int4" and info["model_type"] == "phi3"
    assert "algo_config=k_quant_mixed" in info["options"] and "block_size=16" in info["options"]
    genai = json.loads((onnx / "genai_config.json").read_text())
    assert genai["model"]["vocab_size"] == 1000


def test_evaluate_reports_both_models(tiny_run):
    m = json.loads((tiny_run / "evaluate" / "metrics" / "metrics.json").read_text())
    assert m["samples"] == 24
    for model in ("pytorch", "onnx_int4"):
        r = m[model]
        assert sum(map(sum, r["confusion_matrix"]["counts"])) == 24
        assert set(r["per_class"]) == set(m["labels"])
        assert r["tokens_per_second"] > 0 and r["latency_ms_p95"] >= r["latency_ms_p50"] > 0
        assert r["size_bytes"] > 0
    assert 0 <= m["agreement"] <= 1
    assert m["summary"]["onnx_accuracy_drop"] == round(m["pytorch"]["accuracy"] - m["onnx_int4"]["accuracy"], 4)


def test_label_parser():
    labels = ["joy", "fear", "sadness"]
    assert parse_label(" Joy<|end|>", labels) == "joy"
    assert parse_label("sadness.\nmore", labels) == "sadness"
    assert parse_label("fearful", labels) == "fear"
    assert parse_label("no idea", labels) is None


def test_qlora_nf4_trains_and_merges(tmp_path, tiny_run):
    """QLoRA: bitsandbytes nf4 with double quant (it runs on CPU too); merge reloads in fp32."""
    import shutil

    from helpers import TINY

    from core.config import load_config
    from engines.local import stage_argv
    from pipeline import DAG

    shutil.copytree(tiny_run / "data_prep", tmp_path / "data_prep")
    cfg = load_config(TINY, ["train.quantization=nf4"])
    for stage in ("train", "merge"):
        argv = stage_argv(DAG[stage], cfg, str(tmp_path))
        proc = stage_cli(stage, *argv[3:])
        assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((tmp_path / "train" / "adapter" / "metrics.json").read_text())
    assert metrics["quantization"] == "nf4" and metrics["final_loss"] < metrics["first_loss"]
    parity = json.loads((tmp_path / "merge" / "model" / "parity.json").read_text())
    assert parity["relative_diff"] <= parity["tolerance"]


def test_data_prep_reads_a_local_hf_dataset(tmp_path):
    import datasets

    rows = {"phrase": [f"row {i}" for i in range(30)], "tone": [["joy", "fear", "sadness"][i % 3] for i in range(30)]}
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows)}).save_to_disk(str(tmp_path / "hf"))
    out = tmp_path / "ds"
    proc = stage_cli("data_prep", "--dataset", str(out), "--data.path", str(tmp_path / "hf"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["rows_read"] == 30 and stats["labels"] == ["fear", "joy", "sadness"]
