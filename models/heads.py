"""Outcome heads: how a model's scores become class probabilities.

``multinomial`` (the default): the model's ``n_classes`` outputs are logits, one per class.
``ordinal`` (cumulative link, proportional odds): the model outputs one score ``s(x)`` and the head
holds ``n_classes - 1`` ordered cut-points ``t_1 < ... < t_{K-1}``; ``P(y <= k | x) =
sigmoid(t_k - s(x))``, so a higher score moves a record up the classes' order (the data
dictionary's). The head returns the classes' log-probabilities, so cross-entropy on its output is
the model's negative log-likelihood and the most probable class is its argmax: training, DP-SGD,
metering, prediction and scoring treat both heads alike.
"""

from __future__ import annotations

import math

import torch
from torch import nn

HEADS = ("multinomial", "ordinal")


class OrdinalHead(nn.Module):
    """Proportional-odds outcome over ``base``'s one output.

    Parameters
    ----------
    base : nn.Module
        Any model of the registry built with one output, shape (batch, 1).
    n_classes : int
        Ordered classes, at least 2.
    """

    def __init__(self, base: nn.Module, n_classes: int) -> None:
        super().__init__()
        if n_classes < 2:
            raise ValueError("an ordinal outcome needs at least 2 classes")
        self.base = base
        # t_1 = cuts[0]; t_k = t_{k-1} + softplus(cuts[k-1]): ordered whatever the weights are
        step = math.log(math.expm1(1.0))  # softplus(step) = 1: cut-points one unit apart
        start = -(n_classes - 2) / 2
        self.cuts = nn.Parameter(torch.tensor([start] + [step] * (n_classes - 2)))

    def cut_points(self) -> torch.Tensor:
        """The ordered cut-points, shape (n_classes - 1,)."""
        return torch.cumsum(torch.cat([self.cuts[:1], nn.functional.softplus(self.cuts[1:])]), 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Log-probabilities of the classes, shape (batch, n_classes)."""
        score = self.base(x)[:, :1]
        below = torch.sigmoid(self.cut_points().unsqueeze(0) - score)  # P(y <= k), k < K
        ones = torch.ones_like(below[:, :1])
        cumulative = torch.cat([torch.zeros_like(ones), below, ones], dim=1)
        return torch.log((cumulative[:, 1:] - cumulative[:, :-1]).clamp_min(1e-12))
