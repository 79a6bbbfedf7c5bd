"""``cohortfl node --config node.yaml``: the foundation starts its node.

Everything comes from the node's own file and its own install, nothing from a
run, a bundle or a contributor's command line:

.. code-block:: yaml

    data-path: /srv/cohort/cohort.parquet       # 0600/0700: no other user may read it
    state-dir: /var/lib/cohortfl                # ledger, secret, keys (0700)
    tracking-uri: http://127.0.0.1:5000         # the official record
    workspace-key: /etc/cohortfl/grant-key.pem.pub
    superlink: 127.0.0.1:9092                   # the workspace's fleet gate
    root-certificates: /etc/cohortfl/ca.crt     # the workspace's CA
    policy: pilot                               # conf/policy/<name>.yaml of this install
    # optional: device, holdout-size, split-seed

It starts Flower's SuperNode (TLS to the workspace, SuperNode authentication
with the node's own key, ``--isolation process`` with a secret only this process
holds) and serves every message with the installed ClientApp
(``client/executor.py``); the cohort stays loaded between messages.
"""

from __future__ import annotations

import ctypes
import logging
import os
import secrets
import signal
import socket
import stat
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from client.app import build_client_app
from client.errors import NodeError
from client.executor import NodeExecutor
from client.node import Node, check_cohort
from client.settings import NodeSettings

log = logging.getLogger("cohortfl.node")

DEPLOYMENT_KEYS = ("superlink", "root-certificates")
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class NodeService:
    """The node's deployment: its settings plus how it reaches the workspace."""

    settings: NodeSettings
    superlink: str
    root_certificates: Path

    @property
    def auth_key(self) -> Path:
        """The node's private SuperNode-authentication key (its ``.pub`` goes to the workspace)."""
        return Path(self.settings.state_dir) / "node-key"

    @classmethod
    def from_file(cls, path: Path) -> NodeService:
        """Read the node's own YAML file, refusing unknown or missing keys."""
        try:
            config = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as ex:
            raise NodeError(f"cannot read the node's file {path}: {ex}") from None
        if not isinstance(config, dict):
            raise NodeError(f"{path} must be a mapping of node settings")
        known = {"data-path", "tracking-uri", "state-dir", "workspace-key", "policy", "device",
                 "holdout-size", "split-seed", *DEPLOYMENT_KEYS}
        unknown, missing = sorted(set(config) - known), [k for k in DEPLOYMENT_KEYS if k not in config]
        if unknown or missing:
            raise NodeError(f"{path}: unknown keys {unknown}, missing {missing}")
        settings = NodeSettings.from_node_config({k: v for k, v in config.items()
                                                  if k not in DEPLOYMENT_KEYS})
        return cls(settings, str(config["superlink"]), Path(config["root-certificates"]))


def check_private(path: Path) -> None:
    """Refuse a cohort, state directory or key that another user of this machine could read
    (the contributors' ServerApps run as other users)."""
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise NodeError(f"{path} is readable by other users (mode {stat.filemode(mode)}); "
                        f"chmod {'700' if path.is_dir() else '600'} it")


def ensure_node_key(path: Path) -> Path:
    """The node's P-384 key pair (OpenSSH format, as Flower reads it); returns the public key."""
    public = path.with_name(path.name + ".pub")
    if not path.is_file():
        key = ec.generate_private_key(ec.SECP384R1())
        _create_private(path, key.private_bytes(serialization.Encoding.PEM,
                                                serialization.PrivateFormat.OpenSSH,
                                                serialization.NoEncryption()))
        public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                         serialization.PublicFormat.OpenSSH))
    return public


def _create_private(path: Path, data: bytes) -> None:
    """A new file readable by this user only; never overwrites."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)


def prepare(service: NodeService) -> Path:
    """Check the node's files and make its keys; return the public key to register."""
    state = Path(service.settings.state_dir)
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    for path in (Path(service.settings.data_path), state):
        check_private(path)
    check_cohort(service.settings)
    return ensure_node_key(service.auth_key)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_node(service: NodeService, stop: threading.Event, poll_interval: float = 0.05,
             restart_delay: float = 10.0) -> int:
    """Start the SuperNode and serve its messages until ``stop`` is set.

    A SuperNode that exits is started again after ``restart_delay`` s: after the node's
    machine restarts, the SuperLink refuses the node's key (exit 305) until it has seen the
    old session's heartbeats stop, about a minute.
    """
    # a store that is down costs one short try per write, not minutes of retries: the writes wait
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    prepare(service)
    state = Path(service.settings.state_dir)
    secret_file = state / "superexec-secret"
    if not secret_file.is_file():
        _create_private(secret_file, secrets.token_bytes(32))
    port = _free_port()
    command = [str(Path(sys.executable).parent / "flower-supernode"),
               "--superlink", service.superlink, "--root-certificates", str(service.root_certificates),
               "--auth-supernode-private-key", str(service.auth_key),
               "--auth-supernode-public-key", str(service.auth_key) + ".pub",
               "--isolation", "process", "--superexec-auth-secret-file", str(secret_file),
               "--host", "127.0.0.1", "--port", str(port)]
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
           "FLWR_HOME": str(state / "flwr")}
    supernode: list[subprocess.Popen] = []

    def supervise() -> None:
        while not stop.is_set():
            supernode[:] = [subprocess.Popen(command, env=env, preexec_fn=_die_with_parent)]
            code = supernode[0].wait()
            if not stop.is_set():
                log.warning("the SuperNode exited with %s; starting it again in %.0f s", code,
                            restart_delay)
                stop.wait(restart_delay)

    supervisor = threading.Thread(target=supervise, daemon=True)
    supervisor.start()
    executor = NodeExecutor(f"127.0.0.1:{port}", secret_file.read_bytes(),
                            build_client_app(service.settings), poll_interval,
                            idle=lambda: Node.for_settings(service.settings).deliver_queued())
    try:
        executor.serve_forever(stop)
    finally:
        stop.set()
        for process in supernode:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        supervisor.join(timeout=30)
    return 0


def _die_with_parent() -> None:
    """In the SuperNode's process: die when the node's process dies, however it dies (a SuperNode
    without the node's executor would keep taking the node's messages and answer none)."""
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
