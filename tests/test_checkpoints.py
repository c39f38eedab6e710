"""stages/train/checkpoints.py: a restore loads exactly the saved trainable parameters, or refuses
with the names that do not fit (never a partial copy)."""

from __future__ import annotations

import pytest
import torch

from core.errors import UserError
from stages.train.checkpoints import Checkpoints


def model(frozen: tuple[str, ...] = (), **layers: tuple[int, int]) -> torch.nn.Module:
    m = torch.nn.ModuleDict({name: torch.nn.Linear(*shape) for name, shape in layers.items()})
    for name in frozen:
        m[name].requires_grad_(False)
    return m


def state(m: torch.nn.Module):
    optimizer = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=0.1)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)


@pytest.fixture
def saved(tmp_path) -> Checkpoints:
    torch.manual_seed(0)
    m = model(x=(3, 2))
    ckpt = Checkpoints(tmp_path / "ckpt", "key")
    ckpt.save(4, m, *state(m), [{"step": 4, "loss": 1.0}])
    return ckpt


def test_restore_round_trip_ignores_frozen_parameters(saved):
    torch.manual_seed(0)
    reference = model(x=(3, 2))
    torch.manual_seed(1)
    m = model(frozen=("y",), x=(3, 2), y=(2, 2))
    assert saved.restore(m, *state(m)) == (4, [{"step": 4, "loss": 1.0}])
    for a, b in zip(reference.parameters(), m["x"].parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "layers, expected",
    [
        ({"x": (3, 2), "y": (2, 2)}, "missing y.bias, y.weight"),
        ({"z": (3, 2)}, "missing z.bias, z.weight; unexpected x.bias, x.weight"),
        ({"x": (4, 2)}, "with another shape x.weight"),
    ],
    ids=["missing", "unexpected", "shape"],
)
def test_restore_refuses_keys_that_do_not_fit(saved, layers, expected):
    m = model(**layers)
    before = [p.clone() for p in m.parameters()]
    with pytest.raises(UserError, match="does not fit the model's trainable parameters") as err:
        saved.restore(m, *state(m))
    assert expected in str(err.value) and str(saved.root) in str(err.value)
    assert all(torch.equal(a, b) for a, b in zip(before, m.parameters()))  # nothing copied


def test_a_checkpoint_with_another_key_is_dropped(saved):
    m = model(z=(3, 2))
    assert Checkpoints(saved.root, "other").restore(m, *state(m)) == (0, [])
    assert not saved.root.exists()
