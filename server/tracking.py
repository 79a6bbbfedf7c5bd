"""The MLflow store, checked before any engine starts: fail in seconds, naming the URI.

MLflow's own client retries an unreachable server for minutes and reports an unwritable SQLite
path as a raw database error. The workspace asks first.
"""

from __future__ import annotations

import fcntl
import os
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from server.errors import TrackingStoreError


def check_tracking_uri(uri: str, must_exist: bool = False, timeout: float = 3.0) -> None:
    """Refuse a tracking URI the workspace cannot use, before anything runs.

    Parameters
    ----------
    uri : str
        ``sqlite:///<path>`` or ``http(s)://host:port``; other schemes are left to MLflow.
    must_exist : bool
        A SQLite store must already exist (reading a leaderboard must not create one).
    timeout : float
        Seconds to wait for a tracking server's ``/health``.

    Raises
    ------
    TrackingStoreError
        Naming the URI, what is wrong and what to do.
    """
    if uri.startswith("sqlite:///"):
        _check_sqlite(uri, Path(uri.removeprefix("sqlite:///")), must_exist)
    elif uri.startswith(("http://", "https://")):
        _check_server(uri, timeout)


def _check_sqlite(uri: str, path: Path, must_exist: bool) -> None:
    """The file, or the folder it would be created in, must be writable by this user."""
    if must_exist and not path.is_file():
        raise TrackingStoreError(f"no MLflow store at {uri}: give the --tracking-uri a run wrote to")
    if path.exists():
        if not path.is_file() or not os.access(path, os.R_OK | os.W_OK):
            raise TrackingStoreError(f"the MLflow store {uri} is not a file this user can write: "
                                     "set tracking.uri to a writable sqlite:/// path")
        return
    folder = path.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK) or str(path).startswith(("/proc/", "/sys/")):
        raise TrackingStoreError(f"the MLflow store {uri} cannot be created: {folder} is not a "
                                 "folder this user can write; set tracking.uri to a writable path")


def _check_server(uri: str, timeout: float) -> None:
    """A tracking server must answer its health check within ``timeout`` seconds (over TLS, checked
    against the CA MLflow's own client is given, ``MLFLOW_TRACKING_SERVER_CERT_PATH``)."""
    context = ssl.create_default_context(cafile=os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH"))
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout,
                                    context=context) as answer:
            if answer.status != 200:
                raise TrackingStoreError(f"the MLflow tracking server at {uri} answered "
                                         f"{answer.status} to /health")
    except (urllib.error.URLError, OSError) as ex:
        reason = getattr(ex, "reason", ex)
        raise TrackingStoreError(f"the MLflow tracking server at {uri} is not reachable ({reason}): "
                                 "start it (mlflow server ...) or set tracking.uri") from None


@contextmanager
def first_use_lock(uri: str) -> Iterator[None]:
    """Hold, while it lasts, a lock that serialises first use of a SQLite store across processes:
    two commands started at once on a new store would both run MLflow's schema migration and
    both create the experiment. Other stores need none (a server migrates once, at its start)."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    path = Path(uri.removeprefix("sqlite:///"))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
