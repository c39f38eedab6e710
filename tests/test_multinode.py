"""train.nodes: data parallel over several machines, on CPU (gloo) with the tiny Phi-3.

The local runner's two-node run (two torchrun agents meeting through c10d on 127.0.0.1) trains the
adapter of the one-node two-process run, bit for bit; after node 1 is lost mid-run (its agent and rank
SIGKILLed, as a preempted machine), the re-run resumes from rank 0's checkpoint to that adapter again.
"""

from __future__ import annotations

import json

import pytest
from helpers import stage_cli

TEMPLATE = "<|user|>\n{phrase}<|end|>\n<|assistant|>\n{tone}<|end|>"
TRAIN = (
    *("--model.base", "tiny-random:phi3", "--train.max_steps", "12", "--train.batch_size", "4"),
    *("--train.max_seq_len", "64", "--train.checkpoint_every", "4", "--train.log_every", "2"),
    *("--runtime.threads", "1", "--train.lora.r", "8", "--train.lora.modules_to_save", "[embed_tokens,lm_head]"),
)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("multinode") / "dataset"
    proc = stage_cli(
        "data_prep",
        *("--dataset", str(out), "--model.base", "tiny-random:phi3", "--data.max_rows", "120"),
        *("--data.prompt_format", "template", "--data.text_template", TEMPLATE),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def train(dataset, adapter, *flags, env=None):
    return stage_cli("train", "--dataset", str(dataset), "--adapter", str(adapter), *TRAIN, *flags, env=env)


def weights(adapter):
    return (adapter / "adapter_model.safetensors").read_bytes()


def test_two_nodes_train_the_two_process_adapter_and_resume_after_a_lost_node(dataset, tmp_path):
    one_node = tmp_path / "one-node"
    proc = train(dataset, one_node, "--train.gpus", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((one_node / "metrics.json").read_text())["ranks"] == 2

    two_nodes = tmp_path / "two-nodes"
    proc = train(dataset, two_nodes, "--train.nodes", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "--rdzv-backend=c10d" in proc.stderr and "node 1: torchrun agent pid" in proc.stderr
    assert weights(two_nodes) == weights(one_node)
    metrics = json.loads((two_nodes / "metrics.json").read_text())
    assert (metrics["ranks"], metrics["nodes"], metrics["resumed_from_step"]) == (2, 2, 0)

    # Node 1 (rank 1 and its torchrun agent) is SIGKILLed after step 6; rank 0 checkpointed at step 4.
    lost = tmp_path / "lost-node"
    proc = train(dataset, lost, "--train.nodes", "2", env={"SLM_FAULT": "train.step_6", "SLM_FAULT_RANK": "1"})
    assert proc.returncode == 1, proc.stderr[-3000:]  # transient: the engines retry it
    assert "a re-run resumes from the last checkpoint" in proc.stderr.splitlines()[-1]
    assert not lost.exists()  # nothing that could pass for an adapter
    assert json.loads((tmp_path / "lost-node.checkpoints" / "latest" / "meta.json").read_text())["step"] == 4
    proc = train(dataset, lost, "--train.nodes", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from the checkpoint at step 4" in proc.stderr
    assert weights(lost) == weights(one_node)
    assert json.loads((lost / "metrics.json").read_text())["resumed_from_step"] == 4


@pytest.mark.parametrize("env", [{"PET_NODE_RANK": "1"}, {"NODE_RANK": "1", "RANK": "3"}])
def test_only_node_0_writes_the_outputs(env, tmp_path):
    """Kubeflow Trainer's node 1, or AzureML's rank 3 on node 1: the stage runs, the output location
    (shared by every node) is left alone, node 0's temporary beside it included."""
    out = tmp_path / "dataset"
    theirs = tmp_path / ".dataset.tmp-1"  # node 0's unfinished output, on the shared volume
    theirs.mkdir()
    proc = stage_cli(
        "data_prep",
        *("--dataset", str(out), "--model.base", "tiny-random:phi3", "--data.max_rows", "40"),
        *("--data.prompt_format", "template", "--data.text_template", TEMPLATE),
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "node 0 writes the outputs" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [".dataset.tmp-1"]
