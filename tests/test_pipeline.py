"""Feature pipelines: the default standardises and one-hot encodes, statistics come from the fit frame
only, gene-set scores and interactions are what they say, and bad specs are refused by rule."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from contract.schema import SCHEMA
from models.genesets import rank_scores
from models.pipeline import FeaturePipeline, FeatureSpec, FeatureSpecError

GENES = [f"gene_{i}" for i in range(12)]
CLINICAL = [f"clinical_{i}" for i in range(3)]
SIGNATURES = [f"signature_{i}" for i in range(2)]
NUMERIC = GENES + CLINICAL + SIGNATURES
LEVELS = {"sex": ("female", "male"), "onset": ("childhood", "juvenile", "adult")}
SETS = {"up": ("gene_0", "gene_1", "gene_2", "gene_3"), "down": ("gene_4", "gene_5", "gene_6")}


def frame(seed: int, n: int = 40) -> pd.DataFrame:
    """A small synthetic cohort with correlated genes, shifted and scaled numeric columns."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, 1))
    values = rng.normal(size=(n, len(NUMERIC))) + latent * np.r_[np.ones(7), np.zeros(len(NUMERIC) - 7)]
    data = pd.DataFrame(values * 2.5 + 4.0, columns=NUMERIC)
    for column, levels in LEVELS.items():
        data[column] = rng.choice(levels, n)
    return data


def pipeline(**spec) -> FeaturePipeline:
    return FeaturePipeline(FeatureSpec(**spec), NUMERIC, LEVELS)


SPECS = {
    "mean": {"gene_sets": SETS, "interactions": ("clinical_0",)},
    "pc1": {"gene_sets": SETS, "gene_set_score": "pc1", "interactions": ("clinical_1",),
            "interaction_left": "gene_sets"},
    "rank": {"gene_sets": SETS, "gene_set_score": "rank", "raw": ("clinical",),
             "interactions": ("clinical_0",), "interaction_left": "gene_sets"},
}


# --- the default pipeline ---------------------------------------------------------------------


def test_default_spec_on_the_cohort_is_its_standardised_columns_then_one_hot(cohort_frame):
    fit, other = cohort_frame.iloc[:400], cohort_frame.iloc[400:]
    default = FeaturePipeline(FeatureSpec(), SCHEMA.numeric, SCHEMA.categorical).fit(fit)
    numeric = fit[list(SCHEMA.numeric)].to_numpy()
    expected = (other[list(SCHEMA.numeric)].to_numpy() - numeric.mean(axis=0)) / numeric.std(axis=0)
    np.testing.assert_allclose(default.transform(other)[:, :250], expected, rtol=1e-5, atol=1e-5)
    assert default.n_features == 255
    assert default.feature_names[:2] == ["gene_0", "gene_1"]
    assert default.feature_names[-5:] == ["sex=female", "sex=male", "onset=childhood", "onset=juvenile",
                                          "onset=adult"]


def test_default_spec_standardises_numeric_then_one_hot():
    fit, other = frame(0), frame(1)
    values = fit[NUMERIC].to_numpy()
    expected = (other[NUMERIC].to_numpy() - values.mean(axis=0)) / values.std(axis=0)
    one_hot = [(other[c] == level).to_numpy() for c, levels in LEVELS.items() for level in levels]
    expected = np.column_stack([expected, *one_hot]).astype(np.float32)
    # float32 arithmetic (the matrix the node keeps is float32): within float32's precision
    np.testing.assert_allclose(pipeline().fit(fit).transform(other), expected, rtol=1e-5, atol=1e-6)


def test_one_hot_levels_are_fixed_not_learned():
    fit = frame(0)
    fit["sex"] = "female"
    x = pipeline().fit(fit).transform(frame(1))
    assert x[:, len(NUMERIC) + 1].sum() > 0  # "sex=male" exists though the fit frame had none


# --- statistics come from the fit frame only ---------------------------------------------------


