"""Stopping a run or the demo half-way: it ends within seconds, its runs say KILLED, and no
process is left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient
from processes import engine_processes_after

EXPERIMENT = "cohortfl-leaderboard"


def as_a_terminals_job() -> None:
    """SIGINT as a terminal's foreground job has it: a test run in the background (``cmd &`` in a
    script, as CI may do) inherits SIGINT ignored, and Python then installs no Ctrl-C handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(tmp_path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr-home")}
    return subprocess.Popen([sys.executable, "-m", "server.cli", *args, f"output_dir={tmp_path}"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True, preexec_fn=as_a_terminals_job)


def interrupt_when(process: subprocess.Popen, line: str, signum: int) -> tuple[float, str]:
    """Send ``signum`` to the command's process group (as a terminal's Ctrl-C does) once it has
    printed ``line``; seconds until it exited, and what it printed."""
    printed = []
    try:
        for text in process.stdout:
            printed.append(text)
            if line in text:
                break
        sent = time.monotonic()
        os.killpg(process.pid, signum)
        rest, _ = process.communicate(timeout=60)
        return time.monotonic() - sent, "".join(printed) + rest
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)


def statuses(tmp_path) -> list[str]:
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name(EXPERIMENT)
    return [run.info.status for run in client.search_runs([experiment.experiment_id])]


@pytest.fixture(autouse=True)
def no_engine_before():
    left = engine_processes_after(10)
    assert left == "", f"another test left engine processes running: {left}"


def test_one_ctrl_c_during_a_run_ends_it_within_seconds_marked_killed(tmp_path):
    run = start(tmp_path, "run", "model=linear", "workspace.num_rounds=20", "workspace.parallel_runs=1")
    seconds, printed = interrupt_when(run, "holdout out of the box recorded", signal.SIGINT)
    assert run.returncode == 130, printed
    assert seconds < 15, printed
    assert "marked KILLED" in printed and "Traceback" not in printed
    assert statuses(tmp_path) == ["KILLED"]
    assert engine_processes_after(30) == ""


def test_sigterm_during_the_demo_stops_its_runs_and_their_engines(tmp_path):
    demo = start(tmp_path, "demo", "++pretrain.epochs=1")
    _, printed = interrupt_when(demo, "holdout out of the box recorded", signal.SIGTERM)
    assert demo.returncode == 130, printed
    found = statuses(tmp_path)
    assert found and "RUNNING" not in found, found  # the runs that had not ended, KILLED
    assert "KILLED" in found
    assert engine_processes_after(30) == ""


@pytest.mark.slow
def test_a_run_whose_node_process_dies_ends_failed_with_the_reason(tmp_path):
    run = start(tmp_path, "run", "model=linear", "workspace.num_rounds=30")
    printed = []
    try:
        for text in run.stdout:
            printed.append(text)
            if "holdout out of the box recorded" in text:
                break
        subprocess.run(["pkill", "-9", "-f", "ClientAppActor"], check=True)  # the node's process
        rest, _ = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    assert run.returncode == 1, "".join(printed) + rest
    assert statuses(tmp_path) == ["FAILED"]
    assert "Not on the board" in rest and "ActorDiedError" in rest
    assert engine_processes_after(30) == ""
