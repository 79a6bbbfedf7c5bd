"""Permutation importance on the node, on tiny synthetic holdouts with known answers."""

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score

from client.importance import (
    Importance,
    column_groups,
    importance_figure,
    importance_table,
    permutation_importance,
    single_feature_groups,
)
from models.columns import ColumnGroups

NUMERIC = ["gene_0", "gene_1", "gene_2", "gene_3", "clinical_0", "clinical_1", "signature_0"]


def _records(n: int, rng: np.random.Generator) -> pd.DataFrame:
    """Records whose class is set by gene_0 alone; every other column is noise."""
    frame = pd.DataFrame(rng.normal(size=(n, len(NUMERIC))), columns=NUMERIC)
    frame.insert(0, "patient_id", [f"p{i}" for i in range(n)])
    frame["sex"] = rng.choice(["female", "male"], n)
    frame["progression"] = np.array(["Slow", "Medium", "Fast"])[np.digitize(frame["gene_0"], [-0.5, 0.5])]
    return frame


def _inputs(frame: pd.DataFrame) -> np.ndarray:
    """The model's inputs: numeric columns and sex as 0/1."""
    return np.column_stack([frame[NUMERIC].to_numpy(), (frame["sex"] == "male").to_numpy()])


CLASSES = ["Slow", "Medium", "Fast"]


def _labels(frame: pd.DataFrame) -> np.ndarray:
    return frame["progression"].map({c: i for i, c in enumerate(CLASSES)}).to_numpy()


def importance(predict, holdout, groups, **kwargs):
    return permutation_importance(predict, holdout, _labels(holdout), 3, groups, **kwargs)


@pytest.fixture(scope="module")
def holdout_and_score():
    """A 400-record holdout, and a logistic model fitted on separate records (class indices)."""
    rng = np.random.default_rng(0)
    train = _records(2000, rng)
    model = LogisticRegression(C=100.0, max_iter=5000).fit(_inputs(train), _labels(train))

    def predict(frame: pd.DataFrame) -> np.ndarray:
        return model.predict(_inputs(frame))

    return _records(400, rng), predict


def test_a_label_set_by_one_column_makes_that_column_important_and_noise_not(holdout_and_score):
    holdout, score = holdout_and_score
    assert f1_score(_labels(holdout), score(holdout), average="macro") > 0.9
    importances = importance(score, holdout, single_feature_groups(holdout.columns), seed=0)
    assert set(importances) == set(NUMERIC) | {"sex"}
    assert importances["gene_0"].mean > 0.4
    for noise in set(importances) - {"gene_0"}:
        assert abs(importances[noise].mean) < 0.03, noise
        assert importances[noise].sd < 0.03, noise


def test_the_groups_holding_the_deciding_column_are_important_and_the_others_not(holdout_and_score):
    holdout, score = holdout_and_score
    gene_sets = {"signal": ["gene_0", "gene_2"], "noise": ["gene_1", "gene_3"]}
    groups = column_groups(holdout.columns, gene_sets)
    importances = importance(score, holdout, groups, seed=0, repeats=3)
    for important in ("gene", "set:signal"):
        assert importances[important].mean > 0.4, important
    for noise in ("clinical", "signature", "sex", "set:noise"):
        assert abs(importances[noise].mean) < 0.03, noise


def test_a_group_is_permuted_jointly_and_nothing_else_moves():
    n = 50
    frame = pd.DataFrame({"gene_0": np.arange(n, dtype=float), "clinical_0": np.arange(n) * 10,
                          "signature_0": np.arange(n) * 0.5,
                          "sex": pd.Categorical(np.where(np.arange(n) % 2, "male", "female"))})
    frame["gene_1"] = frame["gene_0"] + 1000.0
    original = frame.copy()
    seen: list[pd.DataFrame] = []

    def predict(permuted: pd.DataFrame) -> np.ndarray:
        seen.extend(permuted.iloc[i:i + n].reset_index(drop=True) for i in range(0, len(permuted), n))
        return np.zeros(len(permuted), dtype=int)

    permutation_importance(predict, frame, np.zeros(n, dtype=int), 3,
                           {"pair": ["gene_0", "gene_1", "sex"]}, seed=3, repeats=4)
    pd.testing.assert_frame_equal(frame, original)
    pd.testing.assert_frame_equal(seen[0], original)  # the baseline
    for permuted in seen[1:]:
        assert (permuted["gene_1"] - permuted["gene_0"] == 1000.0).all()  # records kept whole
        assert (permuted["sex"] == np.where(permuted["gene_0"] % 2, "male", "female")).all()
        assert not permuted["gene_0"].equals(original["gene_0"])  # but moved
        assert sorted(permuted["gene_0"]) == sorted(original["gene_0"])
        pd.testing.assert_frame_equal(permuted[["clinical_0", "signature_0"]],
                                      original[["clinical_0", "signature_0"]])
        pd.testing.assert_series_equal(permuted.dtypes, original.dtypes)


