"""A synthetic cohort in any published shape: what a contributor develops against locally.

A foundation publishes its cohort's schema (``cohortfl schema --json``: names, groups, levels,
classes, which columns may be missing; never a value). ``draw_shaped`` draws a table with exactly
those columns, levels and classes, so that a package can be tried end to end before it is sent,
with ``cohortfl synthesize``. Its values say nothing about the foundation's records: they come from
a small generic disease of the same shape,

- ``K`` latent programmes ``z ~ N(0, I)`` (one per ten genes, 2 to 8) drive the genes group, each
  gene loading on one programme or none; every other numeric column is noise around its own level,
  except the first three, which carry the outcome directly;
- the outcome is ordinal in the schema's class order: a score of the first programmes, those three
  columns and the first categorical column's levels, cut at equal shares;
- cells of the columns the schema lets be missing are missing at random (5 %).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from contract.schema import CohortSchema


def draw_shaped(schema: CohortSchema, n_records: int = 640, seed: int = 0,
                missing_share: float = 0.05) -> pd.DataFrame:
    """A table with the schema's columns in its order (``CohortSchema.all_columns``).

    Raises
    ------
    ValueError
        Fewer records than classes, or a missing share outside [0, 0.5].
    """
    if n_records < len(schema.classes):
        raise ValueError(f"at least {len(schema.classes)} records: one per class")
    if not 0 <= missing_share <= 0.5:
        raise ValueError("missing_share must lie in [0, 0.5]")
    rng = np.random.default_rng(seed)
    genes = schema.groups.gene_columns()
    k = int(np.clip(len(genes) // 10, 2, 8))
    z = rng.standard_normal((n_records, k))
    columns: dict[str, np.ndarray] = {}
    if genes:
        programme = rng.integers(-1, k, len(genes))  # -1: in no programme
        loading = np.where(programme >= 0, rng.uniform(1.0, 2.0, len(genes)), 0.0)
        signal = z[:, np.clip(programme, 0, None)] * loading
        values = rng.uniform(3, 10, len(genes)) + 0.5 * (signal + rng.standard_normal(signal.shape))
        columns.update(zip(genes, values.T.astype(np.float32), strict=True))
    others = [c for c in schema.numeric if c not in set(genes)]
    for column in others:
        columns[column] = rng.uniform(-5, 50) + rng.uniform(1, 10) * rng.standard_normal(n_records)
    score = z[:, :2].sum(axis=1) + 0.3 * rng.standard_normal(n_records)
    for i, column in enumerate(others[:3]):
        standard = (columns[column] - columns[column].mean()) / columns[column].std()
        score += (0.8, -0.6, 0.5)[i] * standard
    table = pd.DataFrame(columns)[list(schema.numeric)]
    for i, (column, levels) in enumerate(schema.categorical.items()):
        codes = rng.integers(0, len(levels), n_records)
        if i == 0:
            score += np.linspace(-0.5, 0.5, len(levels))[codes]
        table[column] = np.asarray(levels, dtype=object)[codes]
    cuts = np.quantile(score, np.arange(1, len(schema.classes)) / len(schema.classes))
    labels = np.searchsorted(cuts, score)
    labels[:len(schema.classes)] = np.arange(len(schema.classes))  # every class present
    for column in schema.may_be_missing:
        gone = rng.random(n_records) < missing_share
        table[column] = table[column].astype(object if column in schema.categorical else np.float64)
        table.loc[gone, column] = None if column in schema.categorical else np.nan
    table.insert(0, schema.id_column, [f"S{seed:03d}-{i:06d}" for i in range(n_records)])
    table[schema.label_column] = np.asarray(schema.classes, dtype=object)[labels]
    return table[list(schema.all_columns)]
