"""A second synthetic disease, to judge methods on a cohort they were not designed on.

An inflammatory myopathy, structured unlike the demo's disease (``synthetic.disease``):

- eight **correlated** immune and muscle programmes, ``z ~ N(0, R)`` with ``R`` not the identity,
  drive 300 genes named like gene symbols (``tx_KRT4B``): loadings of both signs, gene-specific
  noise, and 110 genes in no programme;
- **lognormal laboratory values** (CK, aldolase, myoglobin, CRP, KL-6, NfL, ...): their logarithm
  is linear in the programmes, so on their raw scale a few extreme records dominate;
- **other modifiers** of the programmes' effects: sex (the complement programme acts in men only),
  the myositis antibody (four levels; anti-Jo1 switches on the fibrosis programme), the daily
  glucocorticoid dose (dampens the interferon programme, on a log scale) and age (regeneration
  fails with age);
- an **ordinal course with four classes** (remission < stable < progressive < refractory), cut
  from a latent score whose noise is twice as large in seronegative patients: a proportional-odds
  model is close to right but not exactly.

Everything observed is linear-Gaussian in the programmes given the modifiers (the genes, the MMT-8
score, the logarithms of the laboratory values), so the programmes given a record are Gaussian and
so is the score: ``true_posterior`` is exact, and the Bayes-optimal classifier's macro-F1 is the
ceiling. The data dictionary is ``conf/dictionary/myopathy.yaml``; ``myopathy_gene_sets`` is the
public gene-set database a contributor would download for this panel.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import norm

from synthetic.disease import with_class_counts

DICTIONARY = Path(__file__).resolve().parents[1] / "conf" / "dictionary" / "myopathy.yaml"
ID, LABEL = "subject", "course"
CLASSES = ("remission", "stable", "progressive", "refractory")
CLASS_SHARES = (0.22, 0.34, 0.28, 0.16)
N_RECORDS, N_GENES, N_PROGRAMMES, N_PUBLIC_SETS = 640, 300, 8, 36
PROGRAMMES = ("interferon", "complement", "regeneration", "fibrosis", "mitochondrial", "denervation",
              "hypoxia", "proliferation")
ANTIBODIES = ("anti-Jo1", "anti-Mi2", "anti-TIF1g", "seronegative")
SEX = ("F", "M")
#: Laboratory values: log median, sd of the log's own noise, loadings of the log on the programmes.
LABS: dict[str, tuple[float, float, dict[int, float]]] = {
    "ck_u_l": (np.log(900.0), 0.8, {0: 0.45, 2: 0.35}),
    "aldolase_u_l": (np.log(11.0), 0.6, {0: 0.3, 2: 0.3}),
    "myoglobin_ng_ml": (np.log(260.0), 0.9, {0: 0.4, 4: 0.25}),
    "ldh_u_l": (np.log(330.0), 0.45, {2: 0.2, 3: 0.15}),
    "crp_mg_l": (np.log(5.0), 1.0, {1: 0.6}),
    "ferritin_ng_ml": (np.log(180.0), 0.7, {1: 0.3, 0: 0.2}),
    "kl6_u_ml": (np.log(420.0), 0.6, {3: 0.5}),
    "nfl_pg_ml": (np.log(14.0), 0.6, {5: 0.45}),
    "tsh_mu_l": (np.log(2.0), 0.5, {}),
    "vitd_nmol_l": (np.log(55.0), 0.45, {}),
}
CLINICAL = ("age_years", "bmi", "prednisone_mg_day", "mmt8_score")
#: The MMT-8 manual muscle test (0-80, higher is stronger): 64 - 5 z_interferon - 4 z_regeneration
#: - 3 z_denervation + N(0, 5^2), unrounded and unclipped so that it stays Gaussian.
MMT8 = (64.0, {0: -5.0, 2: -4.0, 5: -3.0}, 5.0)


@dataclass(frozen=True)
class Myopathy:
    """The disease's fixed structure.

    Attributes
    ----------
    genes : tuple of str
        The panel's gene names, in column order.
    prior : numpy.ndarray
        The programmes' correlation matrix ``R``, shape (8, 8).
    loadings : numpy.ndarray
        Gene x programme loadings ``L``, shape (300, 8): expression = offset + scale * (L z + noise).
    gene_noise : numpy.ndarray
        Each gene's noise sd, relative to its programme signal.
    modules : list of numpy.ndarray
        Each programme's member genes (never published).
    public_sets : dict of str to tuple of str
        The curated gene sets: partial, noisy views of the modules, and decoys.
    thresholds : tuple of float
        Cut points of the latent score between the four classes (population quantiles).
    """

    genes: tuple[str, ...]
    prior: np.ndarray
    loadings: np.ndarray
    gene_offset: np.ndarray
    gene_scale: np.ndarray
    gene_noise: np.ndarray
    modules: list[np.ndarray]
    public_sets: dict[str, tuple[str, ...]]
    thresholds: tuple[float, ...] = ()


#: The score: main effects of the programmes, and each modifier's change of them.
MAIN = np.array([1.1, 0.15, -0.8, 0.25, 0.5, 0.6, 0.0, 0.0])
IN_MEN = np.array([0.0, 1.1, 0, 0, 0, 0, 0, 0])             # complement acts in men
IN_JO1 = np.array([0, 0, 0, 0.9, 0, 0, 0, 0])               # fibrosis with anti-Jo1 (lung disease)
PER_DOSE = np.array([-0.55, 0, 0, 0, 0, 0, 0, 0])           # per sd of log1p(dose): dampens interferon
PER_AGE = np.array([0, 0, 0.5, 0, 0, 0, 0, 0])              # per sd of age: regeneration fails
ANTIBODY_EFFECT = np.array([0.2, -0.6, 0.5, 0.0])
AGE_EFFECT, DOSE_EFFECT = 0.25, -0.35
#: The score's own noise sd: seronegative patients are a mixed group, so their course is less certain.
NOISE_SD = np.array([0.2, 0.2, 0.2, 0.45])
AGE_MEAN, AGE_SD = 52.0, 14.0
DOSE_LOG_MEAN, DOSE_LOG_SD = 1.9, 1.3   # moments of log1p(dose) in the population (Monte Carlo)


@lru_cache(maxsize=1)
def myopathy() -> Myopathy:
    """The disease's structure (fixed: drawn from seed 11)."""
    rng = np.random.default_rng(11)
    genes = _gene_names(rng)
    prior = np.eye(N_PROGRAMMES)
    for (a, b), r in {(0, 1): 0.5, (0, 4): 0.3, (2, 3): -0.35, (1, 6): 0.25}.items():
        prior[a, b] = prior[b, a] = r
    loadings = np.zeros((N_GENES, N_PROGRAMMES))
    members = rng.permutation(N_GENES)[:190]
    primary = np.arange(len(members)) % N_PROGRAMMES
    loadings[members, primary] = rng.uniform(1.3, 2.2, len(members)) * rng.choice([1, -1], len(members),
                                                                                   p=[0.75, 0.25])
    shared = members[rng.random(len(members)) < 0.2]
    loadings[shared, rng.integers(0, N_PROGRAMMES, len(shared))] += rng.uniform(0.3, 0.6, len(shared))
    modules = [np.flatnonzero(loadings[:, p] != 0) for p in range(N_PROGRAMMES)]
    base = Myopathy(genes=genes, prior=prior, loadings=loadings, gene_offset=rng.uniform(3.0, 11.0, N_GENES),
                    gene_scale=rng.uniform(0.3, 0.7, N_GENES), gene_noise=rng.uniform(0.8, 1.6, N_GENES),
                    modules=modules, public_sets=_public_sets(genes, modules, rng))
    score = _population_score(base, 400_000, np.random.default_rng(12))
    cuts = np.quantile(score, np.cumsum(CLASS_SHARES)[:-1])
    return Myopathy(**{**base.__dict__, "thresholds": tuple(map(float, cuts))})


