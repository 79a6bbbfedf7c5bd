"""A pathway-aware network: gene-set scores from a contributor's prior, their
interactions with covariates, and a classifier head.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from models.featurespec import MAX_INTERACTIONS
from models.genesets import gene_set_problem


class GeneSetLayer(nn.Module):
    """One score per gene set: p = genes (W * M)^T + b, with M the sets' 0/1 membership.

    The mask is a non-persistent buffer: it is built from the gene sets on the node,
    is not part of ``state_dict`` and cannot be loaded. Gradients outside the mask
    are zero, so the effective weights there stay exactly zero.

    Parameters
    ----------
    membership : list of list of int
        For each set, the indices of its genes among the layer's ``n_genes`` inputs.
    n_genes : int
        Width of the gene input, shape (batch, n_genes).
    """

    def __init__(self, membership: Sequence[Sequence[int]], n_genes: int) -> None:
        super().__init__()
        mask = torch.zeros(len(membership), n_genes)
        for row, genes in enumerate(membership):
            mask[row, list(genes)] = 1.0
        self.register_buffer("mask", mask, persistent=False)
        sizes = torch.tensor([float(len(g)) for g in membership]).unsqueeze(1)
        self.weight = nn.Parameter(mask / sizes)
        self.bias = nn.Parameter(torch.zeros(len(membership)))

    @property
    def effective_weight(self) -> torch.Tensor:
        """The weights in use, zero outside the mask; shape (n_sets, n_genes)."""
        return self.weight * self.mask

    def forward(self, genes: torch.Tensor) -> torch.Tensor:
        """Return the set scores, shape (batch, n_sets)."""
        return nn.functional.linear(genes, self.effective_weight, self.bias)


class PathwayNet(nn.Module):
    """Gene-set scores, covariates and their interactions, then a classifier head.

    Gene inputs are the columns named in any gene set; covariates are all other
    columns. Interaction terms are p_i * x_j for every set i and interaction column j.
    The head sees [p, covariates, interactions].

    Parameters
    ----------
    n_features : int
        Width of the input matrix, shape (batch, n_features).
    n_classes : int
        Number of output logits.
    feature_names : sequence of str
        Names of the input matrix's columns, length ``n_features``.
    gene_sets : mapping of str to sequence of str
        Set name -> gene column names, each among ``feature_names``; the layer's rows
        follow the sorted set names.
    interaction_columns : sequence of str
        Raw numeric columns among ``feature_names``, not genes, that interact with every set score.
    hidden : int
        Width of the head's hidden layer; 0 for a linear head.
    dropout : float
        Dropout probability after the hidden activation.
    gene_names : sequence of str, optional
        The inputs that are genes (set by the node from the data dictionary's genes group); by
        default every input but the interaction columns.

    Raises
    ------
    ValueError
        No gene sets, a set outside the limits, a gene or interaction column not
        among ``feature_names``, or bad sizes.
    """

    def __init__(self, n_features: int, n_classes: int, feature_names: Sequence[str],
                 gene_sets: Mapping[str, Sequence[str]], interaction_columns: Sequence[str] = (),
                 hidden: int = 0, dropout: float = 0.0, gene_names: Sequence[str] | None = None) -> None:
        super().__init__()
        names = list(feature_names)
        _check(n_features, names, gene_sets, interaction_columns, hidden, dropout,
               set(names).difference(interaction_columns) if gene_names is None else set(gene_names))
        gene_sets = {name: gene_sets[name] for name in sorted(gene_sets)}
        position = {name: i for i, name in enumerate(names)}
        in_sets = {g for genes in gene_sets.values() for g in genes}
        gene_index = [i for i, name in enumerate(names) if name in in_sets]
        gene_position = {names[i]: k for k, i in enumerate(gene_index)}
        self.register_buffer("gene_index", torch.tensor(gene_index, dtype=torch.long), persistent=False)
        self.register_buffer("covariate_index", torch.tensor(
            [i for i, name in enumerate(names) if name not in in_sets], dtype=torch.long), persistent=False)
        self.register_buffer("interaction_index", torch.tensor(
            [position[c] for c in interaction_columns], dtype=torch.long), persistent=False)
        self.gene_sets = GeneSetLayer([[gene_position[g] for g in genes] for genes in gene_sets.values()],
                                      len(gene_index))
        n_sets = len(gene_sets)
        width = n_sets + (n_features - len(gene_index)) + n_sets * len(interaction_columns)
        self.head = _head(width, n_classes, hidden, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of shape (batch, n_classes) for inputs of shape (batch, n_features)."""
        scores = self.gene_sets(x.index_select(1, self.gene_index))
        covariates = x.index_select(1, self.covariate_index)
        other = x.index_select(1, self.interaction_index)
        interactions = (scores.unsqueeze(2) * other.unsqueeze(1)).flatten(1)
        return self.head(torch.cat([scores, covariates, interactions], dim=1))


def _head(width: int, n_classes: int, hidden: int, dropout: float) -> nn.Module:
    """A linear head, or Linear-ReLU-(Dropout)-Linear when ``hidden`` > 0."""
    if hidden == 0:
        return nn.Linear(width, n_classes)
    layers: list[nn.Module] = [nn.Linear(width, hidden), nn.ReLU()]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers, nn.Linear(hidden, n_classes))


def _check(n_features: int, names: list[str], gene_sets: Mapping[str, Sequence[str]],
           interaction_columns: Sequence[str], hidden: int, dropout: float, genes: set[str]) -> None:
    """Raise ValueError naming the first constructor argument that breaks a rule."""
    known = set(names)
    if len(names) != n_features or len(known) != len(names):
        raise ValueError("feature_names must be n_features distinct names")
    if not isinstance(gene_sets, Mapping) or not gene_sets:
        raise ValueError("gene_sets must name at least one gene set")
    problem = gene_set_problem(gene_sets, genes & known)
    if problem:
        raise ValueError(f"gene_sets: {problem}")
    if isinstance(interaction_columns, str) or not all(isinstance(c, str) for c in interaction_columns):
        raise ValueError("interaction_columns must be a list of feature names")
    if len(interaction_columns) > MAX_INTERACTIONS:
        raise ValueError(f"interaction_columns: at most {MAX_INTERACTIONS} columns")
    if (len(set(interaction_columns)) != len(interaction_columns)
            or not all(c in known and c not in genes and "=" not in c and not c.startswith("set:")
                       for c in interaction_columns)):
        raise ValueError("interaction_columns must be distinct raw numeric columns among feature_names "
                         "that are not genes (clinical variables, signature scores)")
    if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 0:
        raise ValueError("hidden must be a whole number >= 0")
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0.0 <= dropout < 1.0:
        raise ValueError("dropout must lie in [0, 1)")
