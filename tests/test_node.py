"""The node driven directly, without Flower's engine (client/node.py)."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict
from mlflow.tracking import MlflowClient
from runs import node_run

from client.cohort import load_cohort, split_cohort
from client.errors import NodeError, PhaseViolation, PolicyViolation
from client.holdout import score_predictions
from client.ledger import CLOSED, NEW, SCORED_OUT_OF_THE_BOX, TRAINING
from client.node import Node
from client.policy import NodePolicy
from client.settings import NodeSettings
from client.training import predict
from contract.names import PAIRED_TAG_PREFIX, TOP_GROUP_METRIC, TRAIN_REPLY_KEYS, Tag
from contract.schema import SCHEMA
from contract.submission import Submission
from contract.values import PairedDifference
from models import ModelSpec
from models.pipeline import FeaturePipeline, FeatureSpec

HIDDEN = 16
SPEC = ModelSpec("mlp", {"hidden": [HIDDEN]})
N_TRAIN, N_FEATURES = 512, 255
ROUND_FLOPS = 2 * N_TRAIN * (2 * N_FEATURES * HIDDEN + 3 * HIDDEN * 3)  # one epoch
ROUNDS = 3


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[str, str]:
    """A sqlite MLflow store and an experiment whose artifacts stay in tmp."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    experiment = MlflowClient(uri).create_experiment("tests", artifact_location=str(root / "artifacts"))
    return uri, experiment


@pytest.fixture(scope="module")
def settings(store, cohort_parquet) -> NodeSettings:
    # plain SGD, so FLOPs and updates are exact; DP-SGD (the pilot's default) is tests/test_privacy.py
    return NodeSettings(data_path=str(cohort_parquet), tracking_uri=store[0], device="cpu",
                        state_dir=str(cohort_parquet.parent / "node-state"),
                        policy=NodePolicy(dp_enabled=False))


@pytest.fixture(scope="module")
def node(settings) -> Node:
    return Node(settings)


def _new_run(store) -> str:
    uri, experiment = store
    return MlflowClient(uri).create_run(experiment).info.run_id


@pytest.fixture
def facts(store) -> Submission:
    run_id = _new_run(store)  # a contributor per test: the node's submission limit is per contributor
    return node_run(contributor=f"tester-{run_id[:8]}", submission_id=run_id, model=SPEC, seed=0,
                    num_rounds=ROUNDS)


def _arrays(model: torch.nn.Module) -> ArrayRecord:
    return ArrayRecord({k: v.detach().cpu() for k, v in model.state_dict().items()})


def _initial(node: Node, facts: Submission) -> ArrayRecord:
    return _arrays(node.build(facts)[0])


def _train_content(arrays: ArrayRecord, server_round: int = 1, **config) -> RecordDict:
    values = {"lr": 0.05, "local-epochs": 1, "batch-size": 32, "server-round": server_round, **config}
    return RecordDict({"arrays": arrays, "config": ConfigRecord(values)})


def _plain(reply: RecordDict) -> dict:
    return {key: dict(record) for key, record in reply.items()}


def _score(node: Node, facts: Submission, arrays: ArrayRecord):
    model = node.build(facts)[0]
    model.load_state_dict(arrays.to_torch_state_dict())
    y_pred = predict(model, node.cohort.standard.x_holdout).numpy()
    return score_predictions(node.cohort.y_holdout.numpy(), y_pred, SCHEMA.classes)


# --- one complete submission, shared by the tests that inspect it -------------------


@dataclass
class Finished:
    facts: Submission
    submitted: ArrayRecord
    out_of_the_box_reply: RecordDict
    train_replies: list[RecordDict]
    final_reply: RecordDict


@pytest.fixture(scope="module")
def finished(node, store) -> Finished:
    facts = node_run(contributor="tester", submission_id=_new_run(store), model=SPEC, seed=0,
                     num_rounds=ROUNDS)
    submitted = _initial(node, facts)
    out_of_the_box_reply = node.score_out_of_the_box(RecordDict({"arrays": submitted}), facts)
    assert node.ledger.phase(facts.submission_id) == SCORED_OUT_OF_THE_BOX
    arrays, replies = submitted, []
    for server_round in range(1, ROUNDS + 1):
        replies.append(node.train(_train_content(arrays, server_round), facts))
        arrays = replies[-1]["arrays"]
        assert node.ledger.phase(facts.submission_id) == TRAINING
    final_reply = node.score_fine_tuned(RecordDict({"arrays": arrays}), facts)
    return Finished(facts, submitted, out_of_the_box_reply, replies, final_reply)


