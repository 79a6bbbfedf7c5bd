"""The workspace's MLflow tracking server: TLS, MLflow's basic-auth app, one account per party.

``mlflow server --app-name basic-auth`` behind uvicorn's own TLS, with
``default_permission = NO_PERMISSIONS``: a request without an account gets 401,
an account sees only the experiments it was granted. The accounts:

- ``admin`` (the workspace's own processes: the intake opens and closes runs);
  its password lives in ``secrets/`` and reaches MLflow's clients of this process
  through the environment, never a command line (``/proc/*/cmdline`` is world-readable);
- one account per node, allowed to ``EDIT`` the experiments that hold official runs
  (its credential file goes to the node's operator, who names it in ``node.yaml``);
- one account per contributor (``server/embargo.py``), reading their own runs and the
  published board.

Contributors' ServerApps never hold an account and cannot reach the server
(``server/sandbox.py``: no network but their own Runtime API).
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from pathlib import Path

from contract.files import create_once
from contract.names import MLFLOW_ACCOUNT_VARIABLES
from server.pki import write_private

ADMIN = "admin"


def without_tracking_account(env: dict[str, str]) -> dict[str, str]:
    """``env`` less the MLflow account: for the processes this one starts (SuperLink, Flower's CLI,
    the SuperNode), which never write to MLflow."""
    return {key: value for key, value in env.items() if key not in MLFLOW_ACCOUNT_VARIABLES}


def _secret(path: Path) -> str:
    """A random secret kept in ``path`` (0600), made on first use."""
    return create_once(path, secrets.token_urlsafe(24).encode()).decode().strip()


class TrackingServer:
    """The MLflow server's files, process and accounts.

    Parameters
    ----------
    secrets_dir, state_dir : Path
        Where its passwords (0700) and its stores and log go.
    host, port : where it listens (TLS).
    ca, cert, key : the workspace's TLS files.
    """

    def __init__(self, secrets_dir: Path, state_dir: Path, host: str, port: int,
                 ca: Path, cert: Path, key: Path, default_permission: str = "NO_PERMISSIONS") -> None:
        self.default_permission = default_permission  # MLflow ships READ: everyone reads everything
        self.secrets_dir, self.state_dir = secrets_dir, state_dir
        self.host, self.port, self.ca, self.cert, self.key = host, port, ca, cert, key

    @property
    def uri(self) -> str:
        return f"https://{self.host}:{self.port}"

    def admin_environment(self) -> dict[str, str]:
        """What this process's MLflow clients need to act as the workspace."""
        return admin_environment(self.secrets_dir, self.ca)

    def command(self) -> tuple[list[str], dict[str, str]]:
        """The server's command line and the variables it adds to the environment."""
        config = self.state_dir / "mlflow-auth.ini"
        config.write_text(
            f"[mlflow]\ndefault_permission = {self.default_permission}\n"
            f"database_uri = sqlite:///{self.state_dir / 'mlflow-auth.db'}\n"
            f"admin_username = {ADMIN}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n",
            encoding="utf-8")
        command = [str(Path(sys.executable).parent / "mlflow"), "server", "--app-name", "basic-auth",
                   "--backend-store-uri", f"sqlite:///{self.state_dir / 'mlflow.db'}",
                   "--artifacts-destination", str(self.state_dir / "mlartifacts"),
                   "--host", self.host, "--port", str(self.port), "--workers", "1",
                   "--allowed-hosts", f"{self.host}:{self.port},{self.host}",
                   "--uvicorn-opts", f"--ssl-certfile {self.cert} --ssl-keyfile {self.key}"]
        env = {"MLFLOW_AUTH_CONFIG_PATH": str(config),
               "MLFLOW_AUTH_ADMIN_PASSWORD": self.admin_environment()["MLFLOW_TRACKING_PASSWORD"],
               "MLFLOW_FLASK_SERVER_SECRET_KEY": _secret(self.secrets_dir / "mlflow-flask-secret"),
               "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        return command, env

    def account(self, name: str) -> Path:
        """The MLflow account ``name`` (made on first call): its credential file, 0600, to hand
        to the party that uses it. Needs the server up and this process acting as admin."""
        from mlflow.server import get_app_client

        path = self.secrets_dir / f"tracking-{name}.json"
        if not path.is_file():
            password = secrets.token_urlsafe(24)
            get_app_client("basic-auth", tracking_uri=self.uri).create_user(name, password)
            write_private(path, json.dumps({"username": name, "password": password}).encode())
        return path


def admin_environment(secrets_dir: Path, ca: Path) -> dict[str, str]:
    """The variables that make MLflow's clients act as the workspace's admin, trusting its CA."""
    return {"MLFLOW_TRACKING_USERNAME": ADMIN,
            "MLFLOW_TRACKING_PASSWORD": _secret(secrets_dir / "mlflow-admin-password"),
            "MLFLOW_TRACKING_SERVER_CERT_PATH": str(ca)}


def use_as_admin(server: TrackingServer) -> None:
    """Make this process's MLflow clients act as the workspace's admin (see the module's note)."""
    os.environ.update(server.admin_environment())


def use_admin_files(secrets_dir: Path, ca: Path) -> None:
    """The same, for a foundation's command beside a running workspace (``cohortfl publish``)."""
    os.environ.update(admin_environment(secrets_dir, ca))
