"""``cohortfl loopback --dir D``: the whole deployment on one machine, for development and tests.

It does what the two operators would do, each with their own command and files:

1. the workspace (``cohortfl workspace``, here in this process) under ``D/workspace``;
2. the node's files under ``D/node`` (0700): a synthetic cohort, the node's MLflow account
   (as the workspace's operator would hand it over) and ``node.yaml`` pointing at the
   workspace's fleet gate, CA, grant key and MLflow server;
3. ``cohortfl node --config D/node/node.yaml --key-only`` makes the node's key; the workspace
   registers its public half; then ``cohortfl node`` starts as its own process, and this waits
   until the workspace sees it online;
4. a credential for each named contributor, written to ``D/<name>.token`` (0600).

It prints the contributor's submit command and runs until Ctrl-C or SIGTERM,
then stops the node and the workspace.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from server.deployment import WorkspaceService, stop_process
from server.intake_service import Credentials
from server.pki import write_private


@dataclass
class Loopback:
    """A running loopback deployment."""

    root: Path
    workspace: WorkspaceService
    tokens: dict[str, Path]
    node: subprocess.Popen | None = None

    @property
    def intake_url(self) -> str:
        return f"https://127.0.0.1:{self.workspace.intake_port}"

    def submit_command(self, contributor: str, package: str = "PACKAGE") -> str:
        return (f"cohortfl submit {package} --workspace {self.intake_url} "
                f"--ca {self.workspace.layout.ca} --token-file {self.tokens[contributor]}")

    def start_node(self, timeout: float = 240.0) -> None:
        """Start the node's own command and wait until the workspace sees it come online (after
        a crash, the SuperLink lets the node's key in again once the old session's heartbeats
        have stopped, about a minute)."""
        started = int(time.time())
        with (self.root / "node.log").open("ab") as output:
            self.node = subprocess.Popen(node_command("--config", str(self.root / "node" / "node.yaml")),
                                         stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while self.workspace.online_nodes(since=started) < 1:
            if self.node.poll() is not None or time.monotonic() > deadline:
                stop_process(self.node)
                raise RuntimeError(f"the node did not connect; see {self.root / 'node.log'}")
            time.sleep(1)

    def kill_node(self) -> None:
        """The node's machine loses power: SIGKILL to the node and its SuperNode."""
        os.killpg(self.node.pid, signal.SIGKILL)
        self.node.wait()

    def stop(self) -> None:
        if self.node is not None:
            stop_process(self.node)
        self.workspace.stop()


def node_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "server.cli", "node", *args]


def start_loopback(root: Path, contributors: tuple[str, ...] = ("alice",), cohort_seed: int = 0,
                   log=print, holdout_fraction: float | None = None, **workspace) -> Loopback:
    """Bring the workspace and one node up on loopback; the caller stops them.

    ``holdout_fraction`` goes to the node's config (each record's side fixed as the cohort grows);
    ``workspace`` goes to ``WorkspaceService`` (``limits``, ``overrides``, ...)."""
    from synthetic.disease import generate_cohort

    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    workspace = WorkspaceService(root / "workspace", **workspace)
    log("starting the workspace (SuperLink, fleet gate, sandbox executor, MLflow, intake) ...")
    workspace.start()
    try:
        node_dir = root / "node"
        node_dir.mkdir(mode=0o700, exist_ok=True)
        cohort = node_dir / "cohort.parquet"
        if not cohort.is_file():
            generate_cohort(cohort_seed).to_parquet(cohort, index=False)
        os.chmod(cohort, 0o600)
        account = node_dir / "tracking-node.json"
        write_private(account, workspace.node_tracking_account.read_bytes())
        config = node_dir / "node.yaml"
        config.write_text(yaml.safe_dump({
            "data-path": str(cohort), "state-dir": str(node_dir / "state"),
            "tracking-uri": workspace.tracking_uri, "tracking-credentials": str(account),
            "workspace-key": str(workspace.layout.grant_public_key),
            "superlink": f"127.0.0.1:{workspace.fleet_port}",
            "root-certificates": str(workspace.layout.ca),
            **({"holdout-fraction": holdout_fraction} if holdout_fraction else {})}), encoding="utf-8")
        key = subprocess.run(node_command("--config", str(config), "--key-only"), capture_output=True,
                             text=True, timeout=300)
        if key.returncode != 0:
            raise RuntimeError(f"the node refused to prepare: {key.stderr.strip()[-1000:]}")
        workspace.register_node(Path(key.stdout.strip().splitlines()[-1]))
        credentials = Credentials(workspace.layout.credentials)
        tokens = {}
        for name in contributors:
            tokens[name] = root / f"{name}.token"
            write_private(tokens[name], credentials.issue(name).encode())
        deployment = Loopback(root, workspace, tokens)
        log("starting the node (SuperNode + the foundation's ClientApp) ...")
        deployment.start_node()
    except BaseException:
        workspace.stop()
        raise
    return deployment


def run_loopback(root: Path, stop: threading.Event) -> int:
    """The ``cohortfl loopback`` command: up, wait for ``stop``, down."""
    deployment = start_loopback(root)
    try:
        layout = deployment.workspace.layout
        print(f"\nworkspace up; MLflow at {deployment.workspace.tracking_uri} (CA {layout.ca}, "
              f"user admin, password in {layout.secrets / 'mlflow-admin-password'})")
        print(f"submit as alice:\n  {deployment.submit_command('alice')}")
        print("Ctrl-C stops everything.", flush=True)
        while not stop.wait(1.0):
            if deployment.node.poll() is not None:
                print(f"the node exited ({deployment.node.returncode}); see {root / 'node.log'}",
                      file=sys.stderr)
                return 1
    finally:
        deployment.stop()
    return 0