def _gene_names(rng: np.random.Generator) -> tuple[str, ...]:
    """300 distinct symbol-like names: three or four letters and a digit or letter."""
    letters = np.array(list("ABCDEFGHIKLMNPRSTVWXYZ"))
    names: list[str] = []
    while len(names) < N_GENES:
        name = "tx_" + "".join(rng.choice(letters, rng.integers(3, 5))) + rng.choice(list("123456789AB"))
        if name not in names:
            names.append(name)
    return tuple(names)


def _public_sets(genes: tuple[str, ...], modules: list[np.ndarray], rng: np.random.Generator
                 ) -> dict[str, tuple[str, ...]]:
    """Two curated views of each programme (60 % of its genes and 25 % unrelated ones) and decoys,
    in an order that says nothing about the programmes."""
    sets = []
    for s in range(N_PUBLIC_SETS):
        if s < 2 * N_PROGRAMMES:
            module = modules[s % N_PROGRAMMES]
            kept = rng.choice(module, size=int(round(0.6 * len(module))), replace=False)
            extra = rng.choice(N_GENES, size=int(round(0.25 * len(module))), replace=False)
            members = np.union1d(kept, extra)
        else:
            members = rng.choice(N_GENES, size=int(rng.integers(10, 30)), replace=False)
        sets.append(tuple(genes[g] for g in np.sort(members)))
    order = rng.permutation(N_PUBLIC_SETS)
    return {f"MYO_{i:02d}": sets[j] for i, j in enumerate(order)}


