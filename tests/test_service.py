"""The deployment's pieces without processes: the node's file checks, the bundle pin, credentials,
the intake's zip reader and the gates' path filter."""

from __future__ import annotations

import http.client
import http.server
import io
import os
import socket
import threading
import zipfile

import pandas as pd
import pytest
import yaml

from client.errors import NodeError
from client.executor import PINNED_CLIENTAPP, check_bundle
from client.service import NodeService, check_private, ensure_node_key, supernode_environment
from server.errors import PackageRefused
from server.gate import FLEET_PATHS, Upstream, runtime_gate
from server.intake import FILE_LIMITS
from server.intake_service import Credentials, read_package_zip


def zipped(files: dict[str, bytes | str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def manifest(components: dict) -> str:
    lines = "\n".join(f'{k} = "{v}"' for k, v in components.items())
    return f"[tool.flwr.app]\npublisher = \"x\"\n[tool.flwr.app.components]\n{lines}\n"


def test_the_node_refuses_a_cohort_or_state_other_users_can_read(tmp_path):
    cohort = tmp_path / "cohort.parquet"
    pd.DataFrame({"a": [1]}).to_parquet(cohort)
    os.chmod(cohort, 0o644)
    with pytest.raises(NodeError, match="readable by other users"):
        check_private(cohort)
    os.chmod(cohort, 0o600)
    check_private(cohort)


def test_the_nodes_file_names_every_key_it_needs_and_no_other(tmp_path):
    config = {"data-path": "c.parquet", "tracking-uri": "sqlite:///x.db", "state-dir": "s",
              "superlink": "127.0.0.1:9092", "root-certificates": "ca.crt"}
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(config))
    service = NodeService.from_file(path)
    assert service.superlink == "127.0.0.1:9092" and service.settings.policy.dp_enabled
    path.write_text(yaml.safe_dump({**config, "batch-size-min": 1}))  # a limit is not a node setting
    with pytest.raises(NodeError, match="unknown keys"):
        NodeService.from_file(path)


def test_the_official_record_never_crosses_the_network_in_clear(tmp_path):
    base = {"data-path": "c.parquet", "state-dir": "s", "superlink": "ws:9092",
            "root-certificates": str(tmp_path / "ca.crt")}
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump({**base, "tracking-uri": "http://workspace.example:5000"}))
    with pytest.raises(NodeError, match="unencrypted"):
        NodeService.from_file(path)
    for allowed in ("http://127.0.0.1:5000", "https://workspace.example:5000", "sqlite:///x.db"):
        path.write_text(yaml.safe_dump({**base, "tracking-uri": allowed}))
        NodeService.from_file(path)


def test_the_nodes_mlflow_account_is_private_and_reaches_only_its_own_clients(tmp_path):
    account = tmp_path / "tracking-node.json"
    account.write_text('{"username": "node", "password": "s3cret-s3cret"}')
    os.chmod(account, 0o644)
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump({
        "data-path": "c.parquet", "state-dir": "s", "superlink": "ws:9092",
        "root-certificates": str(tmp_path / "ca.crt"), "tracking-uri": "https://ws:5000",
        "tracking-credentials": str(account)}))
    service = NodeService.from_file(path)
    with pytest.raises(NodeError, match="readable by other users"):
        service.tracking_environment()
    os.chmod(account, 0o600)
    assert service.tracking_environment() == {
        "MLFLOW_TRACKING_USERNAME": "node", "MLFLOW_TRACKING_PASSWORD": "s3cret-s3cret",
        "MLFLOW_TRACKING_SERVER_CERT_PATH": str(tmp_path / "ca.crt")}
    account.write_text('{"user": "node"}')
    with pytest.raises(NodeError, match="account file"):
        service.tracking_environment()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_PASSWORD", "s3cret-s3cret")
        assert "s3cret-s3cret" not in supernode_environment(tmp_path).values()


def test_the_node_key_is_private_and_its_public_half_is_openssh(tmp_path):
    public = ensure_node_key(tmp_path / "node-key")
    assert oct((tmp_path / "node-key").stat().st_mode)[-3:] == "600"
    assert public.read_text().startswith("ecdsa-sha2-nistp384 ")


