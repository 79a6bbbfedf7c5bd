"""The weights channel, attacked for real: a malicious strategy tries to read records out of replies.

Each attack runs as a contributor's ServerApp through Flower's simulation engine against the real
node and its pilot policy, keeps the weights the node sent back, reconstructs training records
the published way, and counts how many match the node's real (standardised) training records.
The same attacks against a policy with the defence switched off must win, so the count can fail.

- Imprint ("Robbing the Fed", Fowl et al. 2022): a 1024-unit layer (the policy's widest) that bins
  records by one projection; one full-batch step writes most records into neighbouring units.
- Remainder differencing: one round with batch-size 512 and one with 511 from the same zero
  weights; the difference of the updates is the record the second round left out.

A record counts as recovered when some reconstruction correlates with it above ``BAR`` across
its 255 inputs. Records of one population correlate with each other (an independent draw of the
same disease reaches about 0.7 with some training record), so the bar is 0.9, and
``test_the_bar_has_no_false_positives`` measures that an independent cohort recovers nothing.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp
from runs import local_signer

from client.app import build_client_app
from client.node import Node, ResidentCohort
from client.settings import CONF_DIR, NodeSettings, load_policy
from contract.names import HOLDOUT_FINE_TUNED, HOLDOUT_OUT_OF_THE_BOX, TRAIN
from contract.submission import Submission
from models import ModelSpec
from server.app import wait_for_nodes
from server.engine import run_simulation
from server.workspace import Workspace
from synthetic.disease import generate_cohort
from tests.attacks.reconstruction import (
    imprint_weights,
    reconstruct_difference,
    reconstruct_imprint,
    recovered_records,
)

BAR = 0.9
N_TRAIN, WIDTH, UNITS = 512, 255, 1024
PILOT = load_policy(CONF_DIR / "policy" / "pilot.yaml")
NO_DP = replace(PILOT, dp_enabled=False)
UNDEFENDED = replace(NO_DP, record_tripwire=False)
LINEAR = ModelSpec("linear")
IMPRINT = ModelSpec("mlp", {"hidden": [UNITS]})


def _record(weights: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v, dtype=np.float32)) for k, v in weights.items()})


def _plain(arrays: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy().astype(np.float64) for k, v in arrays.items()}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights-channel")
    generate_cohort(0).to_parquet(folder / "cohort.parquet", index=False)
    return folder


def _settings(folder, name: str, policy) -> NodeSettings:
    return NodeSettings(data_path=str(folder / "cohort.parquet"), tracking_uri=f"sqlite:///{folder}/mlflow.db",
                        state_dir=str(folder / f"node-{name}"), device="cpu", policy=policy,
                        workspace_key=str(local_signer(folder).public_key_path))


def _workspace(folder, settings: NodeSettings) -> Workspace:
    return Workspace(settings, "weights-channel", local_signer(folder))


def _true_records(settings: NodeSettings) -> np.ndarray:
    """The node's training inputs, as its standard pipeline standardises them."""
    return ResidentCohort(settings).standard.x_train.numpy().astype(np.float64)


def _attack(folder, name: str, policy, model: ModelSpec, rounds: list[tuple[dict, dict]]) -> list[Message]:
    """Run the malicious strategy: out of the box, then ``rounds`` of (weights sent, train config);
    return the node's train replies."""
    settings = _settings(folder, name, policy)
    workspace = _workspace(folder, settings)
    submission = workspace.open_run(Submission(
        contributor=f"mallory-{name}", strategy={"_target_": "flwr.serverapp.strategy.FedAvg"},
        model=model, lr=0.05, batch_size=32, local_epochs=1, num_rounds=len(rounds)))
    replies: list[Message] = []
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        [node] = wait_for_nodes(grid, timeout=60)
        first = RecordDict({"arrays": _record(rounds[0][0])})
        grid.send_and_receive([Message(first, node, HOLDOUT_OUT_OF_THE_BOX)])
        for server_round, (weights, config) in enumerate(rounds, start=1):
            content = RecordDict({"arrays": _record(weights),
                                  "config": ConfigRecord({**config, "server-round": server_round})})
            replies.extend(grid.send_and_receive([Message(content, node, TRAIN)]))
        grid.send_and_receive([Message(first, node, HOLDOUT_FINE_TUNED)])

    run_simulation(app, build_client_app(settings), workspace.run_config(submission))
    return replies


