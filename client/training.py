"""The node's training loop, with counted (not estimated) FLOPs and device time."""

from __future__ import annotations

import itertools
import sqlite3
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from client.errors import PolicyViolation


@dataclass(frozen=True)
class TrainConfig:
    """One round's local training, as validated by the node's policy.

    ``seed`` drives the round's shuffles and dropout. The node derives it from a
    secret of its own (``client.node.round_seed``), so nobody outside the node
    knows which records share a batch.
    """

    lr: float
    local_epochs: int
    batch_size: int
    proximal_mu: float = 0.0
    #: Elastic-net penalties on the weights (parameters of two or more dimensions; not biases or
    #: cut-points), from the model spec: proximal steps after each update, data-independent.
    l1: float = 0.0
    l2: float = 0.0
    server_round: int = 1
    seed: int = 0
    #: Wall seconds the round may take on the device before the node stops it.
    seconds_max: float = float("inf")


@dataclass(frozen=True)
class TrainResult:
    """Aggregate outcome of one round of local training (no per-record values).

    ``loss`` is the mean training loss over the last epoch's records, proximal
    term included; ``num_examples`` the records one epoch used.
    """

    loss: float
    num_examples: int
    flops: int
    device_seconds: float


class FlopMeter:
    """Counts the FLOPs of training steps with torch's ``FlopCounterMode``.

    Counting a step costs several times the step, and the counter's first use
    in a process imports ``torch._dynamo`` (about 1.5 s here). So the meter runs
    the counter on the first real step of each distinct step shape (model
    architecture, batch size, proximal term on or off, torch version) and
    charges that exact count for later steps of the same shape: the FLOPs of a
    dense step depend only on its shape. Counts are kept in memory and, given a
    ``store`` path, in a SQLite file the node keeps across processes and runs.
    """

    def __init__(self, store: str | Path | None = None) -> None:
        self._per_step: dict[tuple[object, ...], int] = {}
        self._stored: dict[str, int] = {}
        self._store = Path(store) if store else None
        self.total = 0
        if self._store:
            self._store.parent.mkdir(parents=True, exist_ok=True)
            with closing(sqlite3.connect(self._store)) as db, db:
                db.execute("CREATE TABLE IF NOT EXISTS step_flops (shape TEXT PRIMARY KEY, flops INTEGER)")
                self._stored.update(db.execute("SELECT shape, flops FROM step_flops"))

    def run(self, shape_key: tuple[object, ...], step: Callable[[], None]) -> None:
        """Run ``step()`` and add its FLOPs to ``total``."""
        flops = self._per_step.get(shape_key)
        if flops is None:
            flops = self._per_step[shape_key] = self._count(shape_key, step)
        else:
            step()
        self.total += flops

    def run_per_record(self, shape_key: tuple[object, ...], records: int, step: Callable[[], None]) -> None:
        """Run ``step()`` whose FLOPs are ``records`` times a per-record count (a DP-SGD step:
        per-example gradients, clipping and the loss are all linear in the records drawn), and
        add them to ``total``. The count runs once per shape, whatever the Poisson batch's size."""
        key = (*shape_key, "per-record")
        per_record = self._per_step.get(key)
        if per_record is None and records > 0:
            per_record = self._per_step[key] = self._count(key, step, records)
        else:
            step()
        self.total += (per_record or 0) * records

    def known(self, shape_key: tuple[object, ...]) -> int | None:
        """The FLOPs of a step shape if it was ever counted, else None."""
        found = self._per_step.get(shape_key)
        return found if found is not None else self._stored.get(repr((torch.__version__, *shape_key)))

    def _count(self, shape_key: tuple[object, ...], step: Callable[[], None], per: int = 1) -> int:
        """FLOPs of a step shape (divided by ``per`` records) from the store, or by running
        ``step`` under the counter."""
        key = repr((torch.__version__, *shape_key))
        if key in self._stored:
            step()
            return self._stored[key]
        with FlopCounterMode(display=False) as counter:
            step()
        flops = self._stored[key] = int(counter.get_total_flops()) // per
        self._remember(key, flops)
        return flops

    def _remember(self, key: str, flops: int) -> None:
        """Keep a new count in the store (concurrent writers agree: same key, same count)."""
        if self._store:
            with closing(sqlite3.connect(self._store, timeout=30)) as db, db:
                db.execute("INSERT OR IGNORE INTO step_flops VALUES (?, ?)", (key, flops))


def architecture_key(model: nn.Module) -> tuple[object, ...]:
    """Identify a model's step shape: class, layers and parameter shapes."""
    return (repr(model), tuple(tuple(p.shape) for p in model.parameters()))


