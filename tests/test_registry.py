"""The stage registry's lookups: a clear error for an unknown stage, and which external files count."""

from __future__ import annotations

import pytest

from core.spec import External
from pipeline import DAG
from stages.registry import STAGES


def test_an_unknown_stage_names_the_known_ones():
    assert DAG["train"].name == "train"
    with pytest.raises(KeyError, match="no stage 'trian' in pipeline .*; its stages: data_prep, train, merge"):
        DAG["trian"]


def test_external_keys_follow_their_condition():
    spec = STAGES["data_prep"]
    assert External("model.base", "data.prompt_format", "chat_template") in spec.external
    template = {"data.prompt_format": "template"}
    assert spec.external_keys(template) == ["data.path", "data.eval_path"]
    assert spec.external_keys({"data.prompt_format": "chat_template"})[-1] == "model.base"
    assert STAGES["train"].external_keys({}) == ["model.base"]


def test_a_wire_is_parsed_once_into_a_typed_reference():
    from core.spec import PortRef
    from stages.registry import step

    merge = step("merge", adapter="train.adapter")
    assert merge.wires["adapter"] == PortRef("train", "adapter") and str(merge.wires["adapter"]) == "train.adapter"
    for bad in ("train", "train.", ".adapter", "a.b.c"):
        with pytest.raises(ValueError, match="expected 'stage.output'"):
            step("merge", adapter=bad)
