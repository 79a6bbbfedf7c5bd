"""Gene sets as a prior: their limits, and the per-set scores a pipeline computes.

A gene set is a name and a few gene columns. Both the feature pipeline and the
pathway network take gene sets from a contributor, so both check them here.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence

import numpy as np
from scipy.stats import rankdata

MAX_SETS = 200
MIN_SET_SIZE = 2
MAX_SET_SIZE = 200
#: Set names appear in feature names (``set:NAME``, ``NAME*clinical_0``), so no ``*``.
SET_NAME = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")


def gene_set_problem(gene_sets: Mapping[str, Sequence[str]], known: Collection[str] | None) -> str | None:
    """Say what is wrong with ``gene_sets``, or return None when they are fine.

    Parameters
    ----------
    gene_sets : mapping of str to sequence of str
        Set name -> gene column names.
    known : collection of str, optional
        The gene columns a set may name; None skips that check.

    Returns
    -------
    str or None
        One sentence naming the set and the rule, never the set's contents.
    """
    if len(gene_sets) > MAX_SETS:
        return f"at most {MAX_SETS} gene sets"
    for number, (name, genes) in enumerate(gene_sets.items()):
        if not isinstance(name, str) or not SET_NAME.fullmatch(name):
            return f"gene set #{number}: names are 1-64 letters, digits or '_.:-'"
        if not isinstance(genes, list | tuple) or not all(isinstance(g, str) for g in genes):
            return f"gene set '{name}' must be a list of gene column names"
        if not MIN_SET_SIZE <= len(genes) <= MAX_SET_SIZE:
            return f"gene set '{name}' must hold {MIN_SET_SIZE} to {MAX_SET_SIZE} genes"
        if len(set(genes)) != len(genes):
            return f"gene set '{name}' names a gene twice"
        unknown = [g for g in genes if known is not None and g not in known]
        if unknown:
            return f"gene set '{name}' names {len(unknown)} unknown gene column(s), e.g. '{unknown[0][:40]}'"
    return None


def rank_scores(genes: np.ndarray, members: Sequence[np.ndarray]) -> np.ndarray:
    """Singscore-like scores: each record's mean rank of a set's genes, scaled to [0, 1].

    Parameters
    ----------
    genes : numpy.ndarray, shape (n_records, n_genes)
        All gene columns of each record.
    members : sequence of numpy.ndarray of int
        For each set, the column indices of its genes in ``genes``.

    Returns
    -------
    numpy.ndarray, shape (n_records, n_sets)
        0 when a set's genes are the record's lowest, 1 when its highest. A record's
        scores depend on that record only.
    """
    ranks = rankdata(genes, axis=1, method="average")
    n_genes = genes.shape[1]
    scores = np.empty((genes.shape[0], len(members)))
    for i, index in enumerate(members):
        size = len(index)
        lowest = (size + 1) / 2
        span = n_genes - size
        scores[:, i] = (ranks[:, index].mean(axis=1) - lowest) / span if span > 0 else 0.0
    return scores


def first_component(standardised: np.ndarray) -> np.ndarray:
    """First principal component of a set's standardised genes, signed to agree with their mean.

    Parameters
    ----------
    standardised : numpy.ndarray, shape (n_records, set_size)
        The set's genes, standardised.

    Returns
    -------
    numpy.ndarray, shape (set_size,)
        A unit vector whose score correlates positively (or not negatively) with
        the set's mean score.
    """
    centred = standardised - standardised.mean(axis=0)
    component = np.linalg.svd(centred, full_matrices=False)[2][0]
    agreement = float((centred @ component) @ centred.mean(axis=1))
    if agreement < 0 or (agreement == 0 and component[np.argmax(np.abs(component))] < 0):
        component = -component
    return component
