"""The tiny random-init Phi-3 behind the ``tiny-random:phi3`` model source, and its parts for tests.

A 2-layer Phi-3 (hidden 128) and a 1k byte-level BPE trained on the bundled tone data, built
deterministically in seconds, so the Phi-3 code paths (fused qkv/gate_up projections, the ONNX
builder's phi3 path) run on CI. models.py resolves the source into the cache with :func:`build`;
tests and benches make their own small models and tokenizers with :func:`phi3_config` and :func:`tokenizer`.
"""

from __future__ import annotations

import json
from pathlib import Path

from core.hashing import ROOT, file_hash

TINY = "tiny-random:phi3"
SPECIALS = ["<|endoftext|>", "<|user|>", "<|assistant|>", "<|end|>"]  # Phi-3's


def fingerprint() -> str:
    """Content identity of the built model: this recipe and the data its tokenizer learns from."""
    return f"{TINY}@{file_hash(Path(__file__))[:16]}{file_hash(ROOT / 'data' / 'tone.jsonl')[:16]}"


def tokenizer(vocab_size: int = 1000):
    """A byte-level BPE trained on data/tone.jsonl, with Phi-3's special tokens (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [json.loads(line).get("phrase", "") for line in (ROOT / "data" / "tone.jsonl").open()]
    corpus += ["joy surprise fear sadness anger neutral love positive negative"] * 10
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(sorted(corpus), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|endoftext|>",
        eos_token="<|end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )


def phi3_config(vocab_size: int, **overrides):
    """The tiny Phi-3's shape: 2 layers, hidden 128, 4 heads; ``overrides`` change any field."""
    from transformers import Phi3Config

    fields = {
        "vocab_size": vocab_size,
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "max_position_embeddings": 512,
        # equal, as in Phi-3-mini-4k: the ONNX builder's phi3 (not LongRoPE) path
        "original_max_position_embeddings": 512,
        "tie_word_embeddings": False,
    }
    return Phi3Config(**{**fields, **overrides})


def build(out: Path) -> None:
    """Save the tiny Phi-3 and its tokenizer into ``out`` (what ``tiny-random:phi3`` resolves to)."""
    import torch
    from transformers import Phi3ForCausalLM

    from core.tokenizer_io import save_tokenizer

    tok = tokenizer()
    vocab = len(tok)
    # The builder takes any Linear as wide as the vocab for the LM head: keep the vocab
    # clear of hidden, 3*hidden and 2*intermediate (docs/field-notes.md).
    assert vocab not in (128, 384, 512)
    cfg = phi3_config(
        vocab, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    torch.manual_seed(0)
    Phi3ForCausalLM(cfg).save_pretrained(out, safe_serialization=True)
    save_tokenizer(tok, out)
