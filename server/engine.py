"""Running one Flower run on Flower's simulation engine, in this process.

This is what ``flwr run`` does for a local simulation (``flwr-simulation``
calls the same ``_run_simulation``), minus packaging a FAB and starting a
SuperLink: the run config reaches the ServerApp through its context and the
ClientApp through an app manifest, exactly as Flower fuses a FAB's config.
"""

from __future__ import annotations

import logging
import secrets
import tempfile
from pathlib import Path

import tomli_w
from flwr.app import Context, RecordDict
from flwr.app.user_config import UserConfig
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import ServerApp
from flwr.simulation.run_simulation import _run_simulation
from flwr.supercore.constant import NOOP_FEDERATION_ID
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity
from flwr.supercore.telemetry import EventType


def run_simulation(server_app: ServerApp, client_app: ClientApp, run_config: UserConfig,
                   num_nodes: int = 1, use_gpu: bool = False, verbose: bool = False) -> None:
    """Run ``server_app`` against ``num_nodes`` nodes running ``client_app``.

    Raises whatever the ServerApp raised.
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
        "init_args": {"num_cpus": num_nodes, "num_gpus": 1 if use_gpu else 0},
    }
    logging.getLogger("flwr").setLevel(logging.INFO if verbose else logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="cohortfl-app-") as app_dir:
        write_app_manifest(Path(app_dir), run_config)
        _run_simulation(
            num_supernodes=num_nodes, exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
            client_app=client_app, server_app=server_app, server_app_context=context,
            backend_config=backend_config, app_dir=app_dir, is_app=True, run=run,
            verbose_logging=verbose,
        )


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
