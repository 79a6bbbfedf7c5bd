"""A second cohort, shaped as another foundation's registry export: the tests' proof that nothing
downstream of the data dictionary assumes the demo's shape.

Its patients are the demo disease's (``synthetic.disease``), so what is learnable is known, but
everything a file shows is different: Ensembl-style gene ids on a 20,000-gene panel (the demo's 200
informative genes spread among noise genes), clinical variables under their own names, no signature
scores, other categorical columns and levels (one more: the recruiting site), other class names
(``stable`` < ``slow decline`` < ``rapid decline``) under another label and id column, ten times the
records, and missing cells in five laboratory values and in the onset group. Its dictionary is
``conf/dictionary/registry.yaml``; ``registry_gene_sets`` is the public gene-set database in its
gene ids (what a contributor would download for this panel).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from contract.schema import CLINICAL_COLUMNS, GENE_COLUMNS, LABEL_COLUMN
from synthetic.disease import CLASS_COUNTS, generate_cohort, public_gene_sets

N_RECORDS = 6_400
N_GENES = 20_000
ID, LABEL = "record_id", "outcome"
CLASSES = {"Slow": "stable", "Medium": "slow decline", "Fast": "rapid decline"}
#: The demo's clinical_0..28 under a registry's names (the first four carry the disease's effects).
LABS = ("disease_stage", "functional_score", "six_minute_walk_m", "treatment_lines", "age_years", "bmi",
        "ck_u_l", "nfl_pg_ml", "creatinine_umol_l", "fvc_percent", "grip_kg", "alt_u_l", "ast_u_l",
        "ldh_u_l", "myoglobin_ng_ml", "troponin_ng_l", "crp_mg_l", "vitd_nmol_l", "hb_g_dl",
        "platelets_g_l", "wbc_g_l", "sodium_mmol_l", "potassium_mmol_l", "glucose_mmol_l",
        "hba1c_percent", "cholesterol_mmol_l", "tsh_mu_l", "cortisol_nmol_l", "igf1_ng_ml")
#: Laboratory values a registry often lacks for a visit.
SPARSE_LABS = ("ck_u_l", "nfl_pg_ml", "creatinine_umol_l", "myoglobin_ng_ml", "troponin_ng_l")
SEX = {"female": "F", "male": "M"}
ONSET = {"childhood": "early", "juvenile": "juvenile", "adult": "late"}
SITES = ("north", "south", "east", "west")
#: The panel's layout is the platform's, the same for every draw of patients.
_PLATFORM_SEED = 2026


def gene_id(position: int) -> str:
    """The panel's gene at ``position``: ``ENSG00000000042``."""
    return f"ENSG{position:011d}"


def _layout(n_genes: int) -> dict[str, int]:
    """Where the demo's genes sit on a panel of ``n_genes`` (fixed by the platform): all 200 spread
    over a larger panel; on a smaller one, its first ``n_genes`` and nothing else."""
    if n_genes < len(GENE_COLUMNS):
        return {gene: i for i, gene in enumerate(GENE_COLUMNS[:n_genes])}
    rng = np.random.default_rng(_PLATFORM_SEED)
    positions = np.sort(rng.choice(n_genes, len(GENE_COLUMNS), replace=False))
    return dict(zip(GENE_COLUMNS, map(int, positions), strict=True))


def generate_registry(seed: int = 0, n_records: int = N_RECORDS, n_genes: int = N_GENES,
                      missing_share: float = 0.08) -> pd.DataFrame:
    """Draw the registry's table: ``record_id``, ``site``, ``sex_at_birth``, 29 laboratory and
    clinical values, ``n_genes`` gene ids (float32), ``onset_group``, ``outcome``.

    Parameters
    ----------
    seed : int
        Seeds the patients and which cells are missing.
    n_records : int
        Records, in the demo's class proportions.
    n_genes : int
        Genes on the panel (fewer than 200: only the first of the demo's informative genes).
    missing_share : float
        Share of missing cells in each of ``SPARSE_LABS``; half of it in ``onset_group``.
    """
    return next(registry_parts(seed, n_records, n_genes, missing_share, part_records=n_records))


def write_registry(path: str | Path, seed: int = 0, n_records: int = N_RECORDS, n_genes: int = N_GENES,
                   missing_share: float = 0.08, part_records: int = 4_096) -> None:
    """Write ``generate_registry``'s table to a Parquet file a row group at a time: the same records,
    in the memory of one part (100,000 x 20,000 is 8 GB of genes)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer = None
    try:
        for part in registry_parts(seed, n_records, n_genes, missing_share, part_records):
            if writer is None:
                schema = pa.Schema.from_pandas(part, preserve_index=False).set(
                    part.columns.get_loc("onset_group"), pa.field("onset_group", pa.string()))
                writer = pq.ParquetWriter(path, schema)
            writer.write_table(pa.Table.from_pandas(part, schema=schema, preserve_index=False))
    finally:
        if writer is not None:
            writer.close()


def registry_parts(seed: int, n_records: int, n_genes: int, missing_share: float,
                   part_records: int) -> Iterator[pd.DataFrame]:
    """``generate_registry``'s table, ``part_records`` rows at a time (the same rows for any part size:
    the genes' noise is drawn in row order)."""
    shares = np.array([CLASS_COUNTS[c] for c in CLASSES], float) / sum(CLASS_COUNTS.values())
    counts = np.floor(shares * n_records).astype(int)
    counts[0] += n_records - counts.sum()
    base = generate_cohort(seed, dict(zip(CLASSES, map(int, counts), strict=True)))
    layout = _layout(n_genes)
    platform = np.random.default_rng(_PLATFORM_SEED + 1)
    offsets = platform.uniform(2.0, 10.0, n_genes).astype(np.float32)
    rng, noise = np.random.default_rng(seed + 7_000), np.random.default_rng(seed + 7_001)
    labs = base[list(CLINICAL_COLUMNS)].set_axis(list(LABS), axis=1)
    for column in SPARSE_LABS:
        labs.loc[rng.random(n_records) < missing_share, column] = np.nan
    onset = base["onset"].map(ONSET)
    onset[rng.random(n_records) < missing_share / 2] = None
    front = pd.concat([pd.DataFrame({ID: [f"R{seed:02d}{i:06d}" for i in range(n_records)],
                                     "site": rng.choice(SITES, n_records),
                                     "sex_at_birth": base["sex"].map(SEX)}), labs], axis=1)
    back = pd.DataFrame({"onset_group": onset, LABEL: base[LABEL_COLUMN].map(CLASSES)})
    informative = base[list(layout)].to_numpy(np.float32)
    names = [gene_id(p) for p in range(n_genes)]
    for start in range(0, n_records, part_records):
        rows = slice(start, min(start + part_records, n_records))
        size = rows.stop - rows.start
        genes = noise.standard_normal((size, n_genes), dtype=np.float32) * np.float32(0.6) + offsets
        genes[:, list(layout.values())] = informative[rows]
        yield pd.concat([front.iloc[rows].reset_index(drop=True),
                         pd.DataFrame(genes, columns=names, copy=False),
                         back.iloc[rows].reset_index(drop=True)], axis=1)


def registry_gene_sets(n_genes: int = N_GENES) -> dict[str, list[str]]:
    """The public gene-set database in the panel's gene ids (sets of at least 2 genes on it)."""
    layout = _layout(n_genes)
    sets = {name: [gene_id(layout[g]) for g in genes if g in layout]
            for name, genes in public_gene_sets().items()}
    return {name: genes for name, genes in sets.items() if len(genes) >= 2}
