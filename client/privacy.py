"""Differential privacy on the node: DP-SGD, and its accounting with Opacus's RDP accountant.

The server is the untrusted party, so clipping and noise happen here, before
any weights leave. Poisson sampling of batches (``sample_rate = batch / n``)
makes the RDP accountant valid; the privacy spent is accounted per
contributor across all their rounds and submissions on this cohort.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from client.training import (
    FlopMeter,
    TrainConfig,
    TrainResult,
    apply_penalty,
    architecture_key,
    check_deadline,
)


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

    steps: dict[tuple[float, float], int] = {}
    for noise, rate, count in history:  # RDP adds over steps: one entry per (noise, rate) is exact
        steps[noise, rate] = steps.get((noise, rate), 0) + count
    accountant = RDPAccountant()
    accountant.history = [(noise, rate, count) for (noise, rate), count in steps.items()]
    return float(accountant.get_epsilon(delta))


def round_entry(n: int, config: TrainConfig, privacy: PrivacyPolicy) -> Entry:
    """The accounting entry of one round: about ``n / batch`` Poisson batches per epoch."""
    sample_rate = config.batch_size / n
    return (privacy.noise_multiplier, sample_rate, config.local_epochs * round(1 / sample_rate))


def train_local_dp(model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: TrainConfig,
                   meter: FlopMeter, privacy: PrivacyPolicy) -> TrainResult:
    """Train ``model`` in place with DP-SGD: Poisson batches, per-example clipping, Gaussian noise.

    Each step draws every training record independently with probability
    ``q = batch_size / n`` (so no contributor value can single a record out), computes each
    drawn record's gradient (``torch.func``: any registered model, buffers included), clips it
    to ``max_grad_norm``, adds Gaussian noise of ``noise_multiplier * max_grad_norm`` to their
    sum and divides by the expected batch ``q * n``. An epoch is ``round(1 / q)`` steps, as the
    accountant's entry (``round_entry``) counts. A proximal term (FedProx) depends on no record:
    it is applied outside the clipped, noised part. Sampling and noise come from ``config.seed``,
    which only the node knows.
    """
    from torch.func import functional_call, grad, vmap

    n = len(y)
    q = config.batch_size / n
    steps = config.local_epochs * round(1 / q)
    params = {k: p for k, p in model.named_parameters() if p.requires_grad}
    buffers = dict(model.named_buffers())
    anchor = {k: p.detach().clone() for k, p in params.items()} if config.proximal_mu > 0 else None
    sampler = torch.Generator(device=x.device).manual_seed(config.seed)
    std = privacy.noise_multiplier * privacy.max_grad_norm

    def example_loss(values: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, (values, buffers), (xi.unsqueeze(0),))
        return nn.functional.cross_entropy(logits, yi.unsqueeze(0))

    per_example = vmap(grad(example_loss), in_dims=(None, 0, 0), randomness="different")
    arch = ("dp-func", architecture_key(model), config.l1 > 0, config.l2 > 0)
    flops_before, started, losses = meter.total, time.perf_counter(), []
    model.train()
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # dropout draws from the node's seed too
        torch.manual_seed(config.seed)
        for step_index in range(steps):
            drawn = torch.rand(n, generator=sampler, device=x.device) < q

            def step(drawn: torch.Tensor = drawn) -> None:
                losses.append(_dp_step(model, params, x[drawn], y[drawn], per_example, std,
                                       privacy.max_grad_norm, q * n, config, anchor, sampler))

            meter.run_per_record(arch, int(drawn.sum()), step)
            check_deadline(started, config.seconds_max)
            if step_index == steps - round(1 / q) - 1:
                losses.clear()  # report the last epoch's loss
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    seen = sum(size for _, size in losses)
    return TrainResult(loss=sum(total for total, _ in losses) / max(seen, 1), num_examples=n,
                       flops=meter.total - flops_before, device_seconds=time.perf_counter() - started)


def _dp_step(model: nn.Module, params: dict[str, nn.Parameter], xb: torch.Tensor, yb: torch.Tensor,
             per_example, std: float, clip: float, expected_batch: float, config: TrainConfig,
             anchor: dict[str, torch.Tensor] | None, sampler: torch.Generator) -> tuple[float, int]:
    """One noised step in place; returns (loss x records, records) of the drawn batch."""
    values = {k: p.detach() for k, p in params.items()}
    summed = {k: torch.zeros_like(p) for k, p in values.items()}
    loss = 0.0
    if len(yb):
        # a crafted model can make one record's gradient infinite or NaN; zeroed, every gradient
        # stays bounded by the clip, so no record decides whether the weights stay finite
        grads = {k: torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)
                 for k, g in per_example(values, xb, yb).items()}
        norms = torch.sqrt(sum(g.flatten(1).pow(2).sum(1) for g in grads.values()))
        factor = (clip / (norms + 1e-6)).clamp(max=1.0)
        summed = {k: torch.einsum("i,i...->...", factor, g) for k, g in grads.items()}
        with torch.no_grad():
            loss = float(nn.functional.cross_entropy(model(xb), yb, reduction="sum"))
    with torch.no_grad():
        for k, p in params.items():
            noise = torch.normal(0.0, std, size=p.shape, generator=sampler, device=p.device)
            p -= config.lr * (summed[k] + noise) / expected_batch
            if anchor is not None:
                p -= config.lr * config.proximal_mu * (p - anchor[k])
    apply_penalty(model, config)
    return loss, len(yb)
