"""``cohortfl node --config node.yaml``: the foundation starts its node.

Everything comes from the node's own file and its own install, nothing from a
run, a bundle or a contributor's command line:

.. code-block:: yaml

    data-path: /srv/cohort/cohort.parquet       # 0600/0700: no other user may read it
    state-dir: /var/lib/cohortfl                # ledger, secret, keys (0700)
    tracking-uri: https://workspace:5000        # the official record: https, or a local store
    tracking-credentials: /etc/cohortfl/tracking-node.json  # 0600: the node's MLflow account
    workspace-key: /etc/cohortfl/grant-key.pem.pub
    superlink: 127.0.0.1:9092                   # the workspace's fleet gate
    root-certificates: /etc/cohortfl/ca.crt     # the workspace's CA
    policy: pilot                               # conf/policy/<name>.yaml of this install
    dictionary: /etc/cohortfl/dictionary.yaml   # the cohort's data dictionary (default: the demo's)
    # optional: device, holdout-size or holdout-fraction (stable as the cohort grows), split-seed

It starts Flower's SuperNode (TLS to the workspace, SuperNode authentication
with the node's own key, ``--isolation process`` with a secret only this process
holds) and serves every message with the installed ClientApp
(``client/executor.py``); the cohort stays loaded between messages. The official
record goes to the workspace's MLflow over TLS (the same CA), as the node's own
account; a tracking URI that is neither https nor on this machine is refused.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import secrets
import signal
import socket
import stat
import subprocess
import sys
import threading
import urllib.parse
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
from contract.files import create_once, write_whole
from contract.names import MLFLOW_ACCOUNT_VARIABLES

log = logging.getLogger("cohortfl.node")

DEPLOYMENT_KEYS = ("superlink", "root-certificates")
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class NodeService:
    """The node's deployment: its settings plus how it reaches the workspace."""

    settings: NodeSettings
    superlink: str
    root_certificates: Path
    tracking_credentials: Path | None = None

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
        own = (*DEPLOYMENT_KEYS, "tracking-credentials")
        known = {"data-path", "tracking-uri", "state-dir", "workspace-key", "policy", "device",
                 "holdout-size", "holdout-fraction", "split-seed", "dictionary", *own}
        unknown, missing = sorted(set(config) - known), [k for k in DEPLOYMENT_KEYS if k not in config]
        if unknown or missing:
            raise NodeError(f"{path}: unknown keys {unknown}, missing {missing}")
        settings = NodeSettings.from_node_config({k: v for k, v in config.items() if k not in own})
        check_tracking_uri(settings.tracking_uri)
        credentials = config.get("tracking-credentials")
        return cls(settings, str(config["superlink"]), Path(config["root-certificates"]),
                   Path(credentials) if credentials else None)

    def tracking_environment(self) -> dict[str, str]:
        """The node's MLflow account and the workspace's CA, for its own MLflow clients."""
        env = {}
        if self.tracking_credentials is not None:
            check_private(self.tracking_credentials)
            try:
                account = json.loads(self.tracking_credentials.read_text(encoding="utf-8"))
                env = {"MLFLOW_TRACKING_USERNAME": str(account["username"]),
                       "MLFLOW_TRACKING_PASSWORD": str(account["password"])}
            except (OSError, ValueError, KeyError, TypeError) as ex:
                raise NodeError(f"tracking-credentials {self.tracking_credentials}: not the "
                                f"workspace's account file ({type(ex).__name__}: {ex})") from None
        if self.settings.tracking_uri.startswith("https://"):
            env["MLFLOW_TRACKING_SERVER_CERT_PATH"] = str(self.root_certificates)
        return env


def check_tracking_uri(uri: str) -> None:
    """The official record travels over TLS unless it stays on this machine."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme == "http" and parts.hostname not in LOCAL_HOSTS:
        raise NodeError(f"tracking-uri {uri}: the official record would cross the network "
                        f"unencrypted; use https:// (the workspace's MLflow serves TLS)")


def check_private(path: Path) -> None:
    """Refuse a cohort, state directory or key that another user of this machine could read
    (the contributors' ServerApps run as other users)."""
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise NodeError(f"{path} is readable by other users (mode {stat.filemode(mode)}); "
                        f"chmod {'700' if path.is_dir() else '600'} it")


def ensure_node_key(path: Path) -> Path:
    """The node's P-384 key pair (OpenSSH format, as Flower reads it); returns the public key,
    written from the private key on disk (whichever process created it)."""
    made = b"" if path.is_file() else ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    key = serialization.load_ssh_private_key(create_once(path, made), password=None)
    public = path.with_name(path.name + ".pub")
    write_whole(public, key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                      serialization.PublicFormat.OpenSSH))
    return public


def prepare(service: NodeService) -> Path:
    """Check the node's files and make its keys; return the public key to register."""
    state = Path(service.settings.state_dir)
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    for path in (Path(service.settings.data_path), state):
        check_private(path)
    check_cohort(service.settings)
    service.tracking_environment()  # a bad account file is refused before anything starts
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
    os.environ.update(service.tracking_environment())
    # the cohort loaded and its version numbered (or refused: cohort-version-change) before any message
    node = Node.for_settings(service.settings)
    log.info("serving cohort version %d: %d records", node.cohort_version, node.cohort.n_records)
    state = Path(service.settings.state_dir)
    secret_file = state / "superexec-secret"
    create_once(secret_file, secrets.token_bytes(32))
    port = _free_port()
    command = [str(Path(sys.executable).parent / "flower-supernode"),
               "--superlink", service.superlink, "--root-certificates", str(service.root_certificates),
               "--auth-supernode-private-key", str(service.auth_key),
               "--auth-supernode-public-key", str(service.auth_key) + ".pub",
               "--isolation", "process", "--superexec-auth-secret-file", str(secret_file),
               "--host", "127.0.0.1", "--port", str(port)]
    env = supernode_environment(state)
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


def supernode_environment(state: Path) -> dict[str, str]:
    """The SuperNode's environment: this process's, less the node's MLflow account."""
    return {**{k: v for k, v in os.environ.items() if k not in MLFLOW_ACCOUNT_VARIABLES},
            "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_HOME": str(state / "flwr")}


def _die_with_parent() -> None:
    """In the SuperNode's process: die when the node's process dies, however it dies (a SuperNode
    without the node's executor would keep taking the node's messages and answer none)."""
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