def myopathy_gene_sets() -> dict[str, list[str]]:
    """The public gene-set database for this panel (gene names per set)."""
    return {name: list(genes) for name, genes in myopathy().public_sets.items()}


@dataclass(frozen=True)
class _Patients:
    """Latent programmes and the modifiers, in the score's units."""

    z: np.ndarray
    male: np.ndarray
    antibody: np.ndarray   # index into ANTIBODIES
    age: np.ndarray        # years
    dose: np.ndarray       # prednisone mg/day


def _draw_patients(truth: Myopathy, n: int, rng: np.random.Generator, external: bool) -> _Patients:
    z = rng.multivariate_normal(np.zeros(N_PROGRAMMES), truth.prior, size=n, method="cholesky")
    if external:  # another centre: sicker and more anti-Jo1 patients, treated harder
        z[:, 0] += 0.4
        antibody = rng.choice(4, size=n, p=[0.45, 0.15, 0.15, 0.25])
        on_steroids = rng.random(n) < 0.85
    else:
        antibody = rng.choice(4, size=n, p=[0.3, 0.2, 0.2, 0.3])
        on_steroids = rng.random(n) < 0.7
    dose = np.round(np.where(on_steroids, np.exp(rng.normal(np.log(15.0), 0.6, n)), 0.0), 1)
    age = np.round(np.clip(rng.normal(AGE_MEAN, AGE_SD, n), 18, 90), 1)  # as the table has them
    return _Patients(z, rng.random(n) < 0.35, antibody, age, dose)