def _run(store, finished: Finished):
    return MlflowClient(store[0]).get_run(finished.facts.submission_id)


def test_holdout_replies_carry_only_an_acknowledgement(finished, node):
    assert _plain(finished.out_of_the_box_reply) == {"metrics": {"recorded": 1}}
    assert _plain(finished.final_reply) == {"metrics": {"recorded": 1}}
    assert node.ledger.phase(finished.facts.submission_id) == CLOSED


def test_out_of_the_box_score_of_the_submitted_model_is_recorded(store, finished, node, cohort_parquet):
    run = _run(store, finished)
    expected = _score(node, finished.facts, finished.submitted)
    assert run.data.metrics["holdout_out_of_the_box_macro_f1"] == pytest.approx(expected.macro_f1)
    assert 0.0 <= run.data.metrics["holdout_out_of_the_box_macro_f1"] <= 1.0
    assert run.data.params["cohort_digest"] == hashlib.sha256(cohort_parquet.read_bytes()).hexdigest()
    assert run.data.params["n_train"] == "512" and run.data.params["n_holdout"] == "128"


def test_final_score_curve_and_compute_are_recorded(store, finished, node):
    client = MlflowClient(store[0])
    metrics = _run(store, finished).data.metrics
    expected = _score(node, finished.facts, finished.train_replies[-1]["arrays"])
    assert metrics["holdout_fine_tuned_macro_f1"] == pytest.approx(expected.macro_f1)
    assert metrics["holdout_fine_tuned_recall_fast"] == pytest.approx(expected.recall["Fast"])
    assert metrics["compute_flops"] > 0
    assert metrics["compute_flops"] == ROUNDS * ROUND_FLOPS
    assert metrics["rounds_trained"] == ROUNDS
    history = sorted(client.get_metric_history(finished.facts.submission_id, "train_loss"),
                     key=lambda m: m.step)
    assert [m.step for m in history] == list(range(1, ROUNDS + 1))
    losses = [reply["metrics"]["train-loss"] for reply in finished.train_replies]
    assert [m.value for m in history] == pytest.approx(losses)
    artifacts = [a.path for a in client.list_artifacts(finished.facts.submission_id)]
    assert "holdout_confusion_matrix.png" in artifacts


def test_train_reply_carries_only_model_arrays_and_allowed_scalars(finished, node):
    shapes = node.build(finished.facts)[1]
    for reply in finished.train_replies:
        assert set(reply.keys()) == {"arrays", "metrics"}
        arrays = reply["arrays"]
        assert list(arrays.keys()) == list(shapes)
        assert {k: tuple(a.shape) for k, a in arrays.items()} == shapes
        assert {a.dtype for a in arrays.values()} == {"float32"}
        metrics = dict(reply["metrics"])
        assert set(metrics) == TRAIN_REPLY_KEYS
        assert metrics["num-examples"] == N_TRAIN
        assert metrics["compute-flops"] == ROUND_FLOPS
    before = finished.submitted["net.0.weight"].numpy()
    after = finished.train_replies[0]["arrays"]["net.0.weight"].numpy()
    assert not np.array_equal(before, after)  # the round trained the submitted weights


def test_nothing_is_accepted_after_the_final_holdout(node, finished):
    arrays = finished.train_replies[-1]["arrays"]
    more = replace(finished.facts, num_rounds=ROUNDS + 5)
    for action, content in [(node.train, _train_content(arrays, ROUNDS + 1)),
                            (node.score_out_of_the_box, RecordDict({"arrays": arrays})),
                            (node.score_fine_tuned, RecordDict({"arrays": arrays}))]:
        with pytest.raises(PhaseViolation, match="submission-phases"):
            action(content, more)
    run_id = finished.facts.submission_id
    assert node.ledger.phase(run_id) == CLOSED
    assert [r[0] for r in node.ledger.rounds(run_id)] == list(range(1, ROUNDS + 1))


