"""The workspace's intake: where contributors submit, with their own credential, over TLS.

``POST /v1/submissions`` with ``Authorization: Bearer TOKEN`` and a zip of the
package (``submission.yaml``, optional ``strategy.py`` and ``initial.npz``;
``server/intake.py``). In order, each before the next is read:

1. the credential: the contributor is whoever the token belongs to, never a name
   in the request (401 otherwise, nothing read);
2. the declared length: over ``max_package_bytes`` is 413, unread; no length is 411;
3. the zip's directory: at most the three files, each under its own size limit as
   declared *and* as actually inflated (a zip bomb stops at the limit);
4. the package rules, then the node's published policy (``Workspace.check``).

Then the workspace opens the MLflow run, signs the grant and starts the Flower
run with its own release bundle on its own SuperLink, and answers when the run
has ended: ``{"submission_id", "ok", "error"}``. Scores stay in MLflow. If the MLflow store
is down when the run ends, the answer is 202 with ``pending``: the node keeps its record and
writes it when the store is back, and the intake closes the run then.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import logging
import secrets
import ssl
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from contract.names import Tag
from server.embargo import RESERVED
from server.errors import PackageRefused
from server.gate import drain_small_body
from server.intake import ALLOWED_FILES, FILE_LIMITS, load_package
from server.pki import write_private

log = logging.getLogger("cohortfl.intake")

SUBMISSIONS_PATH = "/v1/submissions"


class Credentials:
    """Contributors' tokens, kept as SHA-256 digests in a 0600 JSON file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def _load(self) -> dict[str, str]:
        return json.loads(self.path.read_text(encoding="utf-8")) if self.path.is_file() else {}

    def issue(self, contributor: str) -> str:
        """A new token for ``contributor`` (replacing any earlier one); shown once, stored hashed."""
        if not contributor.replace("-", "").replace("_", "").isalnum() or len(contributor) > 64:
            raise ValueError("a contributor name is letters, digits, '-' and '_' (at most 64)")
        if contributor in RESERVED:
            raise ValueError(f"'{contributor}' is reserved for the workspace's own accounts and "
                             f"experiments ({', '.join(sorted(RESERVED))})")
        token = secrets.token_urlsafe(32)
        digests = self._load()
        digests[contributor] = hashlib.sha256(token.encode()).hexdigest()
        write_private(self.path, json.dumps(digests, indent=1).encode())
        return token

    def who(self, token: str) -> str | None:
        """The contributor a token belongs to, or None."""
        digest = hashlib.sha256(token.encode()).hexdigest()
        found = None
        for name, known in self._load().items():
            if hmac.compare_digest(digest, known):
                found = name
        return found


