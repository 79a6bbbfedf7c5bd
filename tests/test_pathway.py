"""The pathway network: its gene-set layer keeps to the mask the node builds from the
prior, the mask never travels or loads, and the registry builds it from feature names."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from models import ModelSpec, build_model
from models.pathway import PathwayNet
from models.pipeline import FeaturePipeline, FeatureSpec
from models.registry import UnknownModelError

NAMES = [f"gene_{i}" for i in range(10)] + ["clinical_0", "clinical_1", "sex=female", "sex=male"]
SETS = {"b": ["gene_3", "gene_5", "gene_7"], "a": ["gene_0", "gene_1", "gene_2", "gene_3"]}
SET_GENES = ["gene_0", "gene_1", "gene_2", "gene_3", "gene_5", "gene_7"]  # gene inputs, in input order


def net(hidden: int = 0, interactions: tuple[str, ...] = ("clinical_0",)) -> PathwayNet:
    torch.manual_seed(0)
    return PathwayNet(len(NAMES), 3, NAMES, SETS, list(interactions), hidden=hidden)


def expected_mask() -> torch.Tensor:
    rows = [sorted(SETS)[i] for i in range(2)]
    return torch.tensor([[float(g in SETS[r]) for g in SET_GENES] for r in rows])


def test_the_mask_follows_the_sorted_sets_and_the_inputs_order():
    model = net()
    torch.testing.assert_close(model.gene_sets.mask, expected_mask())
    assert model.gene_index.tolist() == [NAMES.index(g) for g in SET_GENES]
    assert model.covariate_index.tolist() == [NAMES.index(n) for n in NAMES if n not in SET_GENES]


def test_initial_scores_are_the_sets_means():
    model = net()
    x = torch.randn(8, len(NAMES))
    scores = model.gene_sets(x[:, model.gene_index])
    means = torch.stack([x[:, [NAMES.index(g) for g in SETS[s]]].mean(dim=1) for s in sorted(SETS)], dim=1)
    torch.testing.assert_close(scores, means)
    assert model.gene_sets.bias.abs().sum() == 0


@pytest.mark.parametrize("optimiser", [torch.optim.SGD, torch.optim.Adam])
def test_training_never_leaves_the_mask(optimiser):
    model = net(hidden=8)
    opt = optimiser(model.parameters(), lr=0.1)
    outside = model.gene_sets.mask == 0
    generator = torch.Generator().manual_seed(1)
    for _ in range(5):
        x = torch.randn(32, len(NAMES), generator=generator)
        y = torch.randint(0, 3, (32,), generator=generator)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        assert (model.gene_sets.weight.grad[outside] == 0).all()
        assert model.gene_sets.weight.grad[~outside].abs().sum() > 0
        opt.step()
    assert (model.gene_sets.effective_weight[outside] == 0).all()
    assert not torch.equal(model.gene_sets.effective_weight, net(hidden=8).gene_sets.effective_weight)


def test_the_mask_is_not_in_the_state_dict_and_cannot_be_loaded():
    model = net()
    state = model.state_dict()
    assert set(state) == {"gene_sets.weight", "gene_sets.bias", "head.weight", "head.bias"}
    tampered = {**state, "gene_sets.mask": torch.ones_like(model.gene_sets.mask)}
    with pytest.raises(RuntimeError, match="Unexpected key"):
        model.load_state_dict(tampered)
    model.load_state_dict(tampered, strict=False)
    torch.testing.assert_close(model.gene_sets.mask, expected_mask())


def test_loaded_weights_outside_the_mask_have_no_effect():
    model = net()
    x = torch.randn(4, len(NAMES))
    before = model(x)
    state = model.state_dict()
    state["gene_sets.weight"] = state["gene_sets.weight"] + 100.0 * (1 - model.gene_sets.mask)
    model.load_state_dict(state)
    torch.testing.assert_close(model(x), before)


@pytest.mark.parametrize(("hidden", "interactions"),
                         [(0, ()), (0, ("clinical_0",)), (16, ("clinical_0", "clinical_1"))])
def test_output_shape_and_parameter_count(hidden, interactions):
    model = net(hidden, interactions)
    assert model(torch.randn(5, len(NAMES))).shape == (5, 3)
    n_sets, n_genes = len(SETS), len(SET_GENES)
    width = n_sets + (len(NAMES) - n_genes) + n_sets * len(interactions)
    head = width * 3 + 3 if hidden == 0 else width * hidden + hidden + hidden * 3 + 3
    assert sum(p.numel() for p in model.parameters()) == n_sets * n_genes + n_sets + head


def test_interaction_terms_are_products_of_scores_and_columns():
    model = net(interactions=("clinical_1",))
    x = torch.randn(6, len(NAMES))
    captured: list[torch.Tensor] = []
    model.head.register_forward_pre_hook(lambda _, args: captured.append(args[0]))
    model(x)
    scores = model.gene_sets(x[:, model.gene_index])
    products = scores * x[:, [NAMES.index("clinical_1")]]
    torch.testing.assert_close(captured[0][:, -2:], products)


def test_build_model_on_the_meta_device_counts_the_same_parameters():
    spec = ModelSpec("pathway", {"gene_sets": SETS, "interaction_columns": ["clinical_0"], "hidden": 4})
    with torch.device("meta"):
        meta = build_model(spec, len(NAMES), 3, feature_names=NAMES)
    real = build_model(spec, len(NAMES), 3, feature_names=NAMES)
    assert meta.gene_sets.weight.is_meta
    assert sum(p.numel() for p in meta.parameters()) == sum(p.numel() for p in real.parameters())
    again = build_model(ModelSpec.from_json(spec.to_json()), len(NAMES), 3, feature_names=NAMES)
    for key, value in real.state_dict().items():
        torch.testing.assert_close(again.state_dict()[key], value)


def test_build_model_needs_matching_feature_names_for_pathway_only():
    spec = ModelSpec("pathway", {"gene_sets": SETS})
    with pytest.raises(UnknownModelError, match="needs the input's feature names"):
        build_model(spec, len(NAMES), 3)
    with pytest.raises(UnknownModelError, match="n_features is 5"):
        build_model(spec, 5, 3, feature_names=NAMES)
    with pytest.raises(UnknownModelError, match="set by the node"):
        build_model(ModelSpec("pathway", {"gene_sets": SETS, "feature_names": NAMES}), len(NAMES), 3,
                    feature_names=NAMES)
    assert build_model(ModelSpec("linear"), len(NAMES), 3, feature_names=NAMES).linear.in_features == 14
    assert build_model(ModelSpec("mlp"), len(NAMES), 3).net[0].in_features == 14


@pytest.mark.parametrize(("sets", "interactions", "match"), [
    ({}, [], "at least one gene set"),
    ({"a": []}, [], "'a' must hold 2 to 200"),
    ({"a": ["gene_0", "gene_99"]}, [], "'a' names 1 unknown"),
    (SETS, ["clinical_7"], "interaction_columns must be distinct raw numeric"),
    (SETS, ["sex=male"], "interaction_columns must be distinct raw numeric"),
    (SETS, ["clinical_0", "clinical_0"], "interaction_columns must be distinct raw numeric"),
    (SETS, [f"clinical_{i}" for i in range(51)], "at most 50"),
    ({"a": ["gene_0", "clinical_0"]}, [], "'a' names 1 unknown"),
    (SETS, "clinical_0", "interaction_columns must be a list"),
])
def test_bad_priors_are_refused(sets, interactions, match):
    genes = NAMES[:10]  # the node names the gene inputs from the data dictionary's genes group
    with pytest.raises(ValueError, match=match):
        PathwayNet(len(NAMES), 3, NAMES, sets, interactions, gene_names=genes)
    with pytest.raises(UnknownModelError, match=match):
        spec = ModelSpec("pathway", {"gene_sets": sets, "interaction_columns": interactions})
        build_model(spec, len(NAMES), 3, feature_names=NAMES, gene_names=genes)


def test_a_pipelines_features_feed_the_network():
    numeric = [f"gene_{i}" for i in range(10)] + ["clinical_0", "clinical_1"]
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(20, len(numeric))), columns=numeric)
    frame["sex"] = rng.choice(["female", "male"], 20)
    features = FeaturePipeline(FeatureSpec(), numeric, {"sex": ("female", "male")}).fit(frame)
    assert features.feature_names == NAMES
    model = build_model(ModelSpec("pathway", {"gene_sets": SETS}), features.n_features, 3,
                        feature_names=features.feature_names)
    assert model(torch.from_numpy(features.transform(frame))).shape == (20, 3)