# --- phases -----------------------------------------------------------------------


def test_train_before_the_out_of_the_box_score_is_refused(node, facts):
    with pytest.raises(PhaseViolation, match="submission-phases") as info:
        node.train(_train_content(_initial(node, facts)), facts)
    assert info.value.rule == "submission-phases"
    assert node.ledger.phase(facts.submission_id) == NEW
    assert node.ledger.rounds(facts.submission_id) == []


@pytest.mark.parametrize("scored", [False, True])
def test_final_before_any_training_is_refused(node, facts, scored):
    content = RecordDict({"arrays": _initial(node, facts)})
    if scored:
        node.score_out_of_the_box(content, facts)
    with pytest.raises(PhaseViolation, match="submission-phases"):
        node.score_fine_tuned(content, facts)
    assert node.ledger.phase(facts.submission_id) == (SCORED_OUT_OF_THE_BOX if scored else NEW)


def test_a_second_out_of_the_box_score_is_refused(node, facts, store):
    content = RecordDict({"arrays": _initial(node, facts)})
    node.score_out_of_the_box(content, facts)
    with pytest.raises(PhaseViolation, match="submission-phases"):
        node.score_out_of_the_box(content, facts)
    assert node.ledger.phase(facts.submission_id) == SCORED_OUT_OF_THE_BOX
    history = MlflowClient(store[0]).get_metric_history(facts.submission_id,
                                                        "holdout_out_of_the_box_macro_f1")
    assert len(history) == 1


# --- incoming checks through the node ----------------------------------------------


def _metrics(store, facts) -> dict:
    return MlflowClient(store[0]).get_run(facts.submission_id).data.metrics


def _wrong_shapes(node, facts) -> ArrayRecord:
    wide = ModelSpec("mlp", {"hidden": [HIDDEN + 1]})
    other = replace(facts, model=wide)
    return _initial(node, other)


def test_out_of_the_box_with_wrong_shapes_is_refused_and_nothing_recorded(node, facts, store):
    with pytest.raises(PolicyViolation, match="model-arrays"):
        node.score_out_of_the_box(RecordDict({"arrays": _wrong_shapes(node, facts)}), facts)
    assert node.ledger.phase(facts.submission_id) == NEW
    assert _metrics(store, facts) == {}


def test_train_with_wrong_shapes_is_refused(node, facts):
    node.score_out_of_the_box(RecordDict({"arrays": _initial(node, facts)}), facts)
    with pytest.raises(PolicyViolation, match="model-arrays"):
        node.train(_train_content(_wrong_shapes(node, facts)), facts)
    assert node.ledger.phase(facts.submission_id) == SCORED_OUT_OF_THE_BOX
    assert node.ledger.rounds(facts.submission_id) == []


def test_train_with_a_record_selecting_config_is_refused(node, facts):
    node.score_out_of_the_box(RecordDict({"arrays": _initial(node, facts)}), facts)
    with pytest.raises(PolicyViolation, match="known-config-keys"):
        node.train(_train_content(_initial(node, facts), indices=[0, 1, 2]), facts)
    content = _train_content(_initial(node, facts))
    content["record-ids"] = ConfigRecord({"ids": [0, 1, 2]})
    with pytest.raises(PolicyViolation, match="message-records"):
        node.train(content, facts)
    assert node.ledger.rounds(facts.submission_id) == []


def test_out_of_the_box_for_an_unknown_submission_is_refused(node, facts):
    unknown = replace(facts, submission_id="0" * 32)
    with pytest.raises(NodeError, match="submission-id"):
        node.score_out_of_the_box(RecordDict({"arrays": _initial(node, facts)}), unknown)
    assert node.ledger.phase(unknown.submission_id) == NEW


# --- preprocessing --------------------------------------------------------------------


