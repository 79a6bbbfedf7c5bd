"""Gates in front of the SuperLink: each forwards only the API paths one party needs.

Flower 1.42 serves its Control API (start, stop and list runs, register nodes),
its Fleet API (nodes) and its Runtime API (ServerApps) on one port, and the
Control API has no login in the open-source build. So the SuperLink listens on
loopback only, and every other party reaches it through a gate:

- the **fleet gate** (TLS, the workspace's certificate) is the only address nodes
  are given: it forwards ``/v1/fleet/*`` and nothing else;
- a **runtime gate** (a Unix socket, one per sandboxed ServerApp) forwards the
  Runtime API calls a ServerApp makes, and not the ones that start tasks, runs
  or automations.

A refused path gets 403 and is never forwarded; a body over ``max_body`` bytes
gets 413 before it is read, and a body without a length (chunked) gets 411.
"""

from __future__ import annotations

import http.client
import logging
import os
import socketserver
import ssl
import threading
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

log = logging.getLogger("cohortfl.gate")

FLEET_PATHS = frozenset({"/health"} | {f"/v1/fleet/{name}" for name in (
    "register-node", "activate-node", "deactivate-node", "unregister-node", "send-node-heartbeat",
    "pull-messages", "push-messages", "get-run", "get-fab", "push-object", "pull-object",
    "confirm-message-received")})
#: What a ServerApp process calls (flwr-serverapp 1.42); task creation, automations,
#: connectors and the SuperExec's own calls are absent.
SERVERAPP_PATHS = frozenset(f"/v1/runtime/{name}" for name in (
    "pull-task-input", "push-task-output", "send-task-heartbeat", "push-object", "pull-object",
    "confirm-message-received", "push-messages", "pull-messages", "get-nodes", "push-logs",
    "get-run-series-events", "get-compacted-contexts", "put-compacted-context",
    "record-task-usage", "push-task-events"))
HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
                        "proxy-authorization", "proxy-authenticate", "host"})


class Upstream:
    """Where a gate forwards to: the SuperLink's loopback address, over TLS when ``ca`` is given."""

    def __init__(self, host: str, port: int, ca: Path | None) -> None:
        self.host, self.port = host, port
        self.context = ssl.create_default_context(cafile=str(ca)) if ca else None

    def connect(self) -> http.client.HTTPConnection:
        if self.context is None:
            return http.client.HTTPConnection(self.host, self.port, timeout=600)
        return http.client.HTTPSConnection(self.host, self.port, context=self.context, timeout=600)


def _handler(upstream: Upstream, allowed: frozenset[str], max_body: int, name: str,
             seen: Callable[[str], None] | None) -> type[BaseHTTPRequestHandler]:
    class Forward(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        connection_upstream: http.client.HTTPConnection | None = None  # one per client connection

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            log.debug("%s: " + format, name, *args)

        def do_GET(self) -> None:  # noqa: N802
            self._forward()

        def do_POST(self) -> None:  # noqa: N802
            self._forward()

        def _forward(self) -> None:
            path = self.path.split("?", 1)[0]
            if seen:
                seen(path)
            if path not in allowed:
                log.warning("%s refused %s %s", name, self.command, path[:200])
                drain_small_body(self)  # so that the caller reads the 403, not a reset
                return self._refuse(403, f"{path[:200]} is not served here")
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                return self._refuse(411, "a body needs a Content-Length")
            length = int(self.headers.get("Content-Length") or 0)
            if length < 0 or length > max_body:
                return self._refuse(413, f"a body is at most {max_body} bytes")
            body = self.rfile.read(length) if length else None
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            try:
                if self.connection_upstream is None:
                    self.connection_upstream = upstream.connect()
                self.connection_upstream.request(self.command, self.path, body=body, headers=headers)
                response = self.connection_upstream.getresponse()
                payload = response.read()
            except (OSError, http.client.HTTPException):
                self.connection_upstream = None
                return self._refuse(502, "the SuperLink is not reachable")
            self.send_response(response.status, response.reason)
            for key, value in response.getheaders():
                if key.lower() not in HOP_BY_HOP and key.lower() != "content-length":
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def _refuse(self, status: int, text: str) -> None:
            body = text.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True

    return Forward


def drain_small_body(request: BaseHTTPRequestHandler, at_most: int = 2**16) -> None:
    """Read a refused request's body when it is small: the caller then reads the refusal
    instead of a connection reset. A large one is never read."""
    try:
        length = int(request.headers.get("Content-Length") or 0)
    except ValueError:
        return
    if 0 < length <= at_most:
        request.rfile.read(length)


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def get_request(self):  # noqa: ANN201 (BaseHTTPRequestHandler wants a (host, port) address)
        request, _ = super().get_request()
        return request, ("unix", 0)


class Gate:
    """A running gate; ``close()`` stops it."""

    def __init__(self, server: socketserver.BaseServer) -> None:
        self.server = server
        self.thread = threading.Thread(target=server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def fleet_gate(host: str, port: int, upstream: Upstream, cert: Path, key: Path,
               max_body: int = 256 * 2**20) -> Gate:
    """The nodes' TLS address: Fleet API paths only."""
    server = ThreadingHTTPServer((host, port), _handler(upstream, FLEET_PATHS, max_body, "fleet gate",
                                                        None))
    server.daemon_threads = True
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    return Gate(server)


def runtime_gate(path: Path, upstream: Upstream, owner_uid: int | None,
                 max_body: int = 256 * 2**20, seen: Callable[[str], None] | None = None,
                 allowed: Iterable[str] = SERVERAPP_PATHS) -> Gate:
    """One sandboxed ServerApp's Runtime API, on a Unix socket only ``owner_uid`` may open."""
    if path.exists():
        path.unlink()
    server = _UnixHTTPServer(str(path), _handler(upstream, frozenset(allowed), max_body,
                                                 "runtime gate", seen))
    os.chmod(path, 0o600)
    if owner_uid is not None:
        os.chown(path, owner_uid, -1)
    return Gate(server)