@pytest.mark.parametrize("kind", SPECS)
def test_transform_depends_on_the_fit_frame_and_never_on_the_frame_it_transforms(kind):
    a, b = frame(0), frame(1)
    fitted = pipeline(**SPECS[kind]).fit(a)
    before = fitted.transform(a)
    other_b = fitted.transform(b)
    fitted.transform(frame(2))
    np.testing.assert_array_equal(fitted.transform(a), before)
    np.testing.assert_array_equal(pipeline(**SPECS[kind]).fit(a).transform(b), other_b)
    changed = pipeline(**SPECS[kind]).fit(frame(3)).transform(b)
    assert not np.allclose(changed, other_b)
    assert before.shape == (len(a), fitted.n_features) and before.dtype == np.float32


@pytest.mark.parametrize("kind", SPECS)
def test_a_records_features_do_not_depend_on_the_other_records_transformed(kind):
    fitted = pipeline(**SPECS[kind]).fit(frame(0))
    b = frame(1)
    alone = fitted.transform(b.iloc[[5]])
    with_others = fitted.transform(pd.concat([frame(2).iloc[:7], b.iloc[[5]]]))[-1:]
    np.testing.assert_array_equal(alone, with_others)


def test_gene_set_scores_are_standardised_on_the_fit_frame():
    a = frame(0)
    fitted = pipeline(**SPECS["pc1"]).fit(a)
    scores = fitted.transform(a)[:, fitted.feature_names.index("set:down")]
    np.testing.assert_allclose([scores.mean(), scores.std()], [0.0, 1.0], atol=1e-5)


def test_pc1_components_are_learned_from_the_fit_frame_and_signed_by_the_mean():
    a = frame(0)
    first = pipeline(**SPECS["pc1"]).fit(a)
    again = pipeline(**SPECS["pc1"]).fit(a.copy())
    other = pipeline(**SPECS["pc1"]).fit(frame(4))
    for name in SETS:
        np.testing.assert_array_equal(first.components_[name], again.components_[name])
        assert not np.allclose(first.components_[name], other.components_[name])
        assert np.linalg.norm(first.components_[name]) == pytest.approx(1.0)
    x = first.transform(a)
    mean = pipeline(gene_sets=SETS).fit(a).transform(a)
    for name in SETS:
        column = first.feature_names.index(f"set:{name}")
        assert np.corrcoef(x[:, column], mean[:, column])[0, 1] > 0.5


# --- rank scores and interactions --------------------------------------------------------------


def test_rank_score_of_a_record_depends_on_that_record_only():
    genes = np.random.default_rng(0).normal(size=(6, 10))
    members = [np.array([0, 3, 4]), np.array([1, 2])]
    scores = rank_scores(genes, members)
    changed = genes.copy()
    changed[1:] = np.random.default_rng(1).normal(size=(5, 10))
    np.testing.assert_array_equal(rank_scores(changed, members)[0], scores[0])
    assert ((scores >= 0) & (scores <= 1)).all()


def test_rank_score_is_one_for_a_records_highest_genes_and_zero_for_its_lowest():
    genes = np.array([[5.0, 4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0, 5.0]])
    scores = rank_scores(genes, [np.array([0, 1])])
    np.testing.assert_array_equal(scores[:, 0], [1.0, 0.0])


@pytest.mark.parametrize("kind", SPECS)
def test_interaction_columns_are_products_of_the_standardised_scores(kind):
    spec = SPECS[kind]
    fitted = pipeline(**spec).fit(frame(0))
    names = fitted.feature_names
    raw = pipeline().fit(frame(0)).transform(frame(1))
    x = fitted.transform(frame(1))
    right = spec["interactions"][0]
    lefts = list(SETS) if spec.get("interaction_left") == "gene_sets" else SIGNATURES
    assert [n for n in names if "*" in n] == [f"{left}*{right}" for left in sorted(lefts)]
    for left in lefts:
        score = x[:, names.index(f"set:{left}")] if left in SETS else raw[:, NUMERIC.index(left)]
        product = score.astype(np.float64) * raw[:, NUMERIC.index(right)]
        np.testing.assert_allclose(x[:, names.index(f"{left}*{right}")], product, rtol=1e-5, atol=1e-6)