@pytest.mark.parametrize("score", ["mean", "pc1"])
def test_preprocessing_statistics_come_from_the_training_split(settings, cohort_parquet, score):
    node = Node(settings)
    cohort = load_cohort(cohort_parquet)
    split = split_cohort(cohort, settings.holdout_size, settings.split_seed)
    spec = FeatureSpec(gene_sets={"a": ("gene_1", "gene_2", "gene_3"), "b": ("gene_4", "gene_5")},
                       gene_set_score=score, interactions=("clinical_0",))
    view = node.cohort.view(spec)

    numeric = list(SCHEMA.numeric)
    train_mean = cohort.frame.iloc[split.train][numeric].to_numpy().mean(axis=0)
    all_mean = cohort.frame[numeric].to_numpy().mean(axis=0)
    # the node keeps the records as float32: the means are the training split's to float32 precision
    np.testing.assert_allclose(view.pipeline.mean_, train_mean, rtol=1e-6, atol=1e-9)
    assert np.abs(view.pipeline.mean_ - all_mean).max() > 1e-3
    on_train = FeaturePipeline(spec, SCHEMA.numeric, SCHEMA.categorical).fit(cohort.frame.iloc[split.train])
    np.testing.assert_allclose(view.pipeline.score_mean_, on_train.score_mean_)
    for name, component in getattr(on_train, "components_", {}).items():
        np.testing.assert_allclose(view.pipeline.components_[name], component)

    # The node's tensors are those rows, through the pipeline fitted on the training rows:
    # centred on the training split, not on the holdout.
    np.testing.assert_array_equal(node.cohort.y_train.numpy(), cohort.labels[split.train])
    np.testing.assert_array_equal(node.cohort.y_holdout.numpy(), cohort.labels[split.holdout])
    np.testing.assert_allclose(view.x_train.numpy()[:, :len(numeric)].mean(axis=0), 0.0, atol=1e-5)
    assert np.abs(view.x_holdout.numpy()[:, :len(numeric)].mean(axis=0)).max() > 1e-2
    assert view.x_train.shape[1] == len(view.pipeline.feature_names) == 255 + 2 + 21


def test_the_node_holds_torch_to_the_policys_cpu_threads(cohort_parquet, tmp_path, store):

    before = torch.get_num_threads()
    try:
        Node(NodeSettings(data_path=str(cohort_parquet), tracking_uri=store[0], device="cpu",
                          state_dir=str(tmp_path / "s"), policy=NodePolicy(run_cpu_threads=1)))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


# --- importance and paired comparisons, computed on the node -------------------------


def test_permutation_importance_is_an_artifact_and_the_run_names_its_top_group(store, finished, tmp_path):
    run = _run(store, finished)
    client = MlflowClient(store[0])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"holdout_importance.json", "holdout_importance.png"} <= artifacts
    table = json.loads(Path(client.download_artifacts(run.info.run_id, "holdout_importance.json",
                                                      str(tmp_path))).read_text())
    means = {row[0]: row[1] for row in table["data"]}
    assert set(means) == {"gene", "clinical", "signature", "sex", "onset"}
    top = run.data.tags[Tag.TOP_GROUP]
    assert means[top] == max(means.values())
    assert run.data.metrics[TOP_GROUP_METRIC] == pytest.approx(means[top], abs=1e-9)  # the table rounds
    assert not [m for m in run.data.metrics if m.startswith("importance_") and m != TOP_GROUP_METRIC]


def test_a_second_run_is_compared_with_the_first_record_by_record(node, store, finished):
    """The same final weights, submitted again: the paired difference is exactly 0, and the
    comparison is a tag on the later run; the predictions themselves stay on the node."""
    facts = node_run(contributor="tester-2", submission_id=_new_run(store), model=SPEC, seed=0,
                     num_rounds=1)
    final = finished.train_replies[-1]["arrays"]
    node.score_out_of_the_box(RecordDict({"arrays": final}), facts)
    node.train(_train_content(final, 1, lr=1e-5), facts)  # a negligible step
    reply = node.score_fine_tuned(RecordDict({"arrays": final}), facts)
    assert _plain(reply) == {"metrics": {"recorded": 1}}
    tags = MlflowClient(store[0]).get_run(facts.submission_id).data.tags
    paired = PairedDifference.from_text(tags[f"{PAIRED_TAG_PREFIX}{finished.facts.submission_id}"])
    difference, low, high = paired.difference, paired.low, paired.high
    assert difference == low == high == 0.0
    with sqlite3.connect(node.ledger.path) as db:  # kept on the node, one row per closed run
        kept = dict(db.execute("SELECT run_id, length(predictions) FROM holdout_predictions"))
    assert kept[finished.facts.submission_id] == kept[facts.submission_id] == len(node.cohort.y_holdout)


