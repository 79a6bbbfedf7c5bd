"""The training loop: exact FLOP metering and reproducible rounds (client/training.py)."""

from __future__ import annotations

import math

import pytest
import torch

from client.training import FlopMeter, TrainConfig, batch_bounds, train_local
from models.linear import LinearClassifier
from models.mlp import MLPClassifier

N, D, C = 512, 255, 3


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=generator)
    y = torch.randint(0, C, (N,), generator=generator)
    return x, y


def _linear() -> torch.nn.Module:
    torch.manual_seed(0)
    return LinearClassifier(D, C)


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return MLPClassifier(D, C, hidden=[64])


# Per epoch over N records: forward 2*N*in*out per layer, weight gradients the same,
# and an input gradient for every layer but the first (the input needs no gradient).
LINEAR_FLOPS = 4 * N * D * C
MLP_FLOPS = 2 * N * (2 * D * 64 + 3 * 64 * C)


@pytest.mark.parametrize("make, expected", [(_linear, LINEAR_FLOPS), (_mlp, MLP_FLOPS)])
@pytest.mark.parametrize("batch_size", [32, 48])  # 48: ten batches of 51 or 52 records
def test_flops_are_exact(data, make, expected, batch_size):
    meter = FlopMeter()
    result = train_local(make(), *data, TrainConfig(lr=0.05, local_epochs=1, batch_size=batch_size),
                         meter)
    assert result.flops == expected
    assert meter.total == expected
    assert result.num_examples == N


@pytest.mark.parametrize("batch_size", [16, 73, 255, 256, 257, 511, 512])
def test_every_record_is_in_every_epoch_and_no_batch_is_short(data, batch_size):
    """A short or left-out batch would let a strategy isolate records by its batch size (512 then
    511 of 512 records trained one record less); every epoch holds every record in batches of
    at least ``batch_size``, and 511 gives the very batches 512 does."""
    seen = []

    class Recording(FlopMeter):
        def run(self, shape_key, step):
            seen.append(shape_key[1])
            super().run(shape_key, step)

    train_local(_linear(), *data, TrainConfig(lr=0.05, local_epochs=2, batch_size=batch_size), Recording())
    assert sum(seen) == 2 * N and min(seen) >= batch_size and max(seen) - min(seen) <= 1
    assert batch_bounds(N, 511) == batch_bounds(N, 512) == [(0, N)]


def test_flops_stay_exact_when_the_meter_reuses_its_counts(data):
    meter = FlopMeter()
    config = TrainConfig(lr=0.05, local_epochs=2, batch_size=32)
    first = train_local(_mlp(), *data, config, meter)
    second = train_local(_mlp(), *data, TrainConfig(lr=0.05, local_epochs=1, batch_size=32,
                                                     seed=2), meter)
    linear = train_local(_linear(), *data, TrainConfig(lr=0.05, local_epochs=1, batch_size=32), meter)
    assert first.flops == 2 * MLP_FLOPS
    assert second.flops == MLP_FLOPS
    assert linear.flops == LINEAR_FLOPS
    assert meter.total == 3 * MLP_FLOPS + LINEAR_FLOPS


def test_proximal_term_counts_the_same_matrix_flops(data):
    config = TrainConfig(lr=0.05, local_epochs=1, batch_size=32, proximal_mu=0.5)
    assert train_local(_linear(), *data, config, FlopMeter()).flops == LINEAR_FLOPS


def _trained(data, make=_linear, **config) -> dict[str, torch.Tensor]:
    model = make()
    settings = {"lr": 0.1, "local_epochs": 1, "batch_size": 32, **config}
    result = train_local(model, *data, TrainConfig(**settings), FlopMeter())
    assert math.isfinite(result.loss) and result.loss > 0
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("make", [_linear, _mlp])
def test_same_seed_gives_identical_weights(data, make):
    first = _trained(data, make, seed=3, server_round=2)
    again = _trained(data, make, seed=3, server_round=5)  # the round number plays no part
    assert _same(first, again)
    assert not _same(first, {k: v for k, v in make().state_dict().items()})  # it trained


def test_another_seed_shuffles_differently(data):
    base = _trained(data, seed=3, server_round=2)
    assert not _same(base, _trained(data, seed=4, server_round=2))


def test_full_batch_training_does_not_depend_on_the_shuffle(data):
    # With one batch holding every record the order cannot matter: the differences
    # above come from the batches' order, not from anything else that varies by round.
    first = _trained(data, batch_size=N, seed=3)
    other = _trained(data, batch_size=N, seed=4)
    for key in first:
        torch.testing.assert_close(first[key], other[key], rtol=1e-5, atol=1e-6)


def test_dropout_draws_from_the_round_seed_not_the_global_generator(data):
    x, y = data
    weights = []
    for global_seed in (1, 2):
        torch.manual_seed(0)
        model = MLPClassifier(255, 3, hidden=[64], dropout=0.5)
        torch.manual_seed(global_seed)  # whatever ran before must not matter
        train_local(model, x, y, TrainConfig(lr=0.1, local_epochs=1, batch_size=32), FlopMeter())
        weights.append({k: v.clone() for k, v in model.state_dict().items()})
    assert _same(*weights)