def test_a_categorical_level_interacts_as_its_indicator():
    """``sex=male`` gives each set a separate effect in men: the product is the set score in men, 0 in
    women; numeric and categorical modifiers mix in the order declared."""
    fitted = pipeline(gene_sets=SETS, interaction_left="gene_sets",
                      interactions=("sex=male", "clinical_0")).fit(frame(0))
    test = frame(1)
    x, names = fitted.transform(test), fitted.feature_names
    men = (test["sex"] == "male").to_numpy()
    assert 0 < men.sum() < len(test)
    for left in SETS:
        score = x[:, names.index(f"set:{left}")]
        np.testing.assert_array_equal(x[:, names.index(f"{left}*sex=male")], np.where(men, score, 0.0))
    assert [n for n in names if "*" in n] == ["down*sex=male", "down*clinical_0", "up*sex=male",
                                              "up*clinical_0"]


def test_raw_groups_select_the_numeric_columns_kept():
    names = pipeline(raw=("clinical",)).feature_names
    assert names[:3] == CLINICAL and not any(n.startswith(("gene_", "signature_")) for n in names)
    assert pipeline(raw=()).n_features == 5


# --- the spec as JSON, and bad specs -----------------------------------------------------------


@pytest.mark.parametrize("kind", SPECS)
def test_json_round_trip_is_compact_with_sorted_keys(kind):
    spec = FeatureSpec(**SPECS[kind])
    text = spec.to_json()
    assert FeatureSpec.from_json(text) == spec
    assert " " not in text and list(json.loads(text)) == sorted(json.loads(text))
    assert FeatureSpec.from_json("{}") == FeatureSpec()


def test_set_order_does_not_change_the_features():
    reversed_sets = dict(reversed(list(SETS.items())))
    assert pipeline(gene_sets=reversed_sets).feature_names == pipeline(gene_sets=SETS).feature_names


@pytest.mark.parametrize(("text", "match"), [
    ('{"gene_sets": {"s": ["gene_0"]}}', "'s' must hold 2 to 200"),
    ('{"gene_set_score": "median"}', "'gene_set_score' must be one of"),
    ('{"interaction_left": "genes"}', "'interaction_left' must be one of"),
    ('{"colour": 1}', "unknown key 'colour'"),
    ('{"raw": "gene"}', "'raw' must be a list of strings"),
    ('{"interactions": [1]}', "'interactions' must be a list of strings"),
    ('{"gene_sets": ["gene_0", "gene_1"]}', "'gene_sets' must be an object"),
    ('{"gene_sets": {"s": "gene_0,gene_1"}}', "'s' must be a list of gene column names"),
    ('{"gene_sets": {"s": ["gene_0", "gene_0"]}}', "names a gene twice"),
    ('{"gene_sets": {"a*b": ["gene_0", "gene_1"]}}', "names are 1-64"),
    ('{"interactions": ["clinical_0"], "interaction_left": "gene_sets"}', "need gene sets"),
    ("[1, 2]", "a feature spec is a JSON object"),
    ("{not json", "valid JSON"),
])
def test_bad_json_specs_are_refused_naming_the_key_and_rule(text, match):
    with pytest.raises(FeatureSpecError, match=match):
        FeatureSpec.from_json(text)


def test_too_many_sets_are_refused():
    sets = {f"s{i}": ("gene_0", "gene_1") for i in range(201)}
    with pytest.raises(FeatureSpecError, match="at most 200 gene sets"):
        FeatureSpec(gene_sets=sets)


@pytest.mark.parametrize(("spec", "match"), [
    ({"gene_sets": {"s": ("gene_0", "gene_99")}}, "'s' names 1 unknown gene column"),
    ({"gene_sets": {"s": ("gene_0", "clinical_0")}}, "'s' names 1 unknown gene column"),
    ({"interactions": ("clinical_9",)}, "'interactions': 1 name"),
    ({"interactions": ("sex",)}, "neither numeric columns nor categorical levels"),
    ({"interactions": ("sex=other",)}, "neither numeric columns nor categorical levels"),
    ({"raw": ("proteins",)}, "'raw': 'proteins' is not a group of this cohort"),
])
def test_specs_naming_unknown_columns_are_refused_before_fitting(spec, match):
    with pytest.raises(FeatureSpecError, match=match):
        pipeline(**spec).fit(frame(0))
    with pytest.raises(FeatureSpecError, match=match):
        _ = pipeline(**spec).n_features


