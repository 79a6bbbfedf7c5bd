"""The embargo, against a real MLflow tracking server with TLS and MLflow's basic-auth app: alice
reads her own runs and nothing of bob's until the foundation publishes, then the published board;
the paired comparisons, which name and score other runs, only the foundation reads. The control
runs the same attempt against MLflow's shipped default permission, where alice wins."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from contract.names import PAIRED_TAG_PREFIX, Tag
from server.deployment import free_port, stop_process, wait_healthy
from server.embargo import PUBLISHED, RESERVED, Board
from server.pki import ensure_tls
from server.tracking_server import TrackingServer

PASSWORDS = {"alice": "alice-token-0123456789", "bob": "bob-token-0123456789"}


def start_server(root: Path, default_permission: str) -> tuple[TrackingServer, object]:
    from server.deployment import _spawn

    for folder in ("secrets", "state"):
        (root / folder).mkdir(parents=True, mode=0o700)
    ca, cert, key = ensure_tls(root / "secrets" / "tls", ["127.0.0.1"])
    server = TrackingServer(root / "secrets", root / "state", "127.0.0.1", free_port(), ca, cert, key,
                            default_permission)
    command, variables = server.command()
    process = _spawn(command, root / "state" / "mlflow.log", {**os.environ, **variables})
    try:
        wait_healthy(f"{server.uri}/health", 120, ssl.create_default_context(cafile=str(ca)), process)
    except BaseException:
        stop_process(process)
        raise
    return server, process


def as_user(monkeypatch, server: TrackingServer, user: str, password: str) -> MlflowClient:
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", str(server.ca))
    return MlflowClient(server.uri)


def official_runs(monkeypatch, server: TrackingServer) -> dict[str, tuple[str, str]]:
    """As the intake and the node would: each contributor enrolled with one finished official run
    and its comparisons run, which names the other contributor's run."""
    import json

    admin = server.admin_environment()
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", admin["MLFLOW_TRACKING_PASSWORD"])
    monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", str(server.ca))
    node_password = json.loads(server.account("node").read_text())["password"]
    board = Board(server.uri, "cohortfl")
    board.set_up()
    runs = {}
    for contributor, password in PASSWORDS.items():
        experiment = board.enrol(contributor, password)
        run = MlflowClient(server.uri).create_run(experiment, tags={Tag.CONTRIBUTOR: contributor}).info.run_id
        runs[contributor] = (run, board.open_comparisons(run, contributor))
    node = as_user(monkeypatch, server, "node", node_password)
    for contributor, (run, comparisons) in runs.items():
        score = 0.8 if contributor == "alice" else 0.7
        for name, value in (("holdout_fine_tuned_macro_f1", score), ("holdout_fine_tuned_macro_f1_ci95_low",
                            score - 0.07), ("holdout_fine_tuned_macro_f1_ci95_high", score + 0.07),
                            ("holdout_out_of_the_box_macro_f1", 0.35)):
            node.log_metric(run, name, value)
        other = runs["bob" if contributor == "alice" else "alice"][0]
        node.set_tag(comparisons, f"{PAIRED_TAG_PREFIX}{other}", "0.1 [0.02, 0.18]")
        node.set_tag(run, Tag.RECORD_COMPLETE, "true")
    as_user(monkeypatch, server, "admin", admin["MLFLOW_TRACKING_PASSWORD"])
    for run, _ in runs.values():
        MlflowClient(server.uri).set_terminated(run, "FINISHED")
    return runs


def refused(call) -> bool:
    try:
        call()
    except MlflowException as ex:
        return "PERMISSION_DENIED" in str(ex) or "403" in str(ex)
    return False


@pytest.fixture(scope="module")
def embargoed(tmp_path_factory):
    """One server for the module: the tests below run in order, before and after publication."""
    server, process = start_server(tmp_path_factory.mktemp("embargo"), "NO_PERMISSIONS")
    with pytest.MonkeyPatch.context() as monkeypatch:
        try:
            yield server, official_runs(monkeypatch, server)
        finally:
            stop_process(process)


def test_before_publication_alice_reads_her_own_runs_and_nothing_of_bobs(embargoed, monkeypatch):
    server, runs = embargoed
    alice = as_user(monkeypatch, server, "alice", PASSWORDS["alice"])
    assert alice.get_run(runs["alice"][0]).data.metrics["holdout_fine_tuned_macro_f1"] == 0.8
    bobs_run, bobs_comparisons = runs["bob"]
    assert refused(lambda: alice.get_run(bobs_run))
    assert refused(lambda: alice.get_metric_history(bobs_run, "holdout_fine_tuned_macro_f1"))
    assert refused(lambda: alice.get_run(runs["alice"][1]))  # her comparisons name bob's run
    visible = {e.name for e in alice.search_experiments()}
    assert "cohortfl/bob" not in visible and "cohortfl/foundation" not in visible
    assert refused(lambda: alice.log_metric(runs["alice"][0], "holdout_fine_tuned_macro_f1", 1.0))
    assert not any(k.startswith(PAIRED_TAG_PREFIX) for k in alice.get_run(runs["alice"][0]).data.tags)


def test_after_publication_everyone_reads_the_board_and_still_nothing_private(embargoed, monkeypatch):
    server, runs = embargoed
    Board(server.uri, "cohortfl").publish()
    assert Board(server.uri, "cohortfl").publish() == []  # published once
    alice = as_user(monkeypatch, server, "alice", PASSWORDS["alice"])
    published = alice.get_experiment_by_name(f"cohortfl/{PUBLISHED}")
    board = alice.search_runs([published.experiment_id], "metrics.holdout_fine_tuned_macro_f1 > 0",
                              order_by=["metrics.holdout_fine_tuned_macro_f1 DESC"])
    assert [r.data.tags[Tag.CONTRIBUTOR] for r in board] == ["alice", "bob"]
    assert board[1].data.metrics["holdout_fine_tuned_macro_f1"] == 0.7
    assert not any(k.startswith(PAIRED_TAG_PREFIX) for r in board for k in r.data.tags)
    assert refused(lambda: alice.get_run(runs["bob"][0]))  # the private run stays private
    assert refused(lambda: alice.log_metric(board[1].info.run_id, "holdout_fine_tuned_macro_f1", 0.0))


def test_no_contributor_can_be_named_after_the_workspaces_own_accounts():
    from server.intake_service import Credentials

    for name in sorted(RESERVED):
        with pytest.raises(ValueError, match="reserved"):
            Credentials(Path("/nonexistent/contributors.json")).issue(name)


@pytest.mark.slow
def test_control_with_mlflows_shipped_default_alice_reads_bobs_run(tmp_path, monkeypatch):
    """The defence is the server's configuration: with MLflow's default permission (READ) the same
    attempt wins."""
    server, process = start_server(tmp_path, "READ")
    try:
        runs = official_runs(monkeypatch, server)
        alice = as_user(monkeypatch, server, "alice", PASSWORDS["alice"])
        assert alice.get_run(runs["bob"][0]).data.metrics["holdout_fine_tuned_macro_f1"] == 0.7
        assert any(k.startswith(PAIRED_TAG_PREFIX) for k in alice.get_run(runs["alice"][1]).data.tags)
    finally:
        stop_process(process)
