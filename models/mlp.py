"""Multi-layer perceptron with ReLU activations and optional dropout."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class MLPClassifier(nn.Module):
    """Fully connected network: n_features -> hidden... -> n_classes.

    Parameters
    ----------
    n_features : int
        Width of the input matrix, shape (batch, n_features).
    n_classes : int
        Number of output logits.
    hidden : sequence of int
        Widths of the hidden layers.
    dropout : float
        Dropout probability after each hidden activation.
    """

    def __init__(self, n_features: int, n_classes: int, hidden: Sequence[int] = (64,),
                 dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = n_features
        for size in hidden:
            layers += [nn.Linear(width, int(size)), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = int(size)
        layers.append(nn.Linear(width, n_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of shape (batch, n_classes)."""
        return self.net(x)
