"""A synthetic cohort with the statistical structure of the foundation's cohort.

Used by the demo, by contributors developing locally, by the tests and by the
quality benchmark. The equations are in ``docs/synthetic-cohort.md``; in short:

- ``K`` latent pathway activities ``z ~ N(0, I)`` per patient drive gene
  expression through sparse loadings (co-expression modules, genes shared by two
  pathways, noise), so single genes carry little signal and modules a lot;
- clinical variables have the highest variance; stage, functional score and
  treatment history matter, the others do not;
- signature scores are means of curated gene sets that only partly overlap the
  true modules (a public pathway database, ``public_gene_sets``);
- progression is ordinal: a latent score made of pathway activities, clinical
  covariates and pathway x clinical interactions, cut at fixed thresholds.

Because every observed value is a known function of Gaussian latents, the true
posterior ``P(class | features)`` is available in closed form (``true_posterior``):
the Bayes-optimal classifier is the benchmark's ceiling.

The disease (``Disease``: loadings, effects, gene sets, thresholds) is fixed; a
cohort seed draws patients. ``generate_external_cohort`` draws a contributor's
own cohort from another site: a shifted population, batch effects and another
standard of care.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import pandas as pd
from scipy.stats import norm

from contract.schema import (
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
N_PUBLIC_SETS = 30
#: Clinical columns with a meaning: stage (1..5), functional score, walk test, treatment lines (0..3).
STAGE, FUNCTION, WALK, TREATMENT = 0, 1, 2, 3


@dataclass(frozen=True)
class Site:
    """Where and how a cohort was measured: the population and the lab.

    Attributes
    ----------
    severity_shift : float
        Mean shift of the latent stage (a sicker or milder population).
    gene_batch_sd : float
        Per-gene offset of this site's platform (batch effect), in expression units.
    gene_noise : float
        Measurement noise of the platform, relative to the pathway signal.
    treatment_effect : float
        How much a line of treatment slows progression under this site's standard of care.
    class_shares : tuple of float, optional
        Class shares of this site's population (defaults to the disease's).
    """

    severity_shift: float = 0.0
    gene_batch_sd: float = 0.0
    gene_noise: float = 1.0
    treatment_effect: float = 1.0
    class_shares: tuple[float, float, float] | None = None


FOUNDATION = Site()
#: The default external site of contributors A and B: sicker patients, another platform,
#: another standard of care, more Slow patients in the registry.
EXTERNAL = Site(severity_shift=0.5, gene_batch_sd=0.3, gene_noise=1.5, treatment_effect=0.0,
                class_shares=(0.47, 0.30, 0.23))


@dataclass(frozen=True)
class Disease:
    """The fixed structure of the disease, drawn once from ``seed``.

    Attributes
    ----------
    loadings : numpy.ndarray
        Gene x pathway loadings, shape (200, K): expression = offset + scale * (L z + noise).
    modules : list of numpy.ndarray
        True member genes of each pathway (never published).
    public_sets : dict of str to tuple of str
        The curated gene sets a contributor can download: partial, noisy views of the modules.
    """

    seed: int
    loadings: np.ndarray
    gene_offset: np.ndarray
    gene_scale: np.ndarray
    modules: list[np.ndarray]
    public_sets: dict[str, tuple[str, ...]]
    main_effects: np.ndarray          # (K,) pathway main effects
    interactions: np.ndarray          # (K, 3) pathway x (stage, function, treatment)
    clinical_effects: np.ndarray      # (3,) stage, function, treatment
    onset_effects: np.ndarray         # (3,) childhood, juvenile, adult
    noise_sd: float
    gene_noise: float = 1.0
    thresholds: tuple[float, float] = field(default=(0.0, 0.0))


@lru_cache(maxsize=4)
def disease(seed: int = 0) -> Disease:
    """The disease's structure for ``seed`` (seed 0 is the demo's, and fixed)."""
    rng = np.random.default_rng(seed)
    n_genes, k = len(GENE_COLUMNS), N_PATHWAYS
    loadings = np.zeros((n_genes, k))
    members = rng.permutation(n_genes)[:180]  # 20 genes belong to no pathway
    primary = np.arange(len(members)) % k
    loadings[members, primary] = rng.uniform(1.5, 2.5, len(members))
    shared = members[rng.random(len(members)) < 0.25]  # genes in a second pathway
    loadings[shared, rng.integers(0, k, len(shared))] += rng.uniform(0.5, 0.9, len(shared))
    modules = [np.flatnonzero(loadings[:, p] > 0) for p in range(k)]

    main = np.zeros(k)
    main[:4] = [1.6, 1.25, -1.1, 0.9]
    interactions = np.zeros((k, 3))
    interactions[4, 0] = 0.6       # pathway 4 matters only in advanced stages
    interactions[5, 2] = -0.6      # treatment works only when pathway 5 is active
    interactions[0, 0] = 0.3       # pathway 0 matters more in advanced stages
    interactions[6, 1] = -0.4      # pathway 6 x functional score
    base = Disease(
        seed=seed, loadings=loadings, gene_offset=rng.uniform(4.0, 10.0, n_genes),
        gene_scale=rng.uniform(0.35, 0.6, n_genes), modules=modules,
        public_sets=_public_sets(modules, rng), main_effects=main, interactions=interactions,
        clinical_effects=np.array([0.5, -0.4, -0.3]), onset_effects=np.array([0.3, 0.0, -0.2]),
        noise_sd=0.05)
    return _with_thresholds(base, CLASS_COUNTS)


def _public_sets(modules: list[np.ndarray], rng: np.random.Generator) -> dict[str, tuple[str, ...]]:
    """Curated gene sets: ~70 % of a true module plus unrelated genes; some match no module."""
    sets = []
    for s in range(N_PUBLIC_SETS):
        if s < 2 * N_PATHWAYS:
            module = modules[s % N_PATHWAYS]
            kept = rng.choice(module, size=int(round(0.7 * len(module))), replace=False)
            extra = rng.choice(len(GENE_COLUMNS), size=int(round(0.15 * len(module))), replace=False)
            genes = np.union1d(kept, extra)
        else:
            genes = rng.choice(len(GENE_COLUMNS), size=int(rng.integers(8, 20)), replace=False)
        sets.append(tuple(GENE_COLUMNS[g] for g in np.sort(genes)))
    order = rng.permutation(N_PUBLIC_SETS)  # the database's order says nothing about the modules
    return {f"GS{i:02d}": sets[j] for i, j in enumerate(order)}


def _with_thresholds(base: Disease, counts: dict[str, int]) -> Disease:
    """Cut points of the latent score at the population quantiles of the class shares."""
    shares = np.array([counts[c] for c in CLASSES], dtype=float)
    cuts = _quantile_cuts(base, FOUNDATION, shares, 400_000, base.seed + 1)
    return Disease(**{**base.__dict__, "thresholds": cuts})


def public_gene_sets(seed: int = 0) -> dict[str, list[str]]:
    """The curated gene-set database a contributor may download (gene names per set)."""
    return {name: list(genes) for name, genes in disease(seed).public_sets.items()}


def generate_cohort(seed: int = 0, class_counts: dict[str, int] | None = None,
                    site: Site = FOUNDATION, disease_seed: int = 0) -> pd.DataFrame:
    """Draw a cohort table with the schema's columns and exact class counts.

    Patients are drawn from the population and kept until each class has its
    count, so every class keeps its population distribution of features.

    Parameters
    ----------
    seed : int
        Seeds the patients drawn: the same seed gives the same table.
    class_counts : dict, optional
        Records per class; defaults to the pilot cohort's 223 / 202 / 215.
    site : Site
        The population and platform (``FOUNDATION`` by default).
    disease_seed : int
        The disease's structure (``disease``); the demo's is 0.

    Returns
    -------
    pandas.DataFrame
        One row per patient: ``patient_id``, 252 features, ``progression``.
    """
    counts = class_counts or CLASS_COUNTS
    truth = disease(disease_seed)
    rng = np.random.default_rng(seed)
    batch = site.gene_batch_sd * np.random.default_rng(10_000 + seed).standard_normal(len(GENE_COLUMNS))
    cuts = _site_thresholds(truth, site)
    table = with_class_counts(lambda: _draw_patients(truth, site, cuts, batch, 4 * sum(counts.values()), rng),
                              LABEL_COLUMN, {c: counts[c] for c in CLASSES}, seed)
    table.insert(0, ID_COLUMN, [f"P{seed:03d}-{i:05d}" for i in range(len(table))])
    return table


def with_class_counts(draw: Callable[[], pd.DataFrame], label: str, counts: dict[str, int], seed: int
                      ) -> pd.DataFrame:
    """Patients from ``draw`` (a batch of the population each call) kept until every class has its
    count, in ``counts``' order, then shuffled by ``seed``: each class keeps its population
    distribution of features."""
    kept, need = [], dict(counts)
    while any(need.values()):
        frame = draw()
        for name in counts:
            take = frame[frame[label] == name].iloc[:need[name]]
            need[name] -= len(take)
            kept.append(take)
    return pd.concat(kept).sample(frac=1.0, random_state=seed).reset_index(drop=True)


def generate_external_cohort(seed: int, n_records: int = 2000, site: Site = EXTERNAL,
                             disease_seed: int = 0) -> pd.DataFrame:
    """A contributor's own cohort from another site, with the same schema.

    Class counts follow the site's class shares; see ``Site`` for the shift.
    """
    shares = _shares(site)
    counts = np.floor(shares / shares.sum() * n_records).astype(int)
    counts[0] += n_records - counts.sum()
    return generate_cohort(seed, dict(zip(CLASSES, map(int, counts), strict=True)), site, disease_seed)


def _draw_latents(truth: Disease, site: Site, n: int, rng: np.random.Generator
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pathway activities, raw clinical table, clinical covariates u, onset codes."""
    z = rng.standard_normal((n, N_PATHWAYS))
    clinical = rng.standard_normal((n, len(CLINICAL_COLUMNS)))
    clinical[:, STAGE] = np.clip(np.round(3 + site.severity_shift * 1.2 + 1.2 * clinical[:, STAGE]), 1, 5)
    clinical[:, FUNCTION] = 30 + 8 * clinical[:, FUNCTION]
    clinical[:, WALK] = 350 + 90 * clinical[:, WALK]
    clinical[:, TREATMENT] = rng.integers(0, 4, n)
    clinical[:, 4] = 35 + 15 * clinical[:, 4]  # age at baseline
    clinical[:, 5:] *= np.random.default_rng(truth.seed + 2).uniform(2.0, 25.0, len(CLINICAL_COLUMNS) - 5)
    onset = rng.choice(3, size=n, p=[0.3, 0.4, 0.3])
    return z, clinical, covariates(clinical), onset


