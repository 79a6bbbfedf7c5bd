"""A synthetic cohort with the published shape of the foundation's cohort.

Used by the demo, by contributors developing locally and by the tests. The
generative story (see ``docs/synthetic-cohort.md``):

- ``K`` latent pathway activities ``z ~ N(0, I)`` per patient;
- each gene loads on one or two pathways: ``gene_j = sum_k L_jk z_k + eps_j``,
  with small loadings, so single genes carry little signal and modules a lot;
- clinical variables have the largest variance; a few track disease severity;
- signature scores average curated gene sets that only partly overlap the true
  modules (like public pathway databases);
- a latent progression score mixes pathway activities, clinical covariates and
  one pathway x clinical interaction, plus noise; classes are its terciles with
  the cohort's exact class counts (ordinal: Slow < Medium < Fast).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from client.schema import (
    CATEGORICAL_LEVELS,
    CLASSES,
    CLINICAL_COLUMNS,
    GENE_COLUMNS,
    ID_COLUMN,
    LABEL_COLUMN,
    SIGNATURE_COLUMNS,
)

CLASS_COUNTS: dict[str, int] = {"Slow": 223, "Medium": 202, "Fast": 215}
N_PATHWAYS = 12


def generate_cohort(seed: int = 0, class_counts: dict[str, int] | None = None) -> pd.DataFrame:
    """Draw a cohort table with the schema's columns and exact class counts.

    Parameters
    ----------
    seed : int
        Seeds every random draw: the same seed gives the same table.
    class_counts : dict, optional
        Records per class; defaults to the pilot cohort's 223 / 202 / 215.

    Returns
    -------
    pandas.DataFrame
        One row per patient: ``patient_id``, 252 features, ``progression``.
    """
    counts = class_counts or CLASS_COUNTS
    n = sum(counts.values())
    rng = np.random.default_rng(seed)
    structure = np.random.default_rng(10_000 + seed)  # the "biology" of this cohort

    z = rng.standard_normal((n, N_PATHWAYS))
    genes, modules = _genes(z, structure, rng)
    clinical, severity = _clinical(n, rng)
    signatures = _signatures(genes, modules, structure)
    sex = rng.choice(CATEGORICAL_LEVELS["sex"], size=n)

    score = (
        0.9 * z[:, 0] + 0.7 * z[:, 1] - 0.6 * z[:, 2] + 0.4 * z[:, 3]
        + 0.8 * severity
        + 0.6 * z[:, 0] * severity
        + 0.35 * rng.standard_normal(n)
    )
    onset = np.where(score + rng.standard_normal(n) > 1.0, "childhood",
                     np.where(rng.random(n) < 0.5, "juvenile", "adult"))
    labels = _classes_by_rank(score, counts)

    table = pd.DataFrame(np.hstack([genes, clinical, signatures]),
                         columns=[*GENE_COLUMNS, *CLINICAL_COLUMNS, *SIGNATURE_COLUMNS])
    table.insert(0, ID_COLUMN, [f"P{seed:03d}-{i:04d}" for i in range(n)])
    table["sex"] = sex
    table["onset"] = onset
    table[LABEL_COLUMN] = labels
    return table.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def _genes(z: np.ndarray, structure: np.random.Generator, rng: np.random.Generator
           ) -> tuple[np.ndarray, list[np.ndarray]]:
    """Expression of 200 genes driven by pathway modules; returns the true modules."""
    n_genes = len(GENE_COLUMNS)
    loadings = np.zeros((n_genes, N_PATHWAYS))
    primary = np.arange(n_genes) % N_PATHWAYS
    loadings[np.arange(n_genes), primary] = structure.uniform(0.25, 0.45, n_genes)
    shared = structure.random(n_genes) < 0.25  # genes in a second pathway
    second = (primary + structure.integers(1, N_PATHWAYS, n_genes)) % N_PATHWAYS
    loadings[shared, second[shared]] = structure.uniform(0.15, 0.3, shared.sum())
    genes = z @ loadings.T + 0.4 * rng.standard_normal((len(z), n_genes))
    modules = [np.flatnonzero(loadings[:, k]) for k in range(N_PATHWAYS)]
    return genes, modules


def _clinical(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Clinical covariates with high variance; returns them and latent severity."""
    severity = rng.standard_normal(n)
    clinical = rng.normal(0.0, 1.0, (n, len(CLINICAL_COLUMNS)))
    clinical[:, 0] = np.clip(np.round(3 + 1.1 * severity + 0.5 * rng.standard_normal(n)), 1, 5)
    clinical[:, 1] = 60 - 12 * severity + 8 * rng.standard_normal(n)  # functional score
    clinical[:, 2] = 40 + 5 * severity + 10 * rng.standard_normal(n)  # walk test decline
    clinical[:, 3] = rng.integers(0, 4, n)                              # treatment lines
    scales = np.r_[1.0, 1.0, 1.0, 1.0, rng.uniform(2.0, 15.0, len(CLINICAL_COLUMNS) - 4)]
    clinical[:, 4:] *= scales[4:]
    return clinical, severity


def _signatures(genes: np.ndarray, modules: list[np.ndarray],
                structure: np.random.Generator) -> np.ndarray:
    """Signature scores: means over curated sets that only partly match true modules."""
    n_genes = genes.shape[1]
    scores = np.empty((len(genes), len(SIGNATURE_COLUMNS)))
    for s in range(len(SIGNATURE_COLUMNS)):
        module = modules[s % len(modules)]
        kept = structure.choice(module, size=max(2, int(0.6 * len(module))), replace=False)
        noise = structure.choice(n_genes, size=max(2, int(0.4 * len(module))), replace=False)
        scores[:, s] = genes[:, np.union1d(kept, noise)].mean(axis=1)
    return scores


def _classes_by_rank(score: np.ndarray, counts: dict[str, int]) -> np.ndarray:
    """Assign ordinal classes by rank of the latent score, with exact counts."""
    labels = np.empty(len(score), dtype=object)
    order = np.argsort(score, kind="stable")
    start = 0
    for name in CLASSES:
        labels[order[start:start + counts[name]]] = name
        start += counts[name]
    return labels
