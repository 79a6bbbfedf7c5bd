"""``cohortfl workspace --dir D``: the foundation's workspace on the deployment engine.

It starts, and stops together:

- Flower's **SuperLink** on loopback only (TLS, SuperNode authentication,
  ``--isolation process``): its Control API has no login, so nothing but this
  process and the machine's operator reaches it;
- the **fleet gate** (``server/gate.py``), the address nodes are given: TLS, Fleet API only;
- the **ServerApp executor** (``server/sandbox.py``): every contributor ServerApp in a sandbox;
- the **MLflow tracking server** (``server/tracking_server.py``: TLS, basic-auth, an account
  per node and per contributor), where the node writes the official record, each contributor
  reads only their own runs until the foundation publishes them (``server/embargo.py``);
- the **intake** (``server/intake_service.py``): contributors submit packages with their
  own credential over TLS; the workspace signs each run's grant and starts it.

Files under ``D`` (created on first start):

====================  ======  =====================================================
``public/``           0755    ``ca.crt`` and ``grant-key.pem.pub``: give them to the node
``secrets/``          0700    TLS key, grant-signing key, SuperExec secret, credentials,
                              MLflow passwords; ``tracking-node.json`` goes to the node
``state/``            0700    SuperLink database, MLflow store, logs, the release bundle
``sandbox/``          0711    one 0700 folder per running ServerApp, owned by its uid
====================  ======  =====================================================
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from server.embargo import Board
from server.gate import Gate, Upstream, fleet_gate
from server.pki import ensure_tls, write_private
from server.sandbox import SandboxLimits, ServerAppExecutor
from server.signing import WorkspaceSigner
from server.tracking_server import TrackingServer, use_as_admin, without_tracking_account

log = logging.getLogger("cohortfl.workspace")

#: The packages of the release bundle the workspace submits: the ServerApp's code and
#: what it imports. The node never loads bundle code (client/executor.py).
RELEASE_PACKAGES = ("server", "contract", "models", "strategies", "conf")
PROJECT = Path(__file__).resolve().parent.parent


def _unix(stamp: str) -> float:
    """``2026-12-02 14:31:52Z`` (as ``flwr supernode ls`` prints it) as a Unix time; 0 if not one."""
    try:
        return datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%SZ").replace(
            tzinfo=datetime.UTC).timestamp()
    except ValueError:
        return 0.0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Layout:
    """Where the workspace keeps what (see the module's table)."""

    root: Path

    @property
    def public(self) -> Path:
        return self.root / "public"

    @property
    def secrets(self) -> Path:
        return self.root / "secrets"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def sandbox(self) -> Path:
        return self.root / "sandbox"

    @property
    def ca(self) -> Path:
        return self.public / "ca.crt"

    @property
    def grant_public_key(self) -> Path:
        return self.public / "grant-key.pem.pub"

    @property
    def credentials(self) -> Path:
        return self.secrets / "contributors.json"

    @property
    def tracking_file(self) -> Path:
        """The running MLflow server's URI and experiment base, for the foundation's commands."""
        return self.state / "tracking.json"

    @property
    def flwr_home(self) -> Path:
        """The Flower CLI's home for the workspace's own Control API connection."""
        return self.secrets / "flwr"

    def create(self) -> None:
        for folder, mode in ((self.root, 0o711), (self.public, 0o755), (self.secrets, 0o700),
                             (self.state, 0o700), (self.sandbox, 0o711)):
            folder.mkdir(parents=True, exist_ok=True)
            os.chmod(folder, mode)


def stage_release(target: Path) -> Path:
    """The foundation's release as a Flower app folder: manifest and server-side packages."""
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    shutil.copy2(PROJECT / "pyproject.toml", target / "pyproject.toml")
    for package in RELEASE_PACKAGES:
        shutil.copytree(PROJECT / package, target / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return target


def _spawn(command: list[str], log_file: Path, env: dict[str, str]) -> subprocess.Popen:
    with log_file.open("ab") as output:
        return subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def stop_process(process: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGTERM a process's group, SIGKILL it after ``timeout`` s."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=timeout)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def wait_healthy(url: str, timeout: float, context: ssl.SSLContext | None = None,
                 process: subprocess.Popen | None = None) -> None:
    """Wait for ``url`` to answer 200; raise naming it after ``timeout`` s or if the process died."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{url}: the process exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")
        time.sleep(0.25)


class WorkspaceService:
    """The workspace's processes; ``start()`` then ``stop()``.

    Parameters
    ----------
    root : Path
        The workspace's folder (``Layout``).
    host : str
        Where nodes and contributors reach the workspace (fleet gate, intake).
    fleet_port, intake_port, mlflow_port : int
        0 picks free ports.
    limits : SandboxLimits
        What each contributor ServerApp may use.
    overrides : tuple of str
        The operator's Hydra overrides of the workspace's configuration (``workspace.num_rounds=5``).
    """

    def __init__(self, root: Path, host: str = "127.0.0.1", fleet_port: int = 0, intake_port: int = 0,
                 mlflow_port: int = 0, limits: SandboxLimits | None = None, experiment: str = "cohortfl",
                 overrides: tuple[str, ...] = ()) -> None:
        self.layout = Layout(Path(root).resolve())
        self.host = host
        self.fleet_port = fleet_port or free_port(host)
        self.intake_port = intake_port or free_port(host)
        self.limits, self.experiment = limits or SandboxLimits(), experiment
        self.overrides = tuple(overrides)
        self.link_port = free_port()
        self.mlflow_port = mlflow_port or free_port(host)
        self.tracking: TrackingServer | None = None
        self.board: Board | None = None
        self.gates: list[Gate] = []
        self.threads: list[threading.Thread] = []
        self.stopping = threading.Event()
        self.executor: ServerAppExecutor | None = None
        self.intake = None
        self.mlflow: subprocess.Popen | None = None
        self.superlink: subprocess.Popen | None = None

    @property
    def tracking_uri(self) -> str:
        return f"https://{self.host}:{self.mlflow_port}"

    @property
    def connection(self) -> str:
        return "workspace"

    def env(self) -> dict[str, str]:
        """The environment of the processes the workspace starts: never its MLflow account."""
        return {**without_tracking_account(dict(os.environ)), "FLWR_TELEMETRY_ENABLED": "0",
                "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_HOME": str(self.layout.flwr_home)}

    def start(self) -> None:
        """Create the files and start everything; on any failure stop what started, and raise."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        from server.intake_service import IntakeServer

        # a store that is down costs a short try, not minutes of MLflow's retries
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        layout = self.layout
        layout.create()
        ca, cert, key = ensure_tls(layout.secrets / "tls", sorted({self.host, "127.0.0.1"}))
        shutil.copy2(ca, layout.ca)
        signer = WorkspaceSigner(layout.secrets / "grant-key.pem")
        shutil.copy2(signer.public_key_path, layout.grant_public_key)
        secret_file = layout.secrets / "superexec-secret"
        if not secret_file.is_file():
            write_private(secret_file, os.urandom(32))
        logs = layout.state / "logs"
        logs.mkdir(exist_ok=True)
        bin_dir = Path(sys.executable).parent
        self._superlink_command = [
            str(bin_dir / "flower-superlink"), "--ssl-ca-certfile", str(ca), "--ssl-certfile", str(cert),
            "--ssl-keyfile", str(key), "--enable-supernode-auth", "--isolation", "process",
            "--superexec-auth-secret-file", str(secret_file), "--database",
            str(layout.state / "superlink.db"), "--host", "127.0.0.1", "--port", str(self.link_port)]
        self.restart_superlink()
        layout.flwr_home.mkdir(exist_ok=True)
        (layout.flwr_home / "config.toml").write_text(
            f'[superlink]\ndefault = "{self.connection}"\n\n[superlink.{self.connection}]\n'
            f'address = "127.0.0.1:{self.link_port}"\nroot-certificates = "{ca}"\n', encoding="utf-8")
        self.tracking = TrackingServer(layout.secrets, layout.state, self.host, self.mlflow_port,
                                       ca, cert, key)
        use_as_admin(self.tracking)
        self.start_mlflow(wait=False)  # it starts while the rest does
        upstream = Upstream("127.0.0.1", self.link_port, ca)
        self.gates.append(fleet_gate(self.host, self.fleet_port, upstream, cert, key))
        self.executor = ServerAppExecutor(f"127.0.0.1:{self.link_port}", secret_file.read_bytes(), ca,
                                          layout.sandbox, logs, self.limits)
        self._thread(self.executor.serve_forever, self.stopping)
        self._wait_mlflow()
        self.node_tracking_account = self.tracking.account("node")
        self.board = Board(self.tracking_uri, self.experiment)
        self.board.set_up()
        layout.tracking_file.write_text(json.dumps({"uri": self.tracking_uri, "base": self.experiment}),
                                        encoding="utf-8")  # for `cohortfl publish`
        release = stage_release(layout.state / "release")
        self.intake = IntakeServer(self, signer, release, cert, key)
        self._thread(self.intake.serve_forever)
        log.info("workspace up: fleet gate %s:%d, intake https://%s:%d, MLflow %s", self.host,
                 self.fleet_port, self.host, self.intake_port, self.tracking_uri)

    def restart_superlink(self) -> None:
        """(Re)start the SuperLink on its port and database, and wait until it answers."""
        if self.superlink is not None:
            stop_process(self.superlink)
        self.superlink = _spawn(self._superlink_command, self.layout.state / "logs" / "superlink.log",
                                self.env())
        context = ssl.create_default_context(cafile=str(self.layout.ca))
        wait_healthy(f"https://127.0.0.1:{self.link_port}/health", 60, context, self.superlink)

    def start_mlflow(self, wait: bool = True) -> None:
        """The MLflow tracking server (also to bring it back after it went down)."""
        command, variables = self.tracking.command()
        self.mlflow = _spawn(command, self.layout.state / "logs" / "mlflow.log",
                             {**self.env(), **variables})
        if wait:
            self._wait_mlflow()

    def _wait_mlflow(self) -> None:
        context = ssl.create_default_context(cafile=str(self.layout.ca))
        wait_healthy(f"{self.tracking_uri}/health", 120, context, self.mlflow)

    def stop_mlflow(self) -> None:
        if self.mlflow is not None:
            stop_process(self.mlflow)

    def _thread(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self.threads.append(thread)

    def register_node(self, public_key: Path) -> None:
        """Let a node in: its SuperNode-authentication public key, registered through the
        Control API, which only the workspace reaches."""
        done = subprocess.run([str(Path(sys.executable).parent / "flwr"), "supernode", "register",
                               str(public_key), self.connection], env=self.env(),
                              capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"registering {public_key} failed: {done.stdout[-800:]}{done.stderr[-800:]}")

    def online_nodes(self, since: float = 0.0) -> int:
        """How many registered nodes are connected now (Control API, ``flwr supernode ls``),
        counting only those that came online at or after ``since`` (a Unix time)."""
        done = subprocess.run([str(Path(sys.executable).parent / "flwr"), "supernode", "ls",
                               self.connection, "--format", "json"], env=self.env(),
                              capture_output=True, text=True, timeout=120)
        try:
            nodes = json.loads(done.stdout).get("nodes", [])
        except ValueError:
            return 0
        return sum(node.get("status") == "online" and _unix(node.get("online-at", "")) >= since
                   for node in nodes)

    def stop(self) -> None:
        """Stop everything this workspace started, newest first."""
        self.stopping.set()
        if self.intake is not None:
            self.intake.shutdown()
        for gate in self.gates:
            gate.close()
        for thread in self.threads:
            thread.join(timeout=30)
        self.stop_mlflow()
        if self.superlink is not None:
            stop_process(self.superlink)
