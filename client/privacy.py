"""Differential privacy on the node: DP-SGD with Opacus, and its accounting.

The server is the untrusted party, so clipping and noise happen here, before
any weights leave. Poisson sampling of batches (``sample_rate = batch / n``)
makes Opacus's RDP accountant valid; the privacy spent is accounted per
contributor across all their rounds and submissions on this cohort.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from client.errors import PolicyViolation
from client.training import FlopMeter, TrainConfig, TrainResult, architecture_key


@dataclass(frozen=True)
class PrivacyPolicy:
    """DP-SGD settings of a workspace (all contributors alike)."""

    noise_multiplier: float
    max_grad_norm: float
    delta: float
    epsilon_budget: float


#: One accounting entry: (noise multiplier, sample rate, steps).
Entry = tuple[float, float, int]


def epsilon(history: list[Entry], delta: float) -> float:
    """Privacy spent by a sequence of DP-SGD steps, at ``delta`` (Opacus's RDP accountant)."""
    if not history:
        return 0.0
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = list(history)
    return float(accountant.get_epsilon(delta))


def round_entry(n: int, config: TrainConfig, privacy: PrivacyPolicy) -> Entry:
    """The accounting entry of one round: about ``n / batch`` Poisson batches per epoch."""
    sample_rate = config.batch_size / n
    return (privacy.noise_multiplier, sample_rate, config.local_epochs * round(1 / sample_rate))


def check_dp_model(model: nn.Module) -> None:
    """Refuse, before a round is charged, a model Opacus cannot clip per example.

    Raises
    ------
    PolicyViolation
        ``dp-model``, e.g. for the pathway network, whose gene-set layer holds its mask.
    """
    from opacus.grad_sample import GradSampleModule

    if GradSampleModule.validate(model, strict=False):  # the check make_private would fail
        raise PolicyViolation("dp-model", "this model cannot be trained with DP-SGD: choose "
                              "linear or mlp while the workspace uses differential privacy")


def train_local_dp(model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: TrainConfig,
                   meter: FlopMeter, privacy: PrivacyPolicy) -> TrainResult:
    """Train ``model`` in place with DP-SGD: per-example clipping, Gaussian noise.

    Batches are Poisson samples with rate ``batch_size / n``, drawn (like the
    noise) from ``config.seed``, which only the node knows. FLOPs include the
    per-example gradients. The trained weights are copied back into ``model``.
    """
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    n = len(y)
    loader = DataLoader(TensorDataset(x, y), batch_size=config.batch_size,
                        generator=torch.Generator().manual_seed(config.seed))
    with warnings.catch_warnings():  # Opacus's notes on secure RNG and backward hooks
        warnings.simplefilter("ignore", UserWarning)
        private, optimizer, batches = PrivacyEngine(accountant="rdp").make_private(
            module=model, optimizer=torch.optim.SGD(model.parameters(), lr=config.lr),
            data_loader=loader, noise_multiplier=privacy.noise_multiplier,
            max_grad_norm=privacy.max_grad_norm,
            noise_generator=torch.Generator(device=x.device).manual_seed(config.seed + 1))
        arch = ("dp", architecture_key(model))
        flops_before, started = meter.total, time.perf_counter()
        private.train()
        try:
            weighted = _epochs(private, optimizer, batches, config.local_epochs, meter, arch)
        finally:
            private.to_standard_module()  # hooks off: the model is a plain module again
    seen = sum(size for _, size in weighted)
    return TrainResult(loss=sum(loss for loss, _ in weighted) / max(seen, 1), num_examples=n,
                       flops=meter.total - flops_before,
                       device_seconds=time.perf_counter() - started)


def _epochs(private: nn.Module, optimizer: torch.optim.Optimizer, batches, epochs: int,
            meter: FlopMeter, arch: tuple[object, ...]) -> list[tuple[float, int]]:
    """Run the DP-SGD epochs; return (loss x batch size, batch size) of the last epoch."""
    weighted: list[tuple[float, int]] = []
    for _ in range(epochs):
        weighted = []
        for xb, yb in batches:
            if len(yb) == 0:  # a Poisson sample can be empty
                continue

            def step(xb: torch.Tensor = xb, yb: torch.Tensor = yb,
                     weighted: list[tuple[float, int]] = weighted) -> None:
                optimizer.zero_grad(set_to_none=True)
                loss = nn.functional.cross_entropy(private(xb), yb)
                loss.backward()
                optimizer.step()
                weighted.append((float(loss.detach()) * len(yb), len(yb)))

            meter.run((arch, len(yb)), step)
    return weighted