def test_the_same_seed_gives_the_same_importances(holdout_and_score):
    holdout, score = holdout_and_score
    groups = {"gene_0": ["gene_0"], "noise": ["gene_1", "clinical_0"]}
    first = importance(score, holdout, groups, seed=7, repeats=3)
    assert importance(score, holdout, groups, seed=7, repeats=3) == first
    assert importance(score, holdout, groups, seed=8, repeats=3) != first


def test_column_groups_are_the_dictionarys_groups_then_categoricals_then_gene_sets():
    columns = ["patient_id", "gene_0", "gene_1", "clinical_0", "signature_0", "signature_1",
               "sex", "onset", "progression"]
    assert column_groups(columns, {"pathway": ["gene_1"]}) == {  # the demo's groups, by prefix
        "gene": ["gene_0", "gene_1"], "clinical": ["clinical_0"],
        "signature": ["signature_0", "signature_1"], "sex": ["sex"], "onset": ["onset"],
        "set:pathway": ["gene_1"],
    }
    assert column_groups(["gene_0", "sex"]) == {"gene": ["gene_0"], "sex": ["sex"]}
    assert single_feature_groups(columns) == {c: [c] for c in columns[1:-1]}
    # another cohort's dictionary: its own names, no prefix convention
    other = ColumnGroups({"DMD": "transcripts", "UTRN": "transcripts", "ck_u_l": "labs"}, genes="transcripts")
    assert column_groups(["id", "DMD", "ck_u_l", "UTRN", "sex"], {"dystrophin": ["DMD", "UTRN"]},
                         groups=other, exclude=("id",)) == {
        "transcripts": ["DMD", "UTRN"], "labs": ["ck_u_l"], "sex": ["sex"], "set:dystrophin": ["DMD", "UTRN"]}
    with pytest.raises(ValueError, match="not a gene column"):
        column_groups(["DMD", "ck_u_l"], {"bad": ["DMD", "ck_u_l"]}, groups=other)


@pytest.mark.parametrize("gene_set", [[], ["gene_9"], ["clinical_0"]])
def test_a_gene_set_must_name_gene_columns_of_the_frame(gene_set):
    with pytest.raises(ValueError, match="gene set 'bad'"):
        column_groups(["gene_0", "clinical_0"], {"bad": gene_set})


@pytest.mark.parametrize(("groups", "repeats", "rule"), [
    ({"g": ["gene_9"]}, 1, "lacks"),
    ({"g": []}, 1, "empty"),
    ({"g": ["gene_0", "progression"]}, 1, "label column"),
    ({"g": ["gene_0"]}, 0, "repeats"),
])
def test_bad_groups_and_repeats_are_refused_before_any_scoring(groups, repeats, rule):
    frame = pd.DataFrame({"gene_0": [0.25, 0.5], "progression": ["Slow", "Fast"]})

    def predict(permuted: pd.DataFrame) -> np.ndarray:
        raise AssertionError("scored before the inputs were checked")

    with pytest.raises(ValueError, match=rule) as error:
        permutation_importance(predict, frame, np.array([0, 2]), 3, groups, seed=0, repeats=repeats)
    assert "0.25" not in str(error.value) and "Slow" not in str(error.value)


def test_the_table_is_sorted_by_mean_and_the_figure_shows_the_top_bars():
    importances = {"a": Importance(0.1, 0.01), "b": Importance(0.3, 0.02), "c": Importance(-0.01, 0.0)}
    table = importance_table(importances)
    assert list(table.columns) == ["feature", "mean", "sd"]
    assert list(table["feature"]) == ["b", "a", "c"] and table["sd"].iloc[0] == 0.02
    figure = importance_figure(table, top=2)
    assert isinstance(figure, Figure)
    axes = figure.axes[0]
    assert [label.get_text() for label in axes.get_yticklabels()] == ["a", "b"]  # largest on top
    assert len(axes.patches) == 2
    assert importance_table({}).empty
    with pytest.raises(ValueError, match="top"):
        importance_figure(table, top=0)


def test_stacking_groups_in_batches_changes_nothing(holdout_and_score):
    holdout, predict = holdout_and_score
    groups = single_feature_groups(holdout.columns)
    assert (importance(predict, holdout, groups, seed=4, repeats=2, batch=3)
            == importance(predict, holdout, groups, seed=4, repeats=2, batch=64))