def covariates(clinical: np.ndarray) -> np.ndarray:
    """The clinical covariates of the progression score in standard units: stage,
    functional score and treatment lines, shape (n, 3)."""
    return np.column_stack([(clinical[:, STAGE] - 3) / 1.2, (clinical[:, FUNCTION] - 30) / 8,
                            (clinical[:, TREATMENT] - 1.5) / 1.1])


def _score(truth: Disease, site: Site, z: np.ndarray, clinical: np.ndarray, u: np.ndarray,
           onset: np.ndarray) -> np.ndarray:
    """The noise-free progression score of each patient."""
    del clinical
    clinical_effects = truth.clinical_effects * np.array([1.0, 1.0, site.treatment_effect])
    return (z @ truth.main_effects + np.einsum("nk,kj,nj->n", z, truth.interactions, u)
            + u @ clinical_effects + truth.onset_effects[onset])


def _site_thresholds(truth: Disease, site: Site) -> tuple[float, float]:
    """A site's class cut points: the disease's, or its own population's quantiles."""
    if site == FOUNDATION:
        return truth.thresholds
    return _quantile_cuts(truth, site, _shares(site), 200_000, truth.seed + 3)


def _quantile_cuts(truth: Disease, site: Site, shares: np.ndarray, draws: int, seed: int
                   ) -> tuple[float, float]:
    """The latent score's population quantiles at the cumulative class shares (Monte Carlo)."""
    rng = np.random.default_rng(seed)
    latents = _draw_latents(truth, site, draws, rng)
    score = _score(truth, site, *latents) + truth.noise_sd * rng.standard_normal(draws)
    cuts = np.quantile(score, np.cumsum(shares / shares.sum())[:2])
    return float(cuts[0]), float(cuts[1])


