"""The deployment engine: a real SuperLink and SuperNode on loopback, ``flwr run``.

Slow (each message starts a ClientApp process): one submission with two rounds.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from runs import local_signer

from client.settings import NodeSettings
from contract.submission import Submission
from models import ModelSpec
from server.engine import run_on_superlink
from server.workspace import Workspace
from synthetic.disease import generate_cohort

pytestmark = pytest.mark.slow
PROJECT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args: list[str], log: Path, env: dict) -> subprocess.Popen:
    """A process in its own session, so that it and its children can be stopped together."""
    with log.open("w") as handle:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(args, stdout=handle, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)


def stop(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def wait_for(log: Path, text: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text():
        assert time.monotonic() < deadline, f"'{text}' not in {log.name}:\n{log.read_text()}"
        time.sleep(0.5)


@pytest.fixture
def federation(tmp_path):
    """SuperLink + one SuperNode holding a synthetic cohort; yields (node settings, FLWR_HOME)."""
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr-home"), "FLWR_TELEMETRY_ENABLED": "0"}
    generate_cohort(0).to_parquet(tmp_path / "cohort.parquet", index=False)
    node = NodeSettings(data_path=str(tmp_path / "cohort.parquet"),
                        tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
                        state_dir=str(tmp_path / "node-state"),
                        workspace_key=str(local_signer(tmp_path).public_key_path))
    link_port, node_port = free_port(), free_port()
    processes = []
    try:
        processes.append(start([str(bin_dir / "flower-superlink"), "--insecure", "--host", "127.0.0.1",
                                "--port", str(link_port), "--database", str(tmp_path / "state.db"),
                                "--disable-runtime-dependency-installation"],
                               tmp_path / "superlink.log", env))
        node_config = " ".join(f'{k}="{v}"' for k, v in {
            "data-path": node.data_path, "tracking-uri": node.tracking_uri,
            "state-dir": node.state_dir, "workspace-key": node.workspace_key}.items())
        processes.append(start([str(bin_dir / "flower-supernode"), "--insecure", "--superlink",
                                f"127.0.0.1:{link_port}", "--host", "127.0.0.1", "--port",
                                str(node_port), "--node-config", node_config],
                               tmp_path / "supernode.log", env))
        wait_for(tmp_path / "supernode.log", "Starting Flower SuperExec")
        home = tmp_path / "flwr-home"
        home.mkdir(exist_ok=True)
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "loopback"\n\n[superlink.loopback]\n'
            f'address = "127.0.0.1:{link_port}"\ninsecure = true\n')
        yield node, home
    finally:
        for process in reversed(processes):
            stop(process)


def test_a_submission_runs_on_superlink_and_supernode(federation):
    node, home = federation
    workspace = Workspace(node, "deployment", local_signer(home.parent))
    submission = workspace.open_run(Submission(
        contributor="alice", strategy={"_target_": "flwr.serverapp.strategy.FedAvg",
                                       "fraction_evaluate": 0.0},
        model=ModelSpec("linear"), lr=0.1, batch_size=32, local_epochs=1, num_rounds=2))
    error = run_on_superlink(workspace.run_config(submission), PROJECT, "loopback", flwr_home=home,
                             timeout=400)
    outcome = workspace.close_run(submission, error)
    assert outcome.ok, outcome.error
    run = workspace.client.get_run(submission.submission_id)
    assert run.data.metrics["compute_flops"] > 0 and run.data.metrics["rounds_trained"] == 2
    assert {"holdout_out_of_the_box_macro_f1", "holdout_fine_tuned_macro_f1",
            "holdout_fine_tuned_recall_fast", "privacy_epsilon"} <= set(run.data.metrics)
