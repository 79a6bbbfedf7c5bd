"""The workspace's executor: every contributor ServerApp runs in an OS sandbox.

The SuperLink is started with ``--isolation process`` and a SuperExec secret;
this loop is its only executor. It takes ``flwr-serverapp`` tasks only and starts
each one as ``flwr-serverapp`` inside a sandbox built from what Linux gives:

- **its own user**: a uid of its own per task (from ``UID_RANGE``, no groups), so it
  reads no file that is not world-readable and no other ServerApp's files or
  processes; the workspace's and the node's files are 0600/0700;
- **its own network namespace**: no interface but its own loopback, on which
  ``server/sandbox_inner.py`` bridges one port to this task's runtime gate (a Unix
  socket); the gate forwards only a ServerApp's Runtime API calls to the SuperLink:
  no Control API, no Fleet API, no MLflow, no other host;
- **rlimits** it cannot raise: address space, CPU seconds, processes and threads,
  file size; ``no_new_privs``; a clean environment; and a wall-clock limit after
  which its whole process group is killed.

What it does not give: a private filesystem view (world-readable files stay
readable), a syscall filter (no seccomp), or limits on the CPU share of a
process that sleeps. It needs root (to switch uid and create the namespace) and
refuses to start without it: no contributor code runs unsandboxed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
from flwr.proto.runtime_pb2 import AcquireTaskRequest
from flwr.supercore.constant import TaskType
from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor, SuperExecAuthHttpInterceptor
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient

from server.gate import Upstream, runtime_gate
from server.refusals import REPLY_TIMEOUT_ENV
from server.sandbox_inner import namespaces

log = logging.getLogger("cohortfl.sandbox")

#: Flower internals used here (module, name), checked on every Flower upgrade.
PRIVATE_FLOWER_API = (
    ("flwr.proto.runtime_pb2", "AcquireTaskRequest"),
    ("flwr.supercore.constant", "TaskType"),
    ("flwr.supercore.interceptors", "RuntimeVersionHttpInterceptor"),
    ("flwr.supercore.interceptors", "SuperExecAuthHttpInterceptor"),
    ("flwr.supercore.retry", "make_simple_http_retry_invoker"),
    ("flwr.supercore.runtime", "RuntimeHttpClient"),
)

#: Uids handed to sandboxed tasks, one each at a time; none of them has a login.
UID_RANGE = range(61000, 61100)
_ACQUIRE = "/flwr.proto.Runtime/AcquireTask"
#: The installed code (an editable install's .pth points here).
PROJECT = Path(__file__).resolve().parent.parent


class SandboxUnavailable(RuntimeError):
    """This machine cannot build the sandbox; contributor code must not run here."""


@dataclass(frozen=True)
class SandboxLimits:
    """What one ServerApp may use."""

    memory_bytes: int = 3 * 2**30
    cpu_seconds: int = 600
    wall_seconds: float = 900.0
    processes: int = 128
    file_bytes: int = 64 * 2**20
    #: the longest the ServerApp waits for a node's reply before it ends the run
    reply_seconds: float = 300.0


def check_sandbox_possible() -> None:
    """Refuse early, naming what is missing."""
    if os.geteuid() != 0:
        raise SandboxUnavailable("the ServerApp sandbox switches to a uid of its own per run and "
                                 "creates a network namespace: the workspace must run as root")
    if not shutil.which("unshare"):
        raise SandboxUnavailable("the ServerApp sandbox needs util-linux's unshare")
    probe = subprocess.run(["unshare", "--net", "--mount", "--", "true"], capture_output=True)
    if probe.returncode != 0:
        raise SandboxUnavailable("cannot create network and mount namespaces: "
                                 + probe.stderr.decode(errors="replace").strip())


@dataclass
class _Task:
    task_id: int
    uid: int
    folder: Path
    process: subprocess.Popen
    deadline: float
    gate: object


class ServerAppExecutor:
    """Takes the SuperLink's ServerApp tasks and runs each in a sandbox.

    Parameters
    ----------
    runtime_address : str
        The SuperLink's loopback address (host:port).
    secret : bytes
        The SuperExec secret shared with the SuperLink.
    ca : Path
        The workspace's CA certificate (the SuperLink speaks TLS).
    folder : Path
        Where task folders are made (mode 0711: others may pass, not list).
    logs : Path
        Where each task's output is written (the workspace's own folder).
    """

    def __init__(self, runtime_address: str, secret: bytes, ca: Path, folder: Path, logs: Path,
                 limits: SandboxLimits | None = None, poll_interval: float = 0.1) -> None:
        check_sandbox_possible()
        host, port = runtime_address.rsplit(":", 1)
        self.upstream = Upstream(host, int(port), ca)
        self.folder, self.logs, self.limits = Path(folder), Path(logs), limits or SandboxLimits()
        self.folder.mkdir(parents=True, exist_ok=True)
        os.chmod(self.folder, 0o711)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.poll_interval = poll_interval
        self.running: dict[int, _Task] = {}
        self.finished: list[tuple[int, int | str]] = []  # (task id, exit code or "wall-time")
        self._lock = threading.Lock()
        self._tasks = RuntimeHttpClient.from_server_address(
            server_address=runtime_address, insecure=False, root_certificates=ca.read_bytes(),
            interceptors=[RuntimeVersionHttpInterceptor(component_name="cohortfl-sandbox"),
                          SuperExecAuthHttpInterceptor(master_secret=secret,
                                                       protected_methods={_ACQUIRE})],
            retry_invoker=make_simple_http_retry_invoker())

    def serve_forever(self, stop: threading.Event) -> None:
        """Take tasks and watch running ones until ``stop`` is set; then kill what runs."""
        try:
            while not stop.is_set():
                self.reap()
                if not self.take_next():
                    stop.wait(self.poll_interval)
        finally:
            for task in list(self.running.values()):
                _kill(task)
            self.reap()
            self._tasks.close()

    def take_next(self) -> bool:
        """Start one ServerApp task if the SuperLink has one; False when there was none."""
        if len(self.running) >= len(UID_RANGE):
            return False
        reply = self._tasks.AcquireTask(AcquireTaskRequest(
            supported_task_types=[str(TaskType.SERVER_APP)]))
        if not (reply.HasField("task") and reply.token):
            return False
        self.launch(reply.task.task_id, reply.token)
        return True

    def launch(self, task_id: int, token: str) -> None:
        """Start ``flwr-serverapp`` for one task in its sandbox."""
        used = {t.uid for t in self.running.values()}
        uid = next(u for u in UID_RANGE if u not in used)
        folder = self.folder / f"task-{task_id}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(mode=0o700)
        os.chown(folder, uid, uid)
        token_file = folder / "token"
        token_file.write_text(token, encoding="utf-8")
        os.chmod(token_file, 0o400)
        os.chown(token_file, uid, uid)
        socket_path = folder / "runtime.sock"
        gate = runtime_gate(socket_path, self.upstream, owner_uid=uid)
        limits = self.limits
        command = ["unshare", "--net", "--mount", "--", sys.executable, "-m", "server.sandbox_inner",
                   "--socket", str(socket_path), "--uid", str(uid), "--home", str(folder),
                   *(f"--expose={p}" for p in (sys.base_prefix, sys.prefix, PROJECT)),
                   f"--outside={namespaces()}", f"--setenv={REPLY_TIMEOUT_ENV}={limits.reply_seconds:g}",
                   "--memory", str(limits.memory_bytes), "--cpu", str(limits.cpu_seconds),
                   "--processes", str(limits.processes), "--file-size", str(limits.file_bytes),
                   "--", str(Path(sys.executable).parent / "flwr-serverapp"),
                   "--token-file", str(token_file), "--insecure"]
        with (self.logs / f"serverapp-{task_id}.log").open("wb") as output:
            process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True,
                                       cwd=str(self.folder))
        with self._lock:
            self.running[task_id] = _Task(task_id, uid, folder, process,
                                          time.monotonic() + limits.wall_seconds, gate)
        log.info("ServerApp task %d started in its sandbox as uid %d", task_id, uid)

    def reap(self) -> None:
        """Collect ended tasks; kill those past their wall-clock limit."""
        now = time.monotonic()
        for task in list(self.running.values()):
            code: int | str | None = task.process.poll()
            if code is None and now > task.deadline:
                _kill(task)
                code = "wall-time"
                log.warning("ServerApp task %d killed: over %.0f s", task.task_id,
                            self.limits.wall_seconds)
            if code is None:
                continue
            _kill(task)  # what it left behind, even in a session of its own
            task.gate.close()
            shutil.rmtree(task.folder, ignore_errors=True)
            with self._lock:
                del self.running[task.task_id]
                self.finished.append((task.task_id, code))


def _kill(task: _Task) -> None:
    """Kill a sandbox and every process of its uid (a ``setsid`` does not escape this)."""
    try:
        os.killpg(task.process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for process in psutil.process_iter(["uids"]):
        uids = process.info["uids"]
        if uids and task.uid in (uids.real, uids.effective):
            with contextlib.suppress(psutil.Error):
                process.kill()
    task.process.wait()
