"""model.revision reaches every load of the base model: weights and tokenizer, so every stage.

The hub id is served offline from conftest's ``hub`` fixture: refs main and v2 of one id, with
different weights and tokenizers.
"""

from __future__ import annotations

from helpers import HUB_COMMITS, HUB_ID, run_cli, stage_cli

from core.io import read_jsonl

PROBE = """
import sys
from core.config import ModelConfig
from core.models import load_model, load_tokenizer
source = ModelConfig(base=sys.argv[1], revision=sys.argv[2] or None)
model = load_model(source)
print(float(model.get_input_embeddings().weight.sum()), bool(load_tokenizer(source).chat_template))
"""


def _probe(env: dict, revision: str) -> tuple[float, bool]:
    proc = run_cli("-c", PROBE, HUB_ID, revision, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    weight_sum, chat = proc.stdout.split()
    return float(weight_sum), chat == "True"


def test_revision_picks_the_weights_and_tokenizer(hub):
    head, main, v2, by_commit = (_probe(hub, r) for r in ("", "main", "v2", HUB_COMMITS["v2"]))
    assert head == main  # unset: the hub's default branch
    assert v2 == by_commit  # a branch and its commit are the same snapshot
    assert v2[0] != main[0] and v2[1] and not main[1]


def test_data_prep_reads_the_tokenizer_of_the_revision(hub, tmp_path):
    args = ("--data.prompt_format", "chat_template", "--model.base", HUB_ID, "--data.max_rows", "60")
    pinned = stage_cli("data_prep", "--dataset", str(tmp_path / "v2"), *args, "--model.revision", "v2", env=hub)
    assert pinned.returncode == 0, pinned.stderr[-2000:]
    assert "<|v2|>" in read_jsonl(tmp_path / "v2" / "train.jsonl")[0]["prompt"]
    head = stage_cli("data_prep", "--dataset", str(tmp_path / "head"), *args, env=hub)
    assert head.returncode != 0 and "has no chat template" in head.stderr


def test_revision_of_a_local_folder_is_an_error(tmp_path):
    from core.models import resolve

    tiny = resolve("tiny-random:phi3")
    proc = stage_cli(
        "data_prep",
        *("--dataset", str(tmp_path / "ds"), "--data.prompt_format", "chat_template"),
        *("--model.base", tiny, "--model.revision", "v2"),
    )
    assert proc.returncode != 0
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert "model.revision 'v2' pins a Hugging Face hub id" in line and "unset model.revision" in line
