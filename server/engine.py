"""Starting one Flower run: on the simulation engine in this process, or on a SuperLink.

``run_simulation`` does what ``flwr run`` does for a local simulation
(``flwr-simulation`` calls the same ``_run_simulation``), minus packaging a FAB
and starting a SuperLink: the run config reaches the ServerApp through its
context and the ClientApp through an app manifest, as Flower fuses a FAB's config.

``run_on_superlink`` submits the project to a running SuperLink with ``flwr run``;
the SuperNodes run the foundation's ClientApp with their own ``--node-config``.

This is the only module that uses Flower's private API, all of it named in
``PRIVATE_FLOWER_API`` and checked by ``tests/test_flower_private_api.py``: on another Flower
version that test says which symbol moved, before a run fails.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import tomli_w
from flwr.app import Context, RecordDict, UserConfig
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import ServerApp
from flwr.simulation.run_simulation import _run_simulation
from flwr.supercore.constant import NOOP_FEDERATION_ID
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity
from flwr.supercore.telemetry import EventType

#: The Flower version whose internals this module was written against.
FLOWER_VERSION = "1.42.0"
#: Every private Flower symbol used here (module, name): an upgrade checks each of them.
PRIVATE_FLOWER_API = (
    ("flwr.simulation.run_simulation", "_run_simulation"),
    ("flwr.common.constant", "SUPERLINK_NODE_ID"),
    ("flwr.supercore.constant", "NOOP_FEDERATION_ID"),
    ("flwr.supercore.run", "Run"),
    ("flwr.supercore.task_identity", "TaskIdentity"),
    ("flwr.supercore.telemetry", "EventType"),
)


def run_simulation(server_app: ServerApp, client_app: ClientApp, run_config: UserConfig,
                   num_nodes: int = 1, use_gpu: bool = False, verbose: bool = False) -> None:
    """Run ``server_app`` against ``num_nodes`` nodes running ``client_app``.

    Parameters
    ----------
    run_config : UserConfig
        Flat keys and str/int/float values, as ``flwr run --run-config`` takes them.
    use_gpu : bool
        Give each node's actor one GPU.
    verbose : bool
        Show Flower's own log.

    Raises
    ------
    Exception
        Whatever the ServerApp raised.
    """
    run = Run.create_empty(run_id=secrets.randbits(63))
    run.primary_task_id = secrets.randbits(63)
    run.federation_id = NOOP_FEDERATION_ID
    # the identity Flower's own Python entry point gives an in-process run
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, run.run_id, SUPERLINK_NODE_ID
    context = Context(run_id=run.run_id, node_id=0, node_config={}, state=RecordDict(),
                      run_config=dict(run_config))
    backend_config = {
        # one actor per node: a second idle actor would cost a process and a torch import
        "client_resources": {"num_cpus": 1, "num_gpus": 1.0 if use_gpu else 0.0},
        # the actors' own output (Flower's warnings as it stops them) reaches the terminal with -v only
        "init_args": {"num_cpus": num_nodes, "num_gpus": 1 if use_gpu else 0, "log_to_driver": verbose},
    }
    # Failed replies reach the user through the ServerApp's error; -v shows Flower's own log.
    logging.getLogger("flwr").setLevel(logging.INFO if verbose else logging.CRITICAL)
    with tempfile.TemporaryDirectory(prefix="cohortfl-app-") as app_dir:
        write_app_manifest(Path(app_dir), run_config)
        _run_simulation(
            num_supernodes=num_nodes, exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
            client_app=client_app, server_app=server_app, server_app_context=context,
            backend_config=backend_config, app_dir=app_dir, is_app=True, run=run,
            verbose_logging=verbose,
        )


@contextmanager
def task_identity() -> Iterator[None]:
    """An in-process run's identity, while it lasts, for code that makes Flower messages outside
    a run (the workspace's rehearsal of a strategy); the one it replaces comes back after."""
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    try:
        yield
    finally:
        TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


def write_app_manifest(app_dir: Path, run_config: UserConfig) -> None:
    """A minimal Flower app ``pyproject.toml`` whose config is this run's config."""
    manifest = {
        "project": {"name": "cohortfl-run", "version": "0.1.0"},
        "tool": {"flwr": {"app": {
            "publisher": "cohortfl",
            "components": {"serverapp": "server.app:app", "clientapp": "client.app:app"},
            "config": dict(run_config),
        }}},
    }
    (app_dir / "pyproject.toml").write_text(tomli_w.dumps(manifest), encoding="utf-8")


def run_on_superlink(run_config: UserConfig, project_dir: Path, connection: str,
                     flwr_home: Path | None = None, timeout: float = 1800.0) -> str:
    """Submit the Flower app in ``project_dir`` to a SuperLink and stream it to the end.

    ``connection`` names a ``[superlink.NAME]`` entry of ``$FLWR_HOME/config.toml``.
    Returns the error text when ``flwr run`` fails or the ServerApp ended the submission
    (``SubmissionFailed``), else empty; whether the submission completed is for the caller to
    check in the official record.
    """

    env = {**os.environ, **({"FLWR_HOME": str(flwr_home)} if flwr_home else {})}
    with tempfile.TemporaryDirectory(prefix="cohortfl-run-") as tmp:
        config_file = Path(tmp) / "run-config.toml"  # a file: values hold spaces and quotes
        config_file.write_text(tomli_w.dumps(dict(run_config)), encoding="utf-8")
        try:
            done = subprocess.run(["flwr", "run", str(project_dir), connection, "--stream",
                                   "--run-config", str(config_file)],
                                  env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return (f"no result within {timeout:.0f} s; the run may still be going on the "
                    f"SuperLink: see `flwr ls {connection}` and `flwr stop`")
    if done.returncode:
        return done.stdout[-3000:] + done.stderr[-3000:]
    # `flwr run --stream` exits 0 even when the ServerApp raised: its reason is in the stream
    failed = re.findall(r"SubmissionFailed: (.+)", done.stdout)
    return failed[-1].strip()[:2000] if failed else ""