def _shares(site: Site) -> np.ndarray:
    """The site's class shares: its own, or the pilot cohort's."""
    return np.array(site.class_shares or [CLASS_COUNTS[c] for c in CLASSES], dtype=float)


def _draw_patients(truth: Disease, site: Site, cuts: tuple[float, float], batch: np.ndarray,
                   n: int, rng: np.random.Generator) -> pd.DataFrame:
    """One batch of patients from the site's population, labelled by the cut points."""
    z, clinical, u, onset = _draw_latents(truth, site, n, rng)
    noise = truth.gene_noise * site.gene_noise * rng.standard_normal((n, len(GENE_COLUMNS)))
    genes = truth.gene_offset + batch + truth.gene_scale * (z @ truth.loadings.T + noise)
    signatures = np.column_stack([genes[:, _gene_index(truth.public_sets[name])].mean(axis=1)
                                  for name in signature_sets(truth)])
    score = _score(truth, site, z, clinical, u, onset) + truth.noise_sd * rng.standard_normal(n)
    frame = pd.DataFrame(np.hstack([genes, clinical, signatures]),
                         columns=[*GENE_COLUMNS, *CLINICAL_COLUMNS, *SIGNATURE_COLUMNS])
    frame["sex"] = rng.choice(CATEGORICAL_LEVELS["sex"], size=n)
    frame["onset"] = np.asarray(CATEGORICAL_LEVELS["onset"])[onset]
    frame[LABEL_COLUMN] = np.asarray(CLASSES)[np.searchsorted(cuts, score)]
    return frame


