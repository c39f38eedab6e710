"""The train stage's padding-free steps (stages/train/fast.py) on CPU: the same loss and gradients as
the padded micro-batches, for one rank and split over ranks; and the CPU plan stays the plain path.
The CUDA levers themselves are measured by bench/train_throughput.py on a GPU (docs/benchmarks.md)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from core import tiny_models
from core.config import Config, TrainConfig
from stages.train import fast, stage


@pytest.fixture(scope="module")
def lora_model():
    from peft import LoraConfig, get_peft_model
    from transformers import Phi3ForCausalLM

    torch.manual_seed(0)
    cfg = tiny_models.phi3_config(
        300,
        hidden_size=64,
        intermediate_size=128,
        max_position_embeddings=256,
        original_max_position_embeddings=256,
        pad_token_id=0,
    )
    model = get_peft_model(
        Phi3ForCausalLM(cfg).float(),
        LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["qkv_proj", "o_proj"]),
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return model.eval()


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_models.tokenizer()  # only its padding is used: any pad id gives the same loss


def examples(n: int, seed: int = 1) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        prompt, completion = int(torch.randint(3, 20, (1,), generator=g)), int(torch.randint(1, 5, (1,), generator=g))
        ids = torch.randint(1, 300, (prompt + completion,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return out


def grads(model) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters() if p.requires_grad]


def test_padding_free_equals_padded_micro_batches(lora_model, tokenizer):
    tc = SimpleNamespace(batch_size=3, grad_accum=2, max_seq_len=64)
    ex = examples(6)
    micros = [ex[:3], ex[3:]]
    lora_model.zero_grad()
    ref = 0.0
    for m in micros:
        loss = stage.completion_loss(lora_model, stage.collate(m, tokenizer, "cpu")) / len(micros)
        loss.backward()
        ref += loss.item()
    ref_grads = grads(lora_model)
    plan = fast.FastPath(device="cpu", padding_free=True)
    for world in (1, 2, 3):
        lora_model.zero_grad()
        total = 0.0
        for rank in range(world):
            passes = fast.pack_step(micros, tc, 0, rank, world)
            assert all(p["input_ids"].shape[1] <= tc.max_seq_len for p in passes)
            loss, _ = stage.train_step(lora_model, passes, plan)
            total += loss
        assert total / world == pytest.approx(ref, abs=1e-5)
        for a, b in zip(grads(lora_model), ref_grads):
            torch.testing.assert_close(a / world, b, atol=1e-6, rtol=1e-4)


def test_pack_step_keeps_examples_apart():
    tc = SimpleNamespace(batch_size=2, grad_accum=1, max_seq_len=20)
    ex = examples(5, seed=3)
    passes = fast.pack_step([ex], tc, 0)
    rows = sum(p["input_ids"].shape[0] for p in passes)
    assert sum(p["tokens"] for p in passes) == sum(len(e["input_ids"]) for e in ex)
    assert rows >= 2 and all(p["input_ids"].shape[0] <= tc.batch_size for p in passes)
    for p in passes:  # positions restart at every example, so transformers masks across them
        assert (p["position_ids"][:, 0] == 0).all()
    with pytest.raises(Exception, match="train.gpus"):
        fast.pack_step([ex[:1]], tc, 0, rank=1, world=2)


def test_cpu_plan_is_the_plain_path():
    plan = fast.resolve(Config().train, "cpu")
    assert not (
        plan.padding_free
        or plan.liger
        or plan.autocast
        or plan.keep_bf16
        or plan.gradient_checkpointing
        or plan.compile
    )
    assert fast.resolve(TrainConfig(padding_free="on"), "cpu").padding_free


def test_old_boolean_settings_still_load():
    assert TrainConfig(gradient_checkpointing=False).gradient_checkpointing == "off"
    assert TrainConfig(gradient_checkpointing=True).gradient_checkpointing == "on"
    assert TrainConfig(padding_free=False).padding_free == "off"
