"""Attacks through a submission's declarative inputs: feature specs, gene-set priors and the
pathway model's weights. The node refuses each by rule before any record is touched."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, RecordDict
from mlflow.tracking import MlflowClient
from runs import local_signer, node_run

from client.errors import PolicyViolation
from client.node import Node
from client.policy import NodePolicy, read_submission
from client.settings import NodeSettings
from contract.submission import Submission
from models import ModelSpec
from models.pipeline import FeatureSpec

SETS = {"a": ["gene_0", "gene_1", "gene_2"], "b": ["gene_3", "gene_4"]}
PATHWAY = ModelSpec("pathway", {"gene_sets": SETS, "interaction_columns": ["clinical_0"]})
RUN = node_run("mallory", "", ModelSpec("linear"), num_rounds=2).to_run_config()


def _node(root: Path, cohort: Path, policy: NodePolicy | None = None) -> Node:
    uri = f"sqlite:///{root}/mlflow.db"
    MlflowClient(uri).create_experiment("attacks", artifact_location=str(root / "artifacts"))
    return Node(NodeSettings(data_path=str(cohort), tracking_uri=uri, device="cpu",
                             state_dir=str(root / "state"), policy=policy or NodePolicy(),
                             workspace_key=str(local_signer(root).public_key_path)))


@pytest.fixture(scope="module")
def node(tmp_path_factory, cohort_parquet) -> Node:
    return _node(tmp_path_factory.mktemp("attack-node"), cohort_parquet)


def _facts(node: Node, model: ModelSpec, features: str = "{}") -> Submission:
    client = MlflowClient(node.settings.tracking_uri)
    run_id = client.create_run(client.get_experiment_by_name("attacks").experiment_id).info.run_id
    signed = local_signer(Path(node.settings.state_dir).parent).signed(
        {**RUN, "submission-id": run_id, "model": model.to_json(), "features": features})
    return read_submission(signed, node.settings.workspace_key_pem)


@pytest.mark.parametrize("features, why", [
    ({"interactions": ["progression"]}, "the label as an interaction column"),
    ({"interactions": ["patient_id"]}, "the record id as an interaction column"),
    ({"gene_sets": {"x": ["progression", "gene_1"]}}, "the label inside a gene set"),
    ({"gene_sets": {"x": ["clinical_0", "gene_1"]}}, "a non-gene column inside a gene set"),
    ({"gene_sets": {"x": ["gene_1"]}}, "a one-gene set"),
    ({"gene_sets": {f"s{i}": ["gene_1", "gene_2"] for i in range(201)}}, "too many gene sets"),
    ({"records": [1, 2, 3]}, "an unknown key that selects records"),
    ({"gene_set_score": "python:os.system"}, "an unknown score kind"),
])
def test_a_feature_spec_outside_the_schema_is_refused(node, features, why):
    with pytest.raises(PolicyViolation, match="feature-spec"):
        facts = _facts(node, ModelSpec("linear"), json.dumps(features))
        node.build(facts)


def test_an_oversized_feature_spec_is_refused_before_parsing(node):
    with pytest.raises(PolicyViolation, match="feature-spec"):
        _facts(node, ModelSpec("linear"), "x" * 10_000_000)


def test_a_pathway_model_that_names_the_label_or_unknown_genes_is_refused(node):
    for bad in ({"gene_sets": {"x": ["progression", "gene_1"]}},
                {"gene_sets": SETS, "interaction_columns": ["patient_id"]}):
        with pytest.raises(PolicyViolation, match="model-spec"):
            node.build(_facts(node, ModelSpec("pathway", bad)))


def test_a_widened_gene_set_mask_cannot_be_sent(node):
    """The mask is not part of the weights: arrays that carry one are not the model's."""
    facts = _facts(node, PATHWAY)
    model = node.build(facts)[0]
    arrays = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    arrays["gene_sets.mask"] = torch.ones_like(model.gene_sets.mask)
    with pytest.raises(PolicyViolation, match="model-arrays"):
        node.score_out_of_the_box(RecordDict({"arrays": ArrayRecord(arrays)}), facts)


def test_weights_outside_the_mask_have_no_effect(node):
    """Non-zero weights sent for genes outside a set do not reach the pathway scores."""
    facts = _facts(node, PATHWAY)
    model = node.build(facts)[0]
    view = node.cohort.view(facts.features)
    state = model.state_dict()
    before = model(view.x_holdout).detach()
    state["gene_sets.weight"] = state["gene_sets.weight"] + 100.0 * (1 - model.gene_sets.mask)
    model.load_state_dict(state)
    np.testing.assert_allclose(model(view.x_holdout).detach().numpy(), before.numpy(), rtol=1e-5)


#: As wide as the schema lets a spec be: 200 gene sets, each times 50 interaction columns, beside the
#: raw columns: 10,457 features a record (27 MB for the demo's 640 records, 4 GB at 100,000).
WIDE = {"gene_sets": {f"s{i}": [f"gene_{(2 * i) % 200}", f"gene_{(2 * i + 1) % 200}"] for i in range(200)},
        "interactions": [f"clinical_{i}" for i in range(29)] + [f"signature_{i}" for i in range(21)],
        "interaction_left": "gene_sets"}


@pytest.mark.parametrize("defended", [True, False], ids=["defended", "defence-off"])
def test_a_wide_feature_spec_cannot_make_the_node_hold_more_than_its_feature_memory(
        tmp_path, cohort_parquet, defended):
    """Memory as the attacker's lever: a spec is cheap to send and its tensors are the node's to
    hold (four cached at 100,000 records: 16 GB). Against a 10 MB policy the node refuses it before
    fitting anything; with the limit off it builds what the attacker asked for, 2.5 times the policy."""
    limit = 0.01
    node = _node(tmp_path, cohort_parquet, NodePolicy(feature_memory_gb=limit if defended else 1e3))
    facts = _facts(node, ModelSpec("linear"), json.dumps(WIDE))
    if defended:
        with pytest.raises(PolicyViolation, match="feature-memory"):
            node.build(facts)
        assert list(node.cohort._views) == [FeatureSpec().to_json()]  # nothing of it was built
    else:
        held = node.build(facts)[2].nbytes
        assert held > 2 * limit * 2**30


def test_the_node_lets_earlier_specs_go_to_keep_its_cached_features_within_the_policy(
        tmp_path, cohort_parquet):
    """Three specs one after another, each under the limit, two of them together over it: the node
    keeps the newest and the standard one, never more than the limit beside the standard."""
    node = _node(tmp_path, cohort_parquet, NodePolicy(feature_memory_gb=0.0012))  # 1.29 MB
    standard = FeatureSpec().to_json()
    for i in range(3):  # each 640 x 257-258 float32: 0.66 MB
        spec = FeatureSpec(gene_sets={f"s{i}": [f"gene_{i}", f"gene_{i + 1}"]})
        node.build(_facts(node, ModelSpec("linear"), spec.to_json()))
        others = [v for k, v in node.cohort._views.items() if k != standard]
        assert sum(v.nbytes for v in others) <= 0.0012 * 2**30
        assert spec.to_json() in node.cohort._views
    assert len(others) == 1
