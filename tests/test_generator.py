"""The synthetic cohort generator (synthetic/disease.py)."""

from __future__ import annotations

import pandas as pd
import pytest

from client.cohort import validate_frame
from contract.schema import CATEGORICAL_LEVELS, SCHEMA
from synthetic.disease import generate_cohort


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


def test_the_true_posterior_is_a_distribution_and_beats_every_model(cohort_frame):
    """The Bayes-optimal classifier is the ceiling: on a large draw it beats a model fitted
    on many more records than the cohort has, and the curated gene sets' view of the genes."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score

    from models.pipeline import FeaturePipeline, FeatureSpec
    from synthetic.disease import generate_cohort as draw
    from synthetic.disease import public_gene_sets, true_posterior

    posterior = true_posterior(cohort_frame)
    assert posterior.shape == (640, 3)
    np.testing.assert_allclose(posterior.sum(axis=1), 1.0)
    assert (posterior >= 0).all()

    def labels(frame):
        return SCHEMA.label_indices(frame["progression"])

    train = draw(seed=11, class_counts={"Slow": 700, "Medium": 630, "Fast": 670})
    test = draw(seed=12, class_counts={"Slow": 700, "Medium": 630, "Fast": 670})
    bayes = f1_score(labels(test), true_posterior(test).argmax(axis=1), average="macro")
    assert bayes > 0.88
    raw = FeatureSpec()
    gene_sets = FeatureSpec(gene_sets={k: tuple(v) for k, v in public_gene_sets().items()},
                            raw=("clinical", "signature"), interaction_left="gene_sets",
                            interactions=("clinical_0", "clinical_1", "clinical_3"))
    for spec in (raw, gene_sets):  # raw features, and the curated sets with interactions
        pipeline = FeaturePipeline(spec, SCHEMA.numeric, SCHEMA.categorical).fit(train)
        model = LogisticRegression(C=0.1, max_iter=3000).fit(pipeline.transform(train), labels(train))
        fitted = f1_score(labels(test), model.predict(pipeline.transform(test)), average="macro")
        assert bayes > fitted + 0.03


def test_classes_are_ordinal_in_the_posterior(cohort_frame):
    """Expected class index under the posterior rises from Slow to Fast records."""
    import numpy as np

    from synthetic.disease import true_posterior

    expected = true_posterior(cohort_frame) @ np.arange(3)
    by_class = cohort_frame.assign(e=expected).groupby("progression")["e"].mean()
    assert by_class["Slow"] < by_class["Medium"] < by_class["Fast"]


def test_signatures_are_means_of_public_gene_sets(cohort_frame):
    """Each signature column is the mean of a published curated gene set; the sets only
    partly overlap the true modules (a noisy prior)."""
    import numpy as np

    from synthetic.disease import disease, public_gene_sets, signature_sets

    sets = public_gene_sets()
    assert len(sets) == 30 and all(len(genes) >= 2 for genes in sets.values())
    for column, name in zip(SCHEMA.numeric[229:], signature_sets(disease(0)), strict=True):
        np.testing.assert_allclose(cohort_frame[column], cohort_frame[sets[name]].mean(axis=1))
    modules = [set(f"gene_{g}" for g in m) for m in disease(0).modules]
    best_overlap = [max(len(set(genes) & m) / len(set(genes) | m) for m in modules)
                    for genes in sets.values()]
    assert max(best_overlap) < 0.9  # no curated set is a true module


def test_external_cohort_has_the_schema_and_a_site_shift(cohort_frame):
    import numpy as np

    from synthetic.disease import EXTERNAL, generate_external_cohort

    external = generate_external_cohort(seed=1, n_records=1000)
    validate_frame(external)
    assert len(external) == 1000
    shares = external["progression"].value_counts(normalize=True)
    assert abs(shares["Slow"] - EXTERNAL.class_shares[0]) < 0.01
    genes = list(SCHEMA.numeric[:200])
    shift = external[genes].mean().to_numpy() - cohort_frame[genes].mean().to_numpy()
    assert np.abs(shift).mean() > 0.1  # the other site's platform moves the genes
    assert external["clinical_0"].mean() > cohort_frame["clinical_0"].mean()  # sicker patients
