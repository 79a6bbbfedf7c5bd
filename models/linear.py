"""Multinomial logistic regression: one linear layer."""

from __future__ import annotations

import torch
from torch import nn


class LinearClassifier(nn.Module):
    """Logits = x W^T + b.

    Parameters
    ----------
    n_features : int
        Width of the input matrix, shape (batch, n_features).
    n_classes : int
        Number of output logits.
    """

    def __init__(self, n_features: int, n_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(n_features, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of shape (batch, n_classes)."""
        return self.linear(x)
