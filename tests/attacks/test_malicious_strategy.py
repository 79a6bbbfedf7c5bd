"""A malicious strategy, run through Flower's simulation engine against the real node.

A strategy is code in the ServerApp process with the Grid in hand: it can send
any message the node might answer. This one tries every attack on the node's
rules in one Flower run and records what came back. Each attack must be
refused by name, the export ledger must show that only whitelisted records
left, and a sentinel planted in the cohort must appear nowhere outside it.
"""

from __future__ import annotations

import math
import sqlite3

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp
from runs import local_signer

from client.app import build_client_app
from client.ledger import NodeLedger
from client.policy import NodePolicy
from client.settings import NodeSettings
from contract.submission import Submission
from models import ModelSpec, build_model
from server.app import wait_for_nodes
from server.engine import run_simulation
from server.workspace import Workspace
from synthetic.disease import generate_cohort

SENTINEL = 987654.321
LINEAR = {"linear.weight": (3, 255), "linear.bias": (3,)}


def _arrays(**changes: np.ndarray) -> ArrayRecord:
    model = build_model(ModelSpec("linear"), 255, 3)
    values = {k: v.detach().numpy() for k, v in model.state_dict().items()} | changes
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in values.items()})


def _train(arrays: ArrayRecord | None = None, server_round: int = 1, **config) -> RecordDict:
    values = {"lr": 0.05, "local-epochs": 1, "batch-size": 32, "server-round": server_round} | config
    return RecordDict({"arrays": arrays or _arrays(), "config": ConfigRecord(values)})


#: (attack, message type, content, the rule the node must name, or "" when it must succeed)
ATTACKS = [
    ("ask for predictions", "query.predictions", RecordDict(), "No query function"),
    ("ask for federated evaluation", "evaluate", RecordDict({"arrays": _arrays()}), "No evaluate function"),
    ("train before the out-of-the-box score", "train", _train(), "submission-phases"),
    ("an output as wide as the cohort", "query.holdout_out_of_the_box",
     RecordDict({"arrays": _arrays(**{"linear.weight": np.zeros((512, 255), np.float32),
                                      "linear.bias": np.zeros(512, np.float32)})}), "model-arrays"),
    ("oversized arrays", "query.holdout_out_of_the_box",
     RecordDict({"arrays": _arrays(**{"linear.weight": np.zeros((3, 200_000), np.float32)})}),
     "max-array-bytes"),
    ("out of the box, honestly", "query.holdout_out_of_the_box", RecordDict({"arrays": _arrays()}), ""),
    ("a second out-of-the-box score", "query.holdout_out_of_the_box", RecordDict({"arrays": _arrays()}),
     "submission-phases"),
    ("select records by index", "train", _train(**{"record-ids": [0, 1, 2]}), "known-config-keys"),
    ("claim another contributor", "train", _train(contributor="alice"), "known-config-keys"),
    ("name another submission", "train", _train(**{"submission-id": "someone-elses-run"}),
     "known-config-keys"),
    ("ask for per-record losses", "train", _train(**{"per-record-loss": True}), "known-config-keys"),
    ("smuggle a records list", "train",
     RecordDict({"arrays": _arrays(), "config": ConfigRecord({"lr": 0.05, "local-epochs": 1,
                 "batch-size": 32, "server-round": 1}), "indices": ConfigRecord({"ids": [4, 2]})}),
     "message-records"),
    ("train on one record", "train", _train(**{"batch-size": 1}), "batch-size-range"),
    ("a learning rate outside policy", "train", _train(lr=100.0), "lr-range"),
    ("too many local epochs", "train", _train(**{"local-epochs": 100}), "local-epochs-range"),
    ("NaN weights", "train", _train(_arrays(**{"linear.bias": np.array([math.nan, 0, 0], np.float32)})),
     "finite-arrays"),
    ("weights of another model", "train",
     _train(ArrayRecord({"w": Array(np.zeros((3, 255), np.float32))})), "model-arrays"),
    ("a round, honestly", "train", _train(), ""),
    ("replay the same round", "train", _train(), "round-once"),
    ("a second round, honestly", "train", _train(server_round=2), ""),
    ("more rounds than the run has", "train", _train(server_round=3), "rounds-range"),
    ("final score, honestly", "query.holdout_fine_tuned", RecordDict({"arrays": _arrays()}), ""),
    ("a second final score", "query.holdout_fine_tuned", RecordDict({"arrays": _arrays()}),
     "submission-phases"),
    ("train after the final score", "train", _train(server_round=2), "submission-phases"),
]


@pytest.fixture(scope="module")
def attacked(tmp_path_factory):
    """Run every attack in one Flower run; return the replies, the node settings, the run."""
    tmp = tmp_path_factory.mktemp("attacks")
    cohort = generate_cohort(0)
    cohort.loc[0, "gene_7"] = SENTINEL  # a value that must never leave the node
    cohort.to_parquet(tmp / "cohort.parquet", index=False)
    signer = local_signer(tmp)
    node = NodeSettings(data_path=str(tmp / "cohort.parquet"), tracking_uri=f"sqlite:///{tmp}/mlflow.db",
                        state_dir=str(tmp / "node-state"), device="cpu",
                        policy=NodePolicy(max_array_bytes=1_000_000),
                        workspace_key=str(signer.public_key_path))
    workspace = Workspace(node, "attacks", signer)
    submission = workspace.open_run(Submission(
        contributor="mallory", strategy={"_target_": "flwr.serverapp.strategy.FedAvg"},
        model=ModelSpec("linear"), lr=0.05, batch_size=32, local_epochs=1, num_rounds=2))
    replies: list[Message] = []
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        [node_id] = wait_for_nodes(grid, timeout=60)
        for _, message_type, content, _ in ATTACKS:
            [reply] = grid.send_and_receive([Message(content, node_id, message_type)])
            replies.append(reply)

    run_simulation(app, build_client_app(node), workspace.run_config(submission))
    return replies, node, submission, tmp


