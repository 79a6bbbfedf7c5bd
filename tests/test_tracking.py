"""The MLflow store is checked before any engine starts: a bad URI fails in seconds, named."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from server.errors import TrackingStoreError
from server.tracking import check_tracking_uri


def test_an_unreachable_tracking_server_fails_in_seconds_naming_the_uri():
    started = time.monotonic()
    with pytest.raises(TrackingStoreError, match=r"http://127\.0\.0\.1:1 is not reachable"):
        check_tracking_uri("http://127.0.0.1:1")
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("make_uri, why", [
    (lambda tmp: "sqlite:////proc/x.db", "cannot be created"),
    (lambda tmp: f"sqlite:///{tmp / 'a-file'}/mlflow.db", "cannot be created"),
    (lambda tmp: f"sqlite:///{tmp}", "not a file"),
])
def test_a_sqlite_store_that_cannot_be_written_is_refused_naming_the_uri(tmp_path, make_uri, why):
    (tmp_path / "a-file").write_text("not a folder")
    uri = make_uri(tmp_path)
    with pytest.raises(TrackingStoreError, match=why) as info:
        check_tracking_uri(uri)
    assert uri in str(info.value)


def test_a_writable_sqlite_store_passes_and_reading_never_creates_one(tmp_path):
    uri = f"sqlite:///{tmp_path}/new/mlflow.db"
    check_tracking_uri(uri)
    with pytest.raises(TrackingStoreError, match="no MLflow store"):
        check_tracking_uri(uri, must_exist=True)
    assert not (tmp_path / "new").exists()


def test_cohortfl_run_on_an_unreachable_store_stops_before_the_engine(tmp_path):
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr-home")}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "server.cli", "run", "model=linear",
                           "tracking.uri=http://127.0.0.1:1", f"output_dir={tmp_path}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "http://127.0.0.1:1 is not reachable" in done.stderr
    assert "round" not in done.stdout and time.monotonic() - started < 60


@pytest.mark.slow
def test_two_runs_started_at_once_on_a_new_store_both_finish(tmp_path):
    """Both would migrate the new SQLite schema and create the experiment, the node's secret and
    the workspace's key at the same moment."""
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr-home")}
    runs = [subprocess.Popen([sys.executable, "-m", "server.cli", "run", "model=linear",
                              f"contributor=c{i}", "workspace.num_rounds=1", f"output_dir={tmp_path}"],
                             cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True) for i in range(2)]
    printed = [run.communicate(timeout=600)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], printed
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    [experiment] = [e for e in client.search_experiments() if e.name == "cohortfl-leaderboard"]
    assert sorted(r.info.status for r in client.search_runs([experiment.experiment_id])) == \
        ["FINISHED", "FINISHED"]


def test_a_run_left_running_by_an_unreachable_store_is_closed_once_its_record_is_complete(tmp_path):
    from mlflow.tracking import MlflowClient
    from runs import local_signer

    from client.settings import NodeSettings
    from contract.names import Tag
    from server.workspace import Workspace

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    node = NodeSettings(data_path="", tracking_uri=uri, state_dir=str(tmp_path / "state"))
    workspace = Workspace(node, "board", local_signer(tmp_path))
    client = MlflowClient(uri)
    late = client.create_run(workspace.experiment_id).info.run_id  # its record arrived late
    going = client.create_run(workspace.experiment_id).info.run_id  # another command's, under way
    client.set_tag(late, Tag.RECORD_COMPLETE, "true")
    assert workspace.close_recorded() == [late]
    assert client.get_run(late).info.status == "FINISHED"
    assert client.get_run(going).info.status == "RUNNING"


def _tracking_server(folder, port: int) -> subprocess.Popen:
    """A real ``mlflow server`` (SQLite behind it), up when this returns."""
    import urllib.request

    server = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "mlflow"), "server", "--backend-store-uri",
         f"sqlite:///{folder}/server.db", "--artifacts-destination", str(folder / "artifacts"),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return server
        except OSError:
            time.sleep(0.5)
    server.kill()
    raise RuntimeError("the tracking server did not start")


def _stop(server: subprocess.Popen) -> None:
    import signal

    os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=30)


@pytest.mark.slow
def test_a_tracking_server_stopped_mid_run_loses_nothing_and_the_next_run_closes_it(tmp_path):
    """The store goes away after the out-of-the-box score: the run ends saying so (no traceback,
    no hang), the node keeps its final record in its outbox, and once the store is back the next
    command's node delivers it and the workspace closes the first run FINISHED."""
    import socket

    from mlflow.tracking import MlflowClient

    from client.ledger import NodeLedger

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr-home")}
    def command(rounds: int) -> list[str]:
        return [sys.executable, "-m", "server.cli", "run", "model=linear", f"workspace.num_rounds={rounds}",
                f"tracking.uri={uri}", f"output_dir={tmp_path}"]

    server = _tracking_server(tmp_path, port)
    try:
        run = subprocess.Popen(command(8), cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
        printed = []
        for line in run.stdout:
            printed.append(line)
            if "holdout out of the box recorded" in line:
                _stop(server)
                break
        printed.append(run.communicate(timeout=300)[0])
        shown = "".join(printed)
        assert run.returncode == 1 and "Traceback" not in shown, shown
        assert "the node keeps its official record" in shown
        assert NodeLedger(tmp_path / "node-state" / "ledger.sqlite").queued_writes()  # kept
        server = _tracking_server(tmp_path, port)
        again = subprocess.run(command(1), cwd=tmp_path, env=env, capture_output=True, text=True,
                               timeout=300)
        assert again.returncode == 0, again.stdout + again.stderr
        assert not NodeLedger(tmp_path / "node-state" / "ledger.sqlite").queued_writes()
        client = MlflowClient(uri)
        [experiment] = [e for e in client.search_experiments() if e.name == "cohortfl-leaderboard"]
        runs = client.search_runs([experiment.experiment_id])
        assert [r.info.status for r in runs] == ["FINISHED", "FINISHED"]
        first = min(runs, key=lambda r: r.info.start_time)
        assert "holdout_fine_tuned_macro_f1" in first.data.metrics  # the record the node kept
    finally:
        if server.poll() is None:
            _stop(server)


def test_a_sixth_submission_is_refused_before_a_run_exists(tmp_path):
    """The node's count, as it recorded it on the contributor's latest run, is read before anything
    starts; the node still enforces it itself."""
    from dataclasses import replace

    from mlflow.tracking import MlflowClient
    from runs import local_signer, node_run

    from client.errors import PolicyViolation
    from client.settings import NodeSettings
    from contract.names import Tag
    from models import ModelSpec
    from server.workspace import Workspace

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    node = NodeSettings(data_path="", tracking_uri=uri, state_dir=str(tmp_path / "state"))
    workspace = Workspace(node, "board", local_signer(tmp_path))
    client = MlflowClient(uri)
    latest = client.create_run(workspace.experiment_id, tags={Tag.CONTRIBUTOR: "ada"}).info.run_id
    client.log_metric(latest, "budget_submissions_used", 5)
    ada = replace(node_run("ada", "", ModelSpec(name="linear")), num_rounds=2)
    with pytest.raises(PolicyViolation, match="submission-limit.*5 of 5"):
        workspace.check(ada)
    workspace.check(replace(ada, contributor="bob"))  # bob has used none
    assert len(client.search_runs([workspace.experiment_id])) == 1  # nothing opened