def _imprint(folder, name: str, policy) -> tuple[Message, dict[str, np.ndarray]]:
    before = imprint_weights(WIDTH, UNITS, 3, seed=0)
    [reply] = _attack(folder, name, policy, IMPRINT,
                      [(before, {"lr": 0.05, "batch-size": N_TRAIN, "local-epochs": 1})])
    return reply, before


def _imprint_recovered(reply: Message, before: dict, truth: np.ndarray) -> int:
    candidates = reconstruct_imprint(before, _plain(reply.content["arrays"]), lr=0.05)
    return recovered_records(truth, candidates, corr_bar=BAR, share=1.1)


def test_the_bar_has_no_false_positives(cohort):
    """An independent draw of the same disease, standardised like the node's records, is no
    reconstruction: it must count 0 at the bar, while the true records count all."""
    settings = _settings(cohort, "null", PILOT)
    truth = _true_records(settings)
    other = generate_cohort(1)
    unrelated = ResidentCohort(settings).tensor(ResidentCohort(settings).standard.pipeline, other).numpy()
    assert recovered_records(truth, unrelated.astype(np.float64), corr_bar=BAR, share=1.1) == 0
    assert recovered_records(truth, truth, corr_bar=BAR, share=1.1) == N_TRAIN


def test_imprint_wins_against_a_node_without_its_defences(cohort):
    reply, before = _imprint(cohort, "undefended", UNDEFENDED)
    assert not reply.has_error(), reply.error.reason
    recovered = _imprint_recovered(reply, before, _true_records(_settings(cohort, "undefended", UNDEFENDED)))
    print(f"imprint, DP and tripwire off: {recovered} of {N_TRAIN} training records recovered")
    assert recovered >= N_TRAIN // 3  # about exp(-512/1024) of the records sit alone in a bin


def test_the_tripwire_refuses_the_naive_imprint_when_dp_is_off(cohort):
    reply, _ = _imprint(cohort, "no-dp", NO_DP)
    assert reply.has_error() and "record-in-weights" in reply.error.reason


def test_imprint_recovers_nothing_under_the_pilot_policy(cohort):
    reply, before = _imprint(cohort, "pilot", PILOT)
    assert not reply.has_error(), reply.error.reason  # the tripwire is quiet: DP's noise is there
    recovered = _imprint_recovered(reply, before, _true_records(_settings(cohort, "pilot", PILOT)))
    print(f"imprint, pilot policy (DP-SGD): {recovered} of {N_TRAIN} training records recovered")
    assert recovered == 0


def _remainder_rounds() -> list[tuple[dict, dict]]:
    zeros = {"linear.weight": np.zeros((3, WIDTH)), "linear.bias": np.zeros(3)}
    return [(zeros, {"lr": 1.0, "batch-size": N_TRAIN, "local-epochs": 1}),
            (zeros, {"lr": 1.0, "batch-size": N_TRAIN - 1, "local-epochs": 1})]


def _remainder_recovered(contents: list[RecordDict], truth: np.ndarray) -> int:
    first, second = (_plain(content["arrays"]) for content in contents)
    record, _ = reconstruct_difference(first, second, N_TRAIN, N_TRAIN - 1, lr=1.0)
    return recovered_records(truth, record[None, :], corr_bar=BAR, share=1.1)


@pytest.mark.parametrize("name, policy", [("remainder-no-dp", UNDEFENDED), ("remainder-pilot", PILOT)])
def test_remainder_differencing_recovers_nothing(cohort, name, policy):
    """Every record is in every epoch whatever the batch size: 511 trains what 512 does."""
    replies = _attack(cohort, name, policy, LINEAR, _remainder_rounds())
    assert not any(r.has_error() for r in replies)
    truth = _true_records(_settings(cohort, name, policy))
    assert _remainder_recovered([r.content for r in replies], truth) == 0