def test_declared_transforms_run_on_the_node_within_its_rules(node, store):
    """Transforms are fitted on the node's training split; the reply is still weights only."""
    features = FeatureSpec(transforms={"clinical": ("log1p", "clip:0.01"), "signature_*": ("rank",)})
    facts = node_run(contributor="tester-t", submission_id=_new_run(store), model=ModelSpec("linear"),
                     seed=0, num_rounds=1, features=features)
    initial = _initial(node, facts)
    node.score_out_of_the_box(RecordDict({"arrays": initial}), facts)
    reply = node.train(_train_content(initial, 1), facts)
    assert set(reply.keys()) == {"arrays", "metrics"} and set(reply["metrics"].keys()) == TRAIN_REPLY_KEYS
    assert set(reply["arrays"].keys()) == set(initial.keys())
    node.score_fine_tuned(RecordDict({"arrays": reply["arrays"]}), facts)
    assert "holdout_fine_tuned_macro_f1" in MlflowClient(store[0]).get_run(facts.submission_id).data.metrics


def test_a_gene_set_pipeline_and_the_pathway_model_run_on_the_node(node, store, tmp_path):
    sets = {"a": ("gene_0", "gene_1", "gene_2", "gene_5", "gene_6"), "b": ("gene_3", "gene_4")}
    features = FeatureSpec(gene_sets=sets, gene_set_score="pc1", interactions=("clinical_0",),
                           interaction_left="gene_sets")
    model = ModelSpec("pathway", {"gene_sets": {k: list(v) for k, v in sets.items()},
                                  "interaction_columns": ["clinical_0", "clinical_3"]})
    facts = node_run(contributor="tester-p", submission_id=_new_run(store), model=model, seed=0,
                     num_rounds=1, features=features)
    initial = _initial(node, facts)
    node.score_out_of_the_box(RecordDict({"arrays": initial}), facts)
    reply = node.train(_train_content(initial, 1), facts)
    assert set(reply["arrays"].keys()) == set(initial.keys())
    node.score_fine_tuned(RecordDict({"arrays": reply["arrays"]}), facts)
    client = MlflowClient(store[0])
    assert "holdout_fine_tuned_macro_f1" in client.get_run(facts.submission_id).data.metrics
    table = json.loads(Path(client.download_artifacts(facts.submission_id, "holdout_importance.json",
                                                      str(tmp_path))).read_text())
    groups = {row[0] for row in table["data"]}
    assert "set:a" in groups and "set:b" not in groups  # two genes would be a per-feature answer


def test_a_failing_importance_does_not_fail_a_scored_run(node, store, monkeypatch):
    facts = node_run(contributor="tester-i", submission_id=_new_run(store), model=SPEC, seed=0,
                     num_rounds=1)
    initial = _initial(node, facts)
    node.score_out_of_the_box(RecordDict({"arrays": initial}), facts)
    trained = node.train(_train_content(initial, 1), facts)["arrays"]

    def broken(*args, **kwargs):
        raise RuntimeError("importance failed")

    monkeypatch.setattr(Node, "_importance", broken)
    reply = node.score_fine_tuned(RecordDict({"arrays": trained}), facts)
    assert _plain(reply) == {"metrics": {"recorded": 1}}
    assert "holdout_fine_tuned_macro_f1" in MlflowClient(store[0]).get_run(facts.submission_id).data.metrics


def test_a_refused_model_reads_no_data_for_its_features(node, store):
    """The model is checked against the policy before the contributor's pipeline is fitted."""
    features = FeatureSpec(gene_sets={"q": ("gene_7", "gene_8")})
    facts = node_run(contributor="tester-r", submission_id=_new_run(store), seed=0, num_rounds=1,
                     model=ModelSpec("mlp", {"hidden": [10**6]}), features=features)
    with pytest.raises(PolicyViolation, match="max-width"):
        node.build(facts)
    assert features.to_json() not in node.cohort._views
