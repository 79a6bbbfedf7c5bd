"""The second synthetic disease (synthetic/myopathy.py): its table fits its own data dictionary, its
laboratory values are lognormal, and its posterior is exact: calibrated overall and inside every
group of the modifiers it claims to account for."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import skew

from client.cohort import load_cohort, validate_frame
from contract.dictionary import DataDictionary
from synthetic.myopathy import (
    ANTIBODIES,
    CLASS_SHARES,
    CLASSES,
    LABEL,
    LABS,
    generate_myopathy,
    myopathy,
    myopathy_gene_sets,
    true_posterior,
)

DICTIONARY = Path(__file__).parents[1] / "conf" / "dictionary" / "myopathy.yaml"


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return generate_myopathy(seed=0)


@pytest.fixture(scope="module")
def large() -> pd.DataFrame:
    return generate_myopathy(seed=12_345, n_records=20_000)


def test_the_table_fits_its_own_dictionary_and_loads_as_a_cohort(frame, tmp_path):
    schema = DataDictionary.from_yaml(DICTIONARY).resolve(list(frame.columns))
    validate_frame(frame, schema)
    assert schema.classes == CLASSES and schema.reported_class == "refractory"
    assert len(schema.groups.gene_columns()) == 300 and not schema.groups.columns(schema.groups.signatures)
    frame.to_csv(tmp_path / "myopathy.csv", index=False)
    cohort = load_cohort(tmp_path / "myopathy.csv", DICTIONARY)
    assert len(cohort.frame) == 640 and cohort.schema == schema


def test_class_counts_are_exact_and_the_same_seed_gives_the_same_table(frame):
    expected = np.floor(np.array(CLASS_SHARES) * 640).astype(int)
    expected[0] += 640 - expected.sum()
    assert frame[LABEL].value_counts().reindex(CLASSES).tolist() == expected.tolist()
    pd.testing.assert_frame_equal(generate_myopathy(seed=0), frame)
    assert not generate_myopathy(seed=1)[list(LABS)].equals(frame[list(LABS)])


def test_laboratory_values_are_lognormal(frame):
    for column in ("ck_u_l", "crp_mg_l", "myoglobin_ng_ml"):
        values = frame[column].to_numpy()
        assert (values > 0).all()
        assert skew(values) > 2 and abs(skew(np.log(values))) < 0.3


def test_public_gene_sets_are_partial_views_of_the_programmes():
    truth = myopathy()
    modules = [{truth.genes[g] for g in m} for m in truth.modules]
    sets = myopathy_gene_sets()
    best = [max(len(set(genes) & m) / len(genes) for m in modules) for genes in sets.values()]
    assert len(sets) == 36 and sum(b > 0.6 for b in best) == 16   # two views of each of 8 programmes
    assert max(best) < 1.0                                         # none is a true module


def test_the_posterior_is_calibrated_overall_and_in_every_modifier_group(large):
    """Mean predicted probability = observed frequency, in the whole draw and within each sex and
    antibody group (where the score's weights and noise differ): a posterior that left out a modifier
    would miss in its groups."""
    posterior = true_posterior(large)
    np.testing.assert_allclose(posterior.sum(axis=1), 1.0, atol=1e-9)
    observed = pd.get_dummies(pd.Categorical(large[LABEL], categories=CLASSES)).to_numpy(float)
    groups = {"all": np.ones(len(large), bool)}
    groups |= {f"sex={s}": (large["sex"] == s).to_numpy() for s in ("F", "M")}
    groups |= {f"antibody={a}": (large["antibody"] == a).to_numpy() for a in ANTIBODIES}
    for name, rows in groups.items():
        predicted, seen = posterior[rows].mean(axis=0), observed[rows].mean(axis=0)
        tolerance = 4 * np.sqrt(seen * (1 - seen) / rows.sum()) + 0.005
        assert (np.abs(predicted - seen) < tolerance).all(), (name, predicted.round(3), seen.round(3))
    top = posterior.max(axis=1) > 0.9                       # confident predictions are right that often
    assert (posterior.argmax(axis=1) == observed.argmax(axis=1))[top].mean() > 0.9


def test_the_external_centre_is_another_population(frame):
    external = generate_myopathy(seed=3, n_records=3_000, external=True)
    assert list(external.columns) == list(frame.columns)
    shares = external[LABEL].value_counts(normalize=True).reindex(CLASSES).to_numpy()
    assert np.abs(shares - np.array(CLASS_SHARES)).max() > 0.03
    assert (external["antibody"] == "anti-Jo1").mean() > 0.4 > (frame["antibody"] == "anti-Jo1").mean()