def signature_sets(truth: Disease) -> list[str]:
    """The curated sets behind ``signature_0..20``: the database's first 21."""
    return list(truth.public_sets)[:len(SIGNATURE_COLUMNS)]


def _gene_index(genes: tuple[str, ...]) -> np.ndarray:
    """Column positions of gene names."""
    return np.array([int(g.removeprefix("gene_")) for g in genes])


def true_posterior(frame: pd.DataFrame, disease_seed: int = 0) -> np.ndarray:
    """``P(class | features)`` of foundation-site records, from the generator's truth.

    Given the genes, the pathway activities are Gaussian, ``z | g ~ N(mu, S)``;
    given the clinical covariates ``u`` the score is linear in ``z``, so it is
    Gaussian too, ``N(w(u) . mu + c(u), w(u)' S w(u) + noise^2)``, and each class's
    probability is the mass between its cut points.

    Returns
    -------
    numpy.ndarray
        Shape (n_records, 3), columns in ``CLASSES`` order; rows sum to 1.
    """
    truth = disease(disease_seed)
    genes = frame[list(GENE_COLUMNS)].to_numpy(float)
    std = (genes - truth.gene_offset) / truth.gene_scale  # = L z + noise
    load, noise_var = truth.loadings, truth.gene_noise ** 2
    cov = np.linalg.inv(np.eye(N_PATHWAYS) + load.T @ load / noise_var)
    mu = std @ load @ cov / noise_var
    clinical = frame[list(CLINICAL_COLUMNS)].to_numpy(float)
    u = covariates(clinical)
    onset = pd.Categorical(frame["onset"], categories=CATEGORICAL_LEVELS["onset"]).codes
    weights = truth.main_effects + u @ truth.interactions.T  # (n, K)
    mean = np.einsum("nk,nk->n", weights, mu) + u @ truth.clinical_effects + truth.onset_effects[onset]
    sd = np.sqrt(np.einsum("nk,kl,nl->n", weights, cov, weights) + truth.noise_sd ** 2)
    low, high = (norm.cdf((cut - mean) / sd) for cut in truth.thresholds)
    return np.column_stack([low, high - low, 1.0 - high])