@pytest.mark.parametrize("index", range(len(ATTACKS)), ids=[a[0] for a in ATTACKS])
def test_each_attack_is_refused_by_name(attacked, index):
    replies, *_ = attacked
    _, _, _, rule = ATTACKS[index]
    reply = replies[index]
    if rule:
        assert reply.has_error() and rule in reply.error.reason
    else:
        assert not reply.has_error(), reply.error.reason


def test_the_export_ledger_shows_only_whitelisted_records(attacked):
    replies, node, submission, _ = attacked
    rows = NodeLedger(node.ledger_path).exports("mallory")
    # Flower itself refuses unknown message types before the node's code runs
    assert len(rows) == len(ATTACKS) - 2
    allowed = {f"arrays/{k}" for k in LINEAR} | {"metrics/train-loss", "metrics/num-examples",
               "metrics/compute-flops", "metrics/device-seconds", "metrics/recorded", "error"}
    for row in rows:
        assert set(row.keys) <= allowed and row.run_id == submission.submission_id
        assert all(tuple(shape) == LINEAR[k.split("/", 1)[1]] for k, shape in row.shapes.items())
    assert sum("arrays/linear.weight" in r.keys for r in rows) == 2  # the two honest rounds


def test_the_sentinel_appears_in_no_reply_error_ledger_or_mlflow_field(attacked):
    replies, node, submission, tmp = attacked
    needles = {repr(SENTINEL), f"{SENTINEL:.2f}", "987654"}
    texts = [r.error.reason for r in replies if r.has_error()]
    texts += [str(dict(record)) for r in replies if not r.has_error() for record in
              r.content.metric_records.values()]
    for database in (tmp / "mlflow.db", node.ledger_path):
        with sqlite3.connect(database) as db:
            for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'"):
                texts += [repr(row) for row in db.execute(f"SELECT * FROM {table}")]
    assert texts and not any(needle in text for needle in needles for text in texts)


def test_the_official_record_holds_both_scores_once(attacked):
    _, node, submission, _ = attacked
    from mlflow.tracking import MlflowClient

    client = MlflowClient(node.tracking_uri)
    for key in ("holdout_out_of_the_box_macro_f1", "holdout_fine_tuned_macro_f1"):
        assert len(client.get_metric_history(submission.submission_id, key)) == 1


def test_the_sentinel_appears_in_no_node_log_line(tmp_path, caplog, monkeypatch):
    """The same attacks straight into the ClientApp, with every log line captured."""
    import logging

    from flwr.supercore.task_identity import TaskIdentity

    cohort = generate_cohort(0)
    cohort.loc[0, "gene_7"] = SENTINEL
    cohort.to_parquet(tmp_path / "cohort.parquet", index=False)
    signer = local_signer(tmp_path)
    node = NodeSettings(data_path=str(tmp_path / "cohort.parquet"),
                        tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", state_dir=str(tmp_path / "s"),
                        device="cpu", policy=NodePolicy(max_array_bytes=1_000_000),
                        workspace_key=str(signer.public_key_path))
    workspace = Workspace(node, "logs", signer)
    submission = workspace.open_run(Submission(
        contributor="mallory", strategy={"_target_": "flwr.serverapp.strategy.FedAvg"},
        model=ModelSpec("linear"), lr=0.05, batch_size=32, local_epochs=1, num_rounds=2))
    for name, value in {"task_id": 1, "run_id": 1, "node_id": 0}.items():  # messages need one
        monkeypatch.setattr(TaskIdentity, f"_{name}", value)
    app = build_client_app(node)
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                      run_config=workspace.run_config(submission))
    caplog.set_level(logging.DEBUG)
    for _, message_type, content, _ in ATTACKS:
        try:
            app(Message(content, 0, message_type), context)
        except Exception as ex:  # refusals are exceptions here; their text is checked too
            logging.getLogger("test").info(str(ex))
    text = caplog.text
    assert "refused by rule" in text and str(SENTINEL) not in text and "987654" not in text


def test_no_outgoing_weight_row_is_a_training_record(attacked):
    """The sentinel check, inside the weights: every row of every array as wide as the model's
    input that left the node is compared with every training record (after the node's
    standardisation, the sentinel's record included)."""
    from client.node import ResidentCohort

    replies, node, _, _ = attacked
    records = ResidentCohort(node).standard.x_train.numpy().astype(np.float64)
    records = records - records.mean(axis=1, keepdims=True)
    records /= np.linalg.norm(records, axis=1, keepdims=True)
    rows = [array.numpy().astype(np.float64) for reply in replies if not reply.has_error()
            and "arrays" in reply.content for array in reply.content["arrays"].values()
            if array.numpy().ndim == 2 and array.numpy().shape[1] == records.shape[1]]
    assert rows, "no outgoing weights were checked"
    rows = np.concatenate(rows)
    rows = rows - rows.mean(axis=1, keepdims=True)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    assert np.abs(rows @ records.T).max() < 0.9