def test_remainder_differencing_wins_when_an_epoch_leaves_its_remainder_out(cohort, monkeypatch):
    """The defence switched off: the node's own loop with the old partition, which dropped an
    epoch's short remainder (called in-process: the engine's node runs in another process)."""
    import client.training

    def dropping(n: int, batch_size: int) -> list[tuple[int, int]]:
        return [(start, start + batch_size) for start in range(0, n - n % batch_size, batch_size)]

    monkeypatch.setattr(client.training, "batch_bounds", dropping)
    settings = _settings(cohort, "remainder-dropped", UNDEFENDED)
    submission = _workspace(cohort, settings).open_run(Submission(
        contributor="mallory-dropped", strategy={"_target_": "flwr.serverapp.strategy.FedAvg"},
        model=LINEAR, lr=1.0, batch_size=N_TRAIN, local_epochs=1, num_rounds=2))
    node = Node(settings)
    rounds = _remainder_rounds()
    node.score_out_of_the_box(RecordDict({"arrays": _record(rounds[0][0])}), submission)
    replies = [node.train(RecordDict({"arrays": _record(weights), "config": ConfigRecord(
        {**config, "server-round": server_round})}), submission)
        for server_round, (weights, config) in enumerate(rounds, start=1)]
    assert _remainder_recovered(replies, _true_records(settings)) == 1


def _private_node(folder, name: str) -> tuple[Node, Submission, torch.Tensor]:
    settings = _settings(folder, name, PILOT)
    submission = _workspace(folder, settings).open_run(Submission(
        contributor=f"mallory-{name}", strategy={"_target_": "flwr.serverapp.strategy.FedAvg"},
        model=LINEAR, lr=1e-5, batch_size=16, local_epochs=1, num_rounds=3))
    node = Node(settings)
    zeros = {"linear.weight": np.zeros((3, WIDTH)), "linear.bias": np.zeros(3)}
    node.score_out_of_the_box(RecordDict({"arrays": _record(zeros)}), submission)
    return node, submission, node.cohort.standard.x_train


def _round(node: Node, submission: Submission, weights: dict, server_round: int, lr: float = 1e-5):
    return node.train(RecordDict({"arrays": _record(weights), "config": ConfigRecord(
        {"lr": lr, "batch-size": 16, "local-epochs": 1, "server-round": server_round})}), submission)


def test_under_dp_the_tripwire_answers_no_membership_question(cohort):
    """A first-layer row equal to a candidate record, barely trained: a refusal decided on the real
    records would say whether the candidate is in the training set. Under DP the reply goes out
    either way; the alarm stays in the node's log."""
    node, submission, records = _private_node(cohort, "tripwire-oracle")
    member = {"linear.weight": np.tile(records[0].numpy(), (3, 1)), "linear.bias": np.zeros(3)}
    outsider = {"linear.weight": np.random.default_rng(0).standard_normal((3, WIDTH)),
                "linear.bias": np.zeros(3)}
    assert "arrays" in _round(node, submission, member, 1)
    assert "arrays" in _round(node, submission, outsider, 2)


def test_a_gradient_made_infinite_by_one_record_cannot_decide_whether_the_reply_is_refused(cohort):
    """Weights that overflow the logit exactly when some record's feature passes a threshold:
    without care one record turns every weight into NaN and the refusal answers the question."""
    node, submission, records = _private_node(cohort, "overflow-oracle")
    weights = {"linear.weight": np.zeros((3, WIDTH)), "linear.bias": np.zeros(3)}
    weights["linear.weight"][0, 5] = 3.4e38 / float(records[:, 5].max() - 0.01)
    reply = _round(node, submission, weights, 1, lr=0.05)
    assert all(np.isfinite(array.numpy()).all() for array in reply["arrays"].values())