def read_package_zip(data: bytes, target: Path) -> None:
    """Unpack a package zip into ``target``, refusing what is not a package before inflating it.

    Raises
    ------
    PackageRefused
        ``package-files`` or ``package-size``, naming the member.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise PackageRefused("package-files", "the upload is not a zip archive") from None
    with archive:
        members = archive.infolist()
        names = [m.filename for m in members]
        if len(set(names)) != len(names) or not set(names) <= ALLOWED_FILES:
            raise PackageRefused("package-files", f"only {sorted(ALLOWED_FILES)} may be submitted; "
                                 f"found {sorted(n[:80] for n in names)}")
        for member in members:
            limit = FILE_LIMITS[member.filename]
            if member.file_size > limit:
                raise PackageRefused("package-size", f"{member.filename} is larger than {limit} bytes")
            with archive.open(member) as source:
                content = source.read(limit + 1)  # never more than the limit, whatever it declared
            if len(content) > limit:
                raise PackageRefused("package-size", f"{member.filename} is larger than {limit} bytes")
            (target / member.filename).write_bytes(content)


class IntakeServer(ThreadingHTTPServer):
    """The intake's HTTPS server, bound to the workspace's host and intake port."""

    daemon_threads = True

    def __init__(self, service, signer, release: Path, cert: Path, key: Path,
                 max_package_bytes: int = sum(FILE_LIMITS.values())) -> None:
        # service: server.deployment.WorkspaceService
        self.service, self.signer, self.release = service, signer, release
        self.credentials = Credentials(service.layout.credentials)
        self.max_package_bytes = max_package_bytes
        self.running = threading.Semaphore(4)
        self.pending: list[_PendingClose] = []  # runs whose store was down when they ended
        self.in_flight: dict[str, tuple] = {}  # submission id -> (workspace, submission)
        self._closing = threading.Event()
        threading.Thread(target=self._close_pending, daemon=True).start()
        super().__init__((service.host, service.intake_port), _IntakeHandler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert), str(key))
        self.socket = context.wrap_socket(self.socket, server_side=True)

    def run_submission(self, contributor: str, token: str, data: bytes) -> tuple[int, dict]:
        """Check and run one package; (HTTP status, JSON answer). The contributor's MLflow
        account is their name with ``token`` as password (``server/embargo.py``)."""
        from client.errors import NodeError
        from server.config import deployment_workspace
        from server.engine import run_on_superlink

        with tempfile.TemporaryDirectory(prefix="cohortfl-intake-") as tmp:
            try:
                read_package_zip(data, Path(tmp))
                workspace, shape = deployment_workspace(
                    self.service.tracking_uri, f"{self.service.experiment}/{contributor}", self.signer,
                    self.service.overrides)
                submission = load_package(Path(tmp), contributor, shape.local_epochs,
                                          shape.num_rounds, FILE_LIMITS["initial.npz"])
                notices = workspace.check(submission)
            except (PackageRefused, NodeError) as ex:
                return 422, {"ok": False, "error": str(ex)}
        with self.running:
            try:
                self.service.board.enrol(contributor, token)
                submission = workspace.open_run(submission, notices=notices)
                submission = replace(submission, comparisons_run_id=self.service.board.open_comparisons(
                    submission.submission_id, contributor))
            except Exception:  # the MLflow store is down: nothing has started
                log.exception("cannot open a run")
                return 503, {"ok": False, "error": "the workspace's MLflow store did not take the run "
                                                   "(unreachable?); nothing was started, submit again later"}
            log.info("submission %s of %s started", submission.submission_id, contributor)
            self.in_flight[submission.submission_id] = (workspace, submission)
            try:
                error = run_on_superlink(workspace.run_config(submission), self.release,
                                         self.service.connection, flwr_home=self.service.layout.flwr_home,
                                         timeout=self.service.limits.wall_seconds + 60)
            finally:
                self.in_flight.pop(submission.submission_id, None)
            try:
                outcome = workspace.close_run(submission, error)
            except Exception:  # the store went down during the run: the node keeps its record
                log.warning("the store is down; run %s is closed when it is back", submission.submission_id)
                self.pending.append(_PendingClose(workspace, submission, error))
                return 202, {"submission_id": submission.submission_id, "ok": False, "pending": True,
                             "error": STORE_DOWN}
        return 200, {"submission_id": submission.submission_id, "ok": outcome.ok,
                     "error": outcome.error, "notices": notices}

    def _close_pending(self, interval: float = 5.0, grace: float = 120.0) -> None:
        """Close runs that ended while the store was down, once it is back and the node has
        delivered its queued record (or ``grace`` s after the store is back, as failed)."""
        while not self._closing.wait(interval):
            for entry in list(self.pending):
                try:
                    tags = entry.workspace.client.get_run(entry.submission.submission_id).data.tags
                except Exception:
                    continue  # still down
                entry.back_at = entry.back_at or time.monotonic()
                if Tag.RECORD_COMPLETE not in tags and time.monotonic() - entry.back_at < grace:
                    continue  # the node delivers its queued writes within seconds of the store's return
                try:
                    outcome = entry.workspace.close_run(entry.submission, entry.error)
                except Exception:
                    continue
                log.info("run %s closed after the store came back: %s", entry.submission.submission_id,
                         "finished" if outcome.ok else outcome.error)
                self.pending.remove(entry)

    def shutdown(self) -> None:
        """Stop taking submissions; runs still going are marked KILLED (the workspace is stopping)."""
        self._closing.set()
        super().shutdown()
        for workspace, submission in list(self.in_flight.values()):
            workspace.kill_runs([submission])


@dataclass
class _PendingClose:
    workspace: object  # server.workspace.Workspace
    submission: object  # contract.submission.Submission
    error: str
    back_at: float = 0.0


STORE_DOWN = ("the run ended while the MLflow store was down; the node keeps the official record and "
              "writes it when the store is back, and the workspace then closes the run")


class _IntakeHandler(BaseHTTPRequestHandler):
    server: IntakeServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        log.debug(format, *args)

    def do_POST(self) -> None:  # noqa: N802
        if self.path != SUBMISSIONS_PATH:
            return self._answer(404, {"error": f"POST {SUBMISSIONS_PATH}"})
        auth = self.headers.get("Authorization", "")
        contributor = self.server.credentials.who(auth.removeprefix("Bearer ").strip()) \
            if auth.startswith("Bearer ") else None
        if contributor is None:
            drain_small_body(self)
            return self._answer(401, {"error": "credential-refused: no valid contributor token"})
        if "Content-Length" not in self.headers:
            return self._answer(411, {"error": "package-size: the upload needs a Content-Length"})
        length = int(self.headers["Content-Length"])
        if not 0 < length <= self.server.max_package_bytes:
            return self._answer(413, {"error": f"package-size: a package is at most "
                                               f"{self.server.max_package_bytes} bytes"})
        status, answer = self.server.run_submission(contributor, auth.removeprefix("Bearer ").strip(),
                                                    self.rfile.read(length))
        self._answer(status, answer)

    def _answer(self, status: int, answer: dict) -> None:
        body = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if status >= 400:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)


def submit_to_workspace(package: Path, url: str, ca: Path, token: str, timeout: float = 3600.0) -> dict:
    """The contributor's side: zip the package folder, send it, return the workspace's answer.

    Raises
    ------
    PackageRefused
        The folder holds something that is not a regular file.
    OSError
        The workspace could not be reached (``urllib.error.URLError``).
    """
    import urllib.error
    import urllib.request

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(Path(package).iterdir()):
            if not path.is_file() or path.is_symlink():
                raise PackageRefused("package-files", f"{path.name} is not a regular file")
            archive.write(path, path.name)
    request = urllib.request.Request(url.rstrip("/") + SUBMISSIONS_PATH, data=buffer.getvalue(),
                                     method="POST", headers={"Authorization": f"Bearer {token}",
                                                             "Content-Type": "application/zip"})
    context = ssl.create_default_context(cafile=str(ca))
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as ex:
        try:
            return {"ok": False, "status": ex.code, **json.loads(ex.read())}
        except ValueError:
            return {"ok": False, "status": ex.code, "error": ex.reason}