@pytest.mark.parametrize("components", [
    {"serverapp": "server.app:app", "clientapp": "outsider.apps:client"},
    {"serverapp": "server.app:app"},
    {"serverapp": "server.app:app", "clientapp": PINNED_CLIENTAPP, "agentapp": "outsider:agent"},
])
def test_a_bundle_not_naming_the_foundations_clientapp_is_refused(components):
    with pytest.raises(NodeError, match="pinned-clientapp"):
        check_bundle(zipped({"pyproject.toml": manifest(components)}))


def test_the_foundations_bundle_and_garbage(tmp_path):
    check_bundle(zipped({"pyproject.toml": manifest({"serverapp": "server.app:app",
                                                     "clientapp": PINNED_CLIENTAPP})}))
    with pytest.raises(NodeError, match="pinned-clientapp"):
        check_bundle(b"not a zip")


def test_credentials_name_their_contributor_and_are_stored_hashed(tmp_path):
    credentials = Credentials(tmp_path / "secrets" / "contributors.json")
    alice, bob = credentials.issue("alice"), credentials.issue("bob")
    assert credentials.who(alice) == "alice" and credentials.who(bob) == "bob"
    assert credentials.who(alice + "x") is None and credentials.who("") is None
    stored = tmp_path / "secrets" / "contributors.json"
    assert alice not in stored.read_text() and oct(stored.stat().st_mode)[-3:] == "600"
    assert credentials.who(credentials.issue("alice")) == "alice" and credentials.who(alice) is None
    with pytest.raises(ValueError):
        credentials.issue("../mallory")


def test_the_intake_unpacks_only_a_package_and_stops_inflating_at_the_limit(tmp_path):
    read_package_zip(zipped({"submission.yaml": "x: 1", "strategy.py": "pass"}), tmp_path)
    assert (tmp_path / "strategy.py").read_text() == "pass"
    for files, rule in (({"client_app.py": "x"}, "package-files"),
                        ({"../submission.yaml": "x"}, "package-files"),
                        ({"strategy.py": "#" * (FILE_LIMITS["strategy.py"] + 1)}, "package-size")):
        with pytest.raises(PackageRefused, match=rule):
            read_package_zip(zipped(files), tmp_path)
    with pytest.raises(PackageRefused, match="package-files"):
        read_package_zip(b"garbage", tmp_path)


class _Upstream(http.server.BaseHTTPRequestHandler):
    """Stands in for the SuperLink in this unit test only: answers every path with its name."""

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = self.path.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_a_runtime_gate_forwards_a_serverapps_calls_and_nothing_else(tmp_path):
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    gate = runtime_gate(tmp_path / "gate.sock", Upstream("127.0.0.1", upstream.server_port, None),
                        owner_uid=None, max_body=1000)
    try:
        def call(path: str, body: bytes = b"{}", declared: int | None = None) -> tuple[int, bytes]:
            connection = http.client.HTTPConnection("localhost")
            connection.sock = socket.socket(socket.AF_UNIX)
            connection.sock.connect(str(tmp_path / "gate.sock"))
            if declared is None:
                connection.request("POST", path, body=body)
            else:  # only the headers: the answer must come before any body is sent
                connection.putrequest("POST", path)
                connection.putheader("Content-Length", str(declared))
                connection.endheaders()
            answer = connection.getresponse()
            return answer.status, answer.read()

        assert call("/v1/runtime/pull-messages") == (200, b"/v1/runtime/pull-messages")
        for path in ("/v1/control/list-runs", "/v1/control/start-run", "/v1/runtime/create-task",
                     "/v1/runtime/acquire-task", "/v1/fleet/pull-messages", "/v1/runtime/../control/x"):
            assert call(path)[0] == 403, path
        assert call("/v1/runtime/pull-messages", declared=10 * 2**30)[0] == 413
        assert all(p.startswith("/v1/fleet/") or p == "/health" for p in FLEET_PATHS)
    finally:
        gate.close()
        upstream.shutdown()
