"""The synthetic cohort generator (client/synthetic.py)."""

from __future__ import annotations

import pandas as pd
import pytest

from client.cohort import validate_frame
from client.schema import CATEGORICAL_LEVELS, SCHEMA
from client.synthetic import generate_cohort


def _columns(frame: pd.DataFrame, prefix: str) -> list[str]:
    return [c for c in frame.columns if c.startswith(prefix)]


def test_shape_and_class_counts(cohort_frame):
    assert len(cohort_frame) == 640
    assert cohort_frame["progression"].value_counts().to_dict() == {
        "Slow": 223, "Medium": 202, "Fast": 215}


def test_column_groups(cohort_frame):
    assert len(_columns(cohort_frame, "gene_")) == 200
    assert len(_columns(cohort_frame, "clinical_")) == 29
    assert len(_columns(cohort_frame, "signature_")) == 21
    categorical = [c for c in cohort_frame.columns if not pd.api.types.is_numeric_dtype(cohort_frame[c])
                   and c not in ("patient_id", "progression")]
    assert categorical == ["sex", "onset"]
    for column, levels in CATEGORICAL_LEVELS.items():
        assert set(cohort_frame[column]) <= set(levels)
    assert list(cohort_frame.columns) == list(SCHEMA.all_columns)


def test_table_is_clean(cohort_frame):
    assert not cohort_frame.isna().any().any()
    assert not cohort_frame.duplicated(subset=list(SCHEMA.feature_columns)).any()
    assert cohort_frame["patient_id"].is_unique
    validate_frame(cohort_frame)


def test_same_seed_gives_the_same_table(cohort_frame):
    pd.testing.assert_frame_equal(generate_cohort(seed=0), cohort_frame)


@pytest.mark.parametrize("seed", [1, 7])
def test_another_seed_gives_another_table(cohort_frame, seed):
    other = generate_cohort(seed=seed)
    numeric = list(SCHEMA.numeric)
    assert not (other[numeric].to_numpy() == cohort_frame[numeric].to_numpy()).all(axis=0).any()
    assert other["progression"].value_counts().to_dict() == {"Slow": 223, "Medium": 202, "Fast": 215}


def test_clinical_columns_vary_more_than_genes(cohort_frame):
    clinical = cohort_frame[_columns(cohort_frame, "clinical_")].var().mean()
    genes = cohort_frame[_columns(cohort_frame, "gene_")].var().mean()
    assert clinical > genes


def test_custom_class_counts_are_exact():
    frame = generate_cohort(seed=3, class_counts={"Slow": 10, "Medium": 20, "Fast": 30})
    assert frame["progression"].value_counts().to_dict() == {"Slow": 10, "Medium": 20, "Fast": 30}