def train_local(model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: TrainConfig,
                meter: FlopMeter) -> TrainResult:
    """Train ``model`` in place with SGD on ``(x, y)``.

    Parameters
    ----------
    model : nn.Module
        Already on the device of ``x``.
    x : torch.Tensor
        Features, shape (n_records, n_features).
    y : torch.Tensor
        Class indices, shape (n_records,).
    config : TrainConfig
        The round's hyperparameters. Batches are shuffled from ``config.seed``,
        so a round is reproducible for whoever knows the seed. Every record is in
        every epoch: the shuffle is cut into ``batch_partition`` batches of at least
        ``batch_size`` records, so no value a strategy sends leaves a record out.
    meter : FlopMeter
        Accumulates the FLOPs of every step.
    """
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr)
    anchor = [p.detach().clone() for p in model.parameters()] if config.proximal_mu > 0 else None
    generator = torch.Generator().manual_seed(config.seed)
    arch = architecture_key(model)
    flops_before = meter.total
    n = len(y)
    bounds = batch_bounds(n, config.batch_size)
    loss_sum = torch.zeros((), device=x.device)
    started = time.perf_counter()

    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # dropout draws from (seed, round) too
        torch.manual_seed(config.seed)
        for _ in range(config.local_epochs):
            loss_sum.zero_()
            order = torch.randperm(n, generator=generator).to(x.device)
            for start, stop in bounds:
                batch = order[start:stop]

                def step(batch: torch.Tensor = batch) -> None:
                    optimizer.zero_grad(set_to_none=True)
                    loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
                    if anchor is not None:
                        pairs = zip(model.parameters(), anchor, strict=True)
                        drift = sum((p - a).pow(2).sum() for p, a in pairs)
                        loss = loss + 0.5 * config.proximal_mu * drift
                    loss.backward()
                    optimizer.step()
                    apply_penalty(model, config)
                    loss_sum.add_(loss.detach() * len(batch))

                meter.run(step_key(arch, len(batch), config), step)
                check_deadline(started, config.seconds_max)

    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    return TrainResult(
        loss=float(loss_sum) / n,
        num_examples=n,
        flops=meter.total - flops_before,
        device_seconds=time.perf_counter() - started,
    )


def check_deadline(started: float, seconds_max: float) -> None:
    """Stop a round that has run longer than the policy allows (the node charges what ran).

    Raises
    ------
    PolicyViolation
        ``round-seconds``.
    """
    if time.perf_counter() - started > seconds_max:
        raise PolicyViolation("round-seconds", f"a round may take at most {seconds_max:g} s "
                              "on the node's device: choose a smaller model or fewer epochs")


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """(start, stop) of each batch of an epoch: ``n // batch_size`` batches (at least one) whose
    sizes differ by at most one record, so every batch holds ``batch_size`` records or more and
    every record is in one. Asking for 511 or 512 of 512 records gives the same single batch."""
    count = max(1, n // batch_size)
    sizes = [n // count + (1 if i < n % count else 0) for i in range(count)]
    starts = [0, *itertools.accumulate(sizes)][:-1]
    return [(start, start + size) for start, size in zip(starts, sizes, strict=True)]


def step_key(arch: tuple, batch: int, config: TrainConfig) -> tuple:
    """What a training step's FLOPs depend on: the architecture, the batch's size and the terms
    added to the step (proximal, penalties). The meter counts and ``expected_flops`` looks up
    by this one key: a key that differs between them would make every round's charge look free."""
    return (arch, batch, config.proximal_mu > 0, config.l1 > 0, config.l2 > 0)


def expected_flops(model: nn.Module, n: int, config: TrainConfig, meter: FlopMeter) -> int:
    """FLOPs ``train_local`` will spend, from counts the meter already has.

    Returns 0 when a step shape of the round was never counted (the first
    round of a new architecture or batch size): the charge then comes after.
    """
    arch = architecture_key(model)
    per_step = [meter.known(step_key(arch, stop - start, config))
                for start, stop in batch_bounds(n, config.batch_size)]
    return 0 if None in per_step else config.local_epochs * sum(per_step)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Class indices predicted for ``x``, shape (n_records,)."""
    model.eval()
    return model(x).argmax(dim=1)


@torch.no_grad()
def apply_penalty(model: nn.Module, config: TrainConfig) -> None:
    """The elastic net's proximal step on the weights, after a gradient step of ``config.lr``:
    shrink by ``lr * l2`` (ridge), then soft-threshold at ``lr * l1`` (lasso: exact zeros).
    It reads no record, so under DP-SGD it sits outside the clipped, noised part."""
    if config.l1 <= 0 and config.l2 <= 0:
        return
    for weight in (p for p in model.parameters() if p.ndim >= 2):
        if config.l2 > 0:
            weight.mul_(max(1.0 - config.lr * config.l2, 0.0))
        if config.l1 > 0:
            weight.copy_(weight.sign() * (weight.abs() - config.lr * config.l1).clamp_min(0.0))