def _modifiers(male: np.ndarray, antibody: np.ndarray, age: np.ndarray, dose: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each record's programme weights (n, 8), the rest of its score's mean (n,), its noise sd (n,)."""
    u_age = (age - AGE_MEAN) / AGE_SD
    u_dose = (np.log1p(dose) - DOSE_LOG_MEAN) / DOSE_LOG_SD
    jo1 = antibody == ANTIBODIES.index("anti-Jo1")
    weights = (MAIN + np.outer(male, IN_MEN) + np.outer(jo1, IN_JO1) + np.outer(u_dose, PER_DOSE)
               + np.outer(u_age, PER_AGE))
    offset = ANTIBODY_EFFECT[antibody] + AGE_EFFECT * u_age + DOSE_EFFECT * u_dose
    return weights, offset, NOISE_SD[antibody]


def _score(patients: _Patients, rng: np.random.Generator) -> np.ndarray:
    weights, offset, noise = _modifiers(patients.male, patients.antibody, patients.age, patients.dose)
    return np.einsum("nk,nk->n", weights, patients.z) + offset + noise * rng.standard_normal(len(offset))


def _population_score(truth: Myopathy, n: int, rng: np.random.Generator) -> np.ndarray:
    return _score(_draw_patients(truth, n, rng, external=False), rng)


def _observations(truth: Myopathy) -> tuple[np.ndarray, np.ndarray]:
    """The observed values' loadings on the programmes in standard units, shape (n_obs, 8), and their
    noise variances: genes, then the MMT-8 score, then the logarithms of the laboratory values."""
    labs = np.zeros((len(LABS), N_PROGRAMMES))
    for i, (_, _, loads) in enumerate(LABS.values()):
        for k, w in loads.items():
            labs[i, k] = w
    mmt8 = np.zeros((1, N_PROGRAMMES))
    for k, w in MMT8[1].items():
        mmt8[0, k] = w
    load = np.vstack([truth.loadings, mmt8, labs])
    noise = np.concatenate([truth.gene_noise ** 2, [MMT8[2] ** 2], [sd ** 2 for _, sd, _ in LABS.values()]])
    return load, noise


def _table(truth: Myopathy, patients: _Patients, rng: np.random.Generator, batch: np.ndarray) -> pd.DataFrame:
    """The observed columns of ``patients`` (without id and label)."""
    n = len(patients.age)
    load, noise_var = _observations(truth)
    observed = patients.z @ load.T + rng.standard_normal((n, len(noise_var))) * np.sqrt(noise_var)
    genes = truth.gene_offset + batch + truth.gene_scale * observed[:, :N_GENES]
    mmt8 = MMT8[0] + observed[:, N_GENES]
    log_labs = np.array([m for m, _, _ in LABS.values()]) + observed[:, N_GENES + 1:]
    table = pd.DataFrame({"sex": np.asarray(SEX)[patients.male.astype(int)],
                          "antibody": np.asarray(ANTIBODIES)[patients.antibody],
                          "age_years": patients.age, "bmi": np.round(rng.normal(25.5, 4.5, n), 1),
                          "prednisone_mg_day": patients.dose, "mmt8_score": mmt8})
    table = pd.concat([table, pd.DataFrame(np.exp(log_labs), columns=list(LABS)),
                       pd.DataFrame(genes.astype(np.float32), columns=list(truth.genes))], axis=1)
    return table


def generate_myopathy(seed: int = 0, n_records: int = N_RECORDS, external: bool = False) -> pd.DataFrame:
    """Draw a cohort: ``subject``, sex, antibody, 4 clinical values, 10 laboratory values, 300 genes,
    ``course``.

    Parameters
    ----------
    seed : int
        Seeds the patients: the same seed gives the same table.
    n_records : int
        Records; the foundation's cohort has exactly ``CLASS_SHARES`` of each class.
    external : bool
        A contributor's own cohort from another centre instead: a sicker population with more
        anti-Jo1 patients and more glucocorticoids, another platform (per-gene offsets), class shares
        as they fall.
    """
    truth = myopathy()
    rng = np.random.default_rng(seed)
    batch = (np.random.default_rng(20_000 + seed).normal(0.0, 0.3, N_GENES) if external
             else np.zeros(N_GENES))
    if external:
        patients = _draw_patients(truth, n_records, rng, external=True)
        table = _table(truth, patients, rng, batch)
        table[LABEL] = np.asarray(CLASSES)[np.searchsorted(truth.thresholds, _score(patients, rng))]
    else:
        counts = np.floor(np.array(CLASS_SHARES) * n_records).astype(int)
        counts[0] += n_records - counts.sum()
        def draw() -> pd.DataFrame:
            patients = _draw_patients(truth, 4 * n_records, rng, external=False)
            frame = _table(truth, patients, rng, batch)
            frame[LABEL] = np.asarray(CLASSES)[np.searchsorted(truth.thresholds, _score(patients, rng))]
            return frame

        table = with_class_counts(draw, LABEL, dict(zip(CLASSES, map(int, counts), strict=True)), seed)
    table.insert(0, ID, [f"M{seed:03d}-{i:05d}" for i in range(len(table))])
    return table


def true_posterior(frame: pd.DataFrame) -> np.ndarray:
    """``P(course | record)`` of foundation-centre records, exactly.

    Given the genes, the MMT-8 score and the logarithms of the laboratory values, the programmes
    are Gaussian, ``z | x ~ N(mu, S)`` with ``S = (R^-1 + A' D^-1 A)^-1``; given the modifiers the
    score is linear in ``z`` plus Gaussian noise, so it is Gaussian, and each class's probability
    is its mass between two cut points.

    Returns
    -------
    numpy.ndarray
        Shape (n_records, 4), columns in ``CLASSES`` order; rows sum to 1.
    """
    truth = myopathy()
    load, noise_var = _observations(truth)
    genes = (frame[list(truth.genes)].to_numpy(float) - truth.gene_offset) / truth.gene_scale
    mmt8 = frame["mmt8_score"].to_numpy(float) - MMT8[0]
    log_labs = np.log(frame[list(LABS)].to_numpy(float)) - np.array([m for m, _, _ in LABS.values()])
    observed = np.column_stack([genes, mmt8, log_labs])
    cov = np.linalg.inv(np.linalg.inv(truth.prior) + load.T @ (load / noise_var[:, None]))
    mu = (observed / noise_var) @ load @ cov
    antibody = pd.Categorical(frame["antibody"], categories=ANTIBODIES).codes
    weights, offset, noise = _modifiers((frame["sex"] == "M").to_numpy(), antibody,
                                        frame["age_years"].to_numpy(float),
                                        frame["prednisone_mg_day"].to_numpy(float))
    mean = np.einsum("nk,nk->n", weights, mu) + offset
    sd = np.sqrt(np.einsum("nk,kl,nl->n", weights, cov, weights) + noise ** 2)
    cdf = np.column_stack([np.zeros(len(mean)), *(norm.cdf((c - mean) / sd) for c in truth.thresholds),
                           np.ones(len(mean))])
    return np.diff(cdf, axis=1)