def test_errors_never_echo_long_values():
    long_name = "x" * 5000
    for text in (json.dumps({long_name: 1}), json.dumps({"gene_sets": {"s": ["gene_0", long_name]}})):
        try:
            FeaturePipeline(FeatureSpec.from_json(text), NUMERIC, LEVELS).fit(frame(0))
        except FeatureSpecError as error:
            assert len(str(error)) < 200
        else:
            pytest.fail("a bad spec was accepted")


# --- declared transforms, fitted on the fit frame only ------------------------------------

def _standard(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    return (values - values.mean()) / values.std()


def test_log1p_rank_and_clip_are_what_they_say_on_the_fit_frame():
    train = frame(0)
    train["clinical_0"] = np.exp(train["clinical_0"])  # a lognormal laboratory value
    fitted = pipeline(transforms={"clinical_0": ["log1p"], "signature_*": ["rank"],
                                  "clinical_1": ["clip:0.1"]}).fit(train)
    out = pd.DataFrame(fitted.transform(train), columns=fitted.feature_names)
    np.testing.assert_allclose(out["clinical_0"], _standard(np.log1p(train["clinical_0"])), atol=1e-5)
    ranks = train["signature_0"].rank(method="max").to_numpy() / len(train)
    np.testing.assert_allclose(out["signature_0"], _standard(ranks), atol=1e-5)
    clipped = np.clip(train["clinical_1"], *np.quantile(train["clinical_1"], [0.1, 0.9]))
    np.testing.assert_allclose(out["clinical_1"], _standard(clipped), atol=1e-5)
    np.testing.assert_allclose(out["clinical_2"], _standard(train["clinical_2"]), atol=1e-5)  # untouched


def test_transform_statistics_come_from_the_fit_frame_only():
    train, other = frame(0), frame(1)
    other.loc[0, "clinical_1"] = 1e6  # an outlier in the frame being transformed, not fitted
    fitted = pipeline(transforms={"clinical": ["clip:0.05", "rank"]}).fit(train)
    again = pipeline(transforms={"clinical": ["clip:0.05", "rank"]}).fit(train)
    a = fitted.transform(other)
    np.testing.assert_array_equal(a, again.transform(other))
    column = fitted.feature_names.index("clinical_1")
    low, high = np.quantile(train["clinical_1"], [0.05, 0.95])
    seen = np.sort(np.clip(train["clinical_1"], low, high))  # the fit frame's, clipped
    ranks = np.searchsorted(seen, seen, side="right") / len(seen)
    outlier = np.searchsorted(seen, high, side="right") / len(seen)  # clipped to the fit frame's 95%
    assert a[0, column] == pytest.approx((outlier - ranks.mean()) / ranks.std(), abs=1e-5)


@pytest.mark.parametrize(("transforms", "message"), [
    ({"clinical_0": ["sqrt"]}, "is not one of"),
    ({"clinical_0": ["clip:0.5"]}, "0 < Q <= 0.25"),
    ({"clinical_0": "log1p"}, "must be a list of strings"),
    ({"nothing_*": ["rank"]}, "matches no numeric column"),
    ({"clinical": ["rank"], "clinical_0": ["log1p"]}, "named by two keys"),
])
def test_a_transform_the_node_does_not_know_is_refused_by_rule(transforms, message):
    with pytest.raises(FeatureSpecError, match=message):
        pipeline(transforms=transforms).fit(frame(0))


def test_transforms_travel_as_json():
    spec = FeatureSpec(transforms={"clinical": ["log1p", "clip:0.01"]})
    assert FeatureSpec.from_json(spec.to_json()) == spec
    assert json.loads(spec.to_json())["transforms"] == {"clinical": ["log1p", "clip:0.01"]}


def test_groups_and_roles_come_from_the_dictionary_not_from_column_names():
    """Another cohort's names: genes named by symbol, clinical variables as 'labs'; the spec names
    the dictionary's groups, and gene sets must draw on the group whose role is genes."""
    from models.columns import ColumnGroups

    names = {"DMD": "transcripts", "UTRN": "transcripts", "MYH3": "transcripts", "ck": "labs",
             "nfl": "labs", "score_a": "scores"}
    groups = ColumnGroups(names, genes="transcripts", signatures="scores")
    data = frame(0).iloc[:, :6].set_axis(list(names), axis=1).abs()
    spec = FeatureSpec(raw=("labs",), gene_sets={"dys": ("DMD", "UTRN")}, interactions=("ck",),
                       transforms={"labs": ("log1p",)})
    fitted = FeaturePipeline(spec, list(names), {}, groups).fit(data)
    assert fitted.feature_names == ["ck", "nfl", "set:dys", "score_a*ck"]
    assert fitted.gene_features == []  # no raw gene column kept
    assert np.allclose(fitted.transform(data)[:, 0].std(), 1.0, atol=1e-6)
    assert [i for i, *_ in fitted.transforms_] == [3, 4]
    for bad, match in (({"raw": ("gene",)}, "'gene' is not a group of this cohort"),
                       ({"gene_sets": {"s": ("DMD", "ck")}}, "unknown gene column")):
        with pytest.raises(FeatureSpecError, match=match):
            FeaturePipeline(FeatureSpec(**bad), list(names), {}, groups).fit(data)


@pytest.mark.parametrize("impute", ["median", "mean", "zero"])
def test_missing_cells_are_filled_from_the_fit_frame_only_and_indicated_when_asked(impute):
    fit, other = frame(0), frame(1)
    for data, rows in ((fit, [1, 4, 9]), (other, [0, 2])):
        data.loc[rows, "clinical_1"] = np.nan
        data.loc[rows[:1], "onset"] = None
    spec = FeatureSpec(impute=impute, missing_indicators=True)
    fitted = FeaturePipeline(spec, NUMERIC, LEVELS, missing=["clinical_1", "onset"]).fit(fit)
    observed = fit["clinical_1"].dropna()
    expected = {"median": observed.median(), "mean": observed.mean(), "zero": 0.0}[impute]
    assert fitted.fill_ == {NUMERIC.index("clinical_1"): pytest.approx(expected)}
    assert fitted.feature_names[-2:] == ["missing:clinical_1", "missing:onset"]
    out = fitted.transform(other)
    assert np.isfinite(out).all()
    column = fitted.feature_names.index("clinical_1")
    i = NUMERIC.index("clinical_1")
    filled = (expected - fitted.mean_[i]) / fitted.scale_[i]
    assert np.allclose(out[[0, 2], column], filled, atol=1e-5)  # the fit frame's value, not other's
    assert out[:, -2].tolist() == [1.0 if i in (0, 2) else 0.0 for i in range(len(other))]
    assert out[0, fitted.feature_names.index("onset=childhood"):][:3].tolist() == [0.0, 0.0, 0.0]
    assert FeaturePipeline(FeatureSpec(), NUMERIC, LEVELS, missing=["clinical_1"]).fit(fit).n_features == \
        FeaturePipeline(FeatureSpec(), NUMERIC, LEVELS).n_features  # no indicators unless asked


def test_impute_and_indicators_are_checked():
    for bad, match in (({"impute": "knn"}, "'impute' must be one of"),
                       ({"missing_indicators": "yes"}, "'missing_indicators' must be true or false")):
        with pytest.raises(FeatureSpecError, match=match):
            FeatureSpec(**bad)


@pytest.mark.parametrize("spec", [FeatureSpec(), FeatureSpec(gene_sets=SETS, gene_set_score="rank")],
                         ids=["standard", "rank-scores"])
def test_transform_holds_little_beside_the_matrix_it_returns(spec):
    """The matrix is filled in place (numeric columns copied a part at a time, standardised where
    they lie): numpy's peak while transforming is that matrix and small parts, not a second copy."""
    import tracemalloc

    big = pd.concat([frame(seed, n=4_000) for seed in range(4)], ignore_index=True)  # 16,000 records
    wide = pd.concat([big] + [big[GENES].add_prefix(f"gene_x{i}_") for i in range(80)], axis=1)
    numeric = NUMERIC + [c for c in wide.columns if c.startswith("gene_x")]
    pipeline = FeaturePipeline(spec, numeric, LEVELS)
    pipeline.fit(wide)
    tracemalloc.start()
    matrix = pipeline.transform(wide)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert matrix.dtype == np.float32 and matrix.shape == (len(wide), pipeline.n_features)
    assert peak < matrix.nbytes + 16 * 2**20, (peak, matrix.nbytes)  # the parts: 8 MB and less
