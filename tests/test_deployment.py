"""The deployment, started for real on loopback, attacked as an outsider and as a contributor.

One ``cohortfl loopback`` topology for the module: the workspace (SuperLink behind its gates,
the sandboxed ServerApp executor, an MLflow server, the intake) and one node (SuperNode + the
foundation's executor) holding a synthetic cohort with a planted sentinel. Slow: CI runs it.
"""

from __future__ import annotations

import io
import json
import os
import sqlite3
import ssl
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest
import yaml

from client.errors import NodeError
from client.executor import check_bundle
from server.intake_service import submit_to_workspace
from server.sandbox import SandboxLimits, SandboxUnavailable, check_sandbox_possible

pytestmark = pytest.mark.slow
SENTINEL = 987654.321
ROUNDS = 3
WALL_SECONDS = 120.0
REPLY_SECONDS = 30.0
CONTRIBUTORS = ("alice", "bob", "carol", "dave", "erin")
FINISHED_RUNS: dict[str, str] = {}  # contributor -> a finished run of theirs, for later tests

try:
    check_sandbox_possible()
    NO_SANDBOX = ""
except SandboxUnavailable as ex:
    NO_SANDBOX = str(ex)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """The whole topology on loopback, with a sentinel planted in one record of the cohort."""
    if NO_SANDBOX:
        pytest.skip(f"the sandbox cannot be built here: {NO_SANDBOX}")
    from server.loopback import start_loopback
    from synthetic.disease import generate_cohort

    root = tmp_path_factory.mktemp("loopback")
    before = dict(os.environ)  # the workspace gives this process its MLflow admin account
    os.environ["FLWR_HOME"] = str(root / "flwr-home")  # the test's own, never the user's
    (root / "node").mkdir(mode=0o700)
    cohort = generate_cohort(0)
    cohort.loc[7, cohort.columns[3]] = SENTINEL
    cohort.to_parquet(root / "node" / "cohort.parquet", index=False)
    started = start_loopback(root, contributors=CONTRIBUTORS, log=lambda *_: None,
                             limits=SandboxLimits(wall_seconds=WALL_SECONDS, reply_seconds=REPLY_SECONDS),
                             overrides=(f"workspace.num_rounds={ROUNDS}",), holdout_fraction=0.2)
    try:
        yield started
    finally:
        started.stop()
        os.environ.clear()
        os.environ.update(before)
        left = subprocess.run(["pgrep", "-a", "-f", "flower-super|flwr-serverapp|sandbox_inner|"
                               "mlflow server|server.cli node"], capture_output=True, text=True)
        assert str(root) not in left.stdout, f"left running:\n{left.stdout}"


def package(folder: Path, strategy: str | None = None, target: str = "flwr.serverapp.strategy.FedAvg"
            ) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "submission.yaml").write_text(yaml.safe_dump({
        "strategy": {"_target_": target, "fraction_evaluate": 0.0},
        "model": {"name": "linear"}, "lr": 0.1, "batch_size": 32}))
    if strategy is not None:
        (folder / "strategy.py").write_text(strategy)
    return folder


def submit(deployment, folder: Path, contributor: str = "alice") -> dict:
    token = deployment.tokens[contributor].read_text().strip()
    return submit_to_workspace(folder, deployment.intake_url, deployment.workspace.layout.ca, token)


def mlflow_run(deployment, run_id: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(deployment.workspace.tracking_uri).get_run(run_id)


def serverapp_output(deployment) -> str:
    logs = deployment.workspace.layout.state / "logs"
    return "\n".join(p.read_text(errors="replace") for p in sorted(logs.glob("serverapp-*.log")))


def post(url: str, ca: Path, body: bytes = b"", headers: dict | None = None) -> int:
    request = urllib.request.Request(url, data=body, method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30,
                                    context=ssl.create_default_context(cafile=str(ca))) as answer:
            return answer.status
    except urllib.error.HTTPError as ex:
        return ex.code


def test_an_honest_submission_runs_end_to_end_and_the_node_records_it(deployment):
    started = time.monotonic()
    answer = submit(deployment, package(deployment.root / "honest"))
    seconds = time.monotonic() - started
    assert answer["ok"], answer
    run = mlflow_run(deployment, answer["submission_id"])
    assert run.data.tags["cohortfl.contributor"] == "alice"
    assert run.data.metrics["rounds_trained"] == ROUNDS
    assert {"holdout_out_of_the_box_macro_f1", "holdout_fine_tuned_macro_f1"} <= set(run.data.metrics)
    FINISHED_RUNS["alice"] = answer["submission_id"]
    print(f"{ROUNDS}-round submission end to end: {seconds:.1f} s")


def test_each_contributor_reads_only_their_own_results_until_the_foundation_publishes(deployment):
    """MLflow's own access control: alice (her name, her token) reads her run and gets 403 on bob's
    and on the comparisons that name her run; after `cohortfl publish --all` she reads both on the
    published board, and bob's own run stays closed to her."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from contract.names import PAIRED_TAG_PREFIX

    answer = submit(deployment, package(deployment.root / "bob-honest"), "bob")
    assert answer["ok"], answer
    alices, bobs = FINISHED_RUNS["alice"], answer["submission_id"]
    comparisons = MlflowClient(deployment.workspace.tracking_uri).search_runs(
        [deployment.workspace.board.experiment("foundation")], f"tags.`cohortfl.official_run` = '{bobs}'")
    assert any(k == f"{PAIRED_TAG_PREFIX}{alices}" for k in comparisons[0].data.tags)  # the foundation's
    assert not any(k.startswith(PAIRED_TAG_PREFIX) for k in mlflow_run(deployment, bobs).data.tags)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_USERNAME", "alice")
        env.setenv("MLFLOW_TRACKING_PASSWORD", deployment.tokens["alice"].read_text().strip())
        alice = MlflowClient(deployment.workspace.tracking_uri)
        assert "holdout_fine_tuned_macro_f1" in alice.get_run(alices).data.metrics
        for private in (bobs, comparisons[0].info.run_id):
            with pytest.raises(MlflowException, match="PERMISSION_DENIED|403"):
                alice.get_run(private)
        published = alice.get_experiment_by_name("cohortfl/published").experiment_id
        assert not alice.search_runs([published])  # nothing published yet
        done = subprocess.run([sys.executable, "-m", "server.cli", "publish", "--dir",
                               str(deployment.workspace.layout.root), "--all"],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        runs = alice.search_runs([published])
        board = {r.data.tags.get("cohortfl.published_from") for r in runs}
        assert {alices, bobs} <= board
        assert [r.info.run_name for r in runs if "cohortfl.board_picture" in r.data.tags] == [
            "leaderboard-picture"]  # the published board's picture, drawn by publish
        with pytest.raises(MlflowException, match="PERMISSION_DENIED|403"):
            alice.get_run(bobs)


def test_the_control_and_runtime_apis_are_not_served_to_nodes_or_outsiders(deployment):
    """The fleet gate is the only address given out: it serves the Fleet API and nothing else."""
    gate = f"https://127.0.0.1:{deployment.workspace.fleet_port}"
    ca = deployment.workspace.layout.ca
    for path in ("/v1/control/list-runs", "/v1/control/stop-run", "/v1/control/start-run",
                 "/v1/control/register-node", "/v1/runtime/acquire-task", "/v1/runtime/create-task"):
        assert post(gate + path, ca) == 403, path
    # the Flower CLI pointed at the gate gets nothing either
    home = deployment.root / "outsider-flwr"
    home.mkdir(exist_ok=True)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "gate"\n\n[superlink.gate]\naddress = "127.0.0.1:'
        f'{deployment.workspace.fleet_port}"\nroot-certificates = "{ca}"\n')
    listing = subprocess.run([str(Path(sys.executable).parent / "flwr"), "ls", "gate"], timeout=120,
                             env={**os.environ, "FLWR_HOME": str(home)}, capture_output=True, text=True)
    assert deployment.submit_command("alice") not in listing.stdout
    assert "403" in listing.stdout + listing.stderr or listing.returncode != 0


def test_the_official_record_travels_over_tls_to_accounts_that_may_write_it(deployment):
    """The MLflow server speaks only TLS, answers nobody without an account, and the node's
    account writes runs but cannot make accounts or grant itself more."""
    from mlflow.exceptions import MlflowException
    from mlflow.server import get_app_client

    from server.tracking import check_tracking_uri

    workspace = deployment.workspace
    check_tracking_uri(workspace.tracking_uri)  # the pre-flight check trusts MLflow's CA setting
    with pytest.raises(OSError):  # plain HTTP: the server answers only a TLS handshake
        urllib.request.urlopen(f"http://127.0.0.1:{workspace.mlflow_port}/health", timeout=10)
    ca = workspace.layout.ca
    context = ssl.create_default_context(cafile=str(ca))
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{workspace.tracking_uri}/api/2.0/mlflow/experiments/search"
                               "?max_results=5", timeout=10, context=context)
    assert refused.value.code == 401
    account = json.loads((deployment.root / "node" / "tracking-node.json").read_text())
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_USERNAME", account["username"])
        env.setenv("MLFLOW_TRACKING_PASSWORD", account["password"])
        auth = get_app_client("basic-auth", tracking_uri=workspace.tracking_uri)
        with pytest.raises(MlflowException, match="403|Permission"):
            auth.create_user("mallory", "mallory-password-123")
        with pytest.raises(MlflowException, match="403|Permission"):
            auth.update_user_admin(account["username"], True)


def test_an_unregistered_supernode_is_refused(deployment, tmp_path):
    from client.service import ensure_node_key

    key = tmp_path / "stranger-key"
    ensure_node_key(key)
    done = subprocess.run([str(Path(sys.executable).parent / "flower-supernode"), "--superlink",
                           f"127.0.0.1:{deployment.workspace.fleet_port}", "--root-certificates",
                           str(deployment.workspace.layout.ca), "--auth-supernode-private-key", str(key),
                           "--auth-supernode-public-key", f"{key}.pub", "--max-retries", "1",
                           "--port", "0"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "FLWR_HOME": str(tmp_path)})
    assert done.returncode != 0


def test_a_contributor_is_who_the_credential_says_and_nobody_without_one(deployment):
    folder = package(deployment.root / "no-credential")
    for token in ("", "guess", deployment.tokens["alice"].read_text().strip() + "x"):
        answer = submit_to_workspace(folder, deployment.intake_url, deployment.workspace.layout.ca, token)
        assert answer["status"] == 401 and "credential-refused" in answer["error"]
    (folder / "submission.yaml").write_text((folder / "submission.yaml").read_text()
                                           + "contributor: bob\n")  # naming somebody else
    assert "submission-keys" in submit(deployment, folder)["error"]


def test_uploads_over_the_limit_are_refused_before_they_are_read(deployment):
    """A 10 GB declared body with only a few bytes behind it: answered 413 at once."""
    url = deployment.intake_url + "/v1/submissions"
    token = deployment.tokens["alice"].read_text().strip()
    started = time.monotonic()
    status = post(url, deployment.workspace.layout.ca, b"PK\x03\x04",
                  {"Authorization": f"Bearer {token}", "Content-Length": str(10 * 2**30)})
    assert status == 413 and time.monotonic() - started < 10
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("strategy.py", "#" * (64 * 2**20))  # 64 MiB that compress to ~64 kB
        archive.writestr("submission.yaml", "strategy: {}")
    assert len(bomb.getvalue()) < 2**20
    answer_status = post(url, deployment.workspace.layout.ca, bomb.getvalue(),
                         {"Authorization": f"Bearer {token}"})
    assert answer_status == 422


PROBE = textwrap.dedent('''
    import json, os, socket, sys, urllib.request
    from flwr.serverapp.strategy import FedAvg

    TARGETS = json.loads({targets!r})

    def probe():
        found = {{}}
        for name, path in TARGETS["files"].items():
            try:
                with open(path, "rb") as handle:
                    found[name] = "READ " + repr(handle.read(40))
            except Exception as ex:
                found[name] = type(ex).__name__
        for name, port in TARGETS["ports"].items():
            s = socket.socket()
            s.settimeout(3)
            try:
                s.connect(("127.0.0.1", port))
                found[name] = "CONNECTED"
            except Exception as ex:
                found[name] = type(ex).__name__
            finally:
                s.close()
        argv = open("/proc/self/cmdline", "rb").read().split(b"\\0")
        runtime = [a.decode() for a in argv if a.startswith(b"127.0.0.1:")]
        for path in ("/v1/control/list-runs", "/v1/control/start-run", "/v1/runtime/create-task",
                     "/v1/fleet/pull-messages"):
            try:
                urllib.request.urlopen(urllib.request.Request(
                    "http://" + runtime[0] + path, data=b"", method="POST"), timeout=10)
                found[path] = "SERVED"
            except urllib.error.HTTPError as ex:
                found[path] = ex.code
            except Exception as ex:
                found[path] = type(ex).__name__
        try:
            block = bytearray(6 * 2**30)
            found["memory"] = "ALLOCATED"
        except MemoryError:
            found["memory"] = "MemoryError"
        found["uid"] = os.getuid()
        return found

    class Probe(FedAvg):
        def __init__(self, **kwargs):
            print("PROBE " + json.dumps(probe()), flush=True)
            super().__init__(**kwargs)
''')


def probe_targets(deployment) -> dict:
    workspace = deployment.workspace
    return {"files": {"cohort": str(deployment.root / "node" / "cohort.parquet"),
                      "node-secret": str(deployment.root / "node" / "state" / "secret"),
                      "node-ledger": str(deployment.root / "node" / "state" / "ledger.sqlite"),
                      "grant-key": str(workspace.layout.secrets / "grant-key.pem"),
                      "tls-key": str(workspace.layout.secrets / "tls" / "server.key"),
                      "superlink-db": str(workspace.layout.state / "superlink.db"),
                      "mlflow-db": str(workspace.layout.state / "mlflow.db"),
                      "mlflow-admin-password": str(workspace.layout.secrets / "mlflow-admin-password"),
                      "node-mlflow-account": str(deployment.root / "node" / "tracking-node.json"),
                      "workspace-environment": f"/proc/{os.getpid()}/environ",
                      "credentials": str(workspace.layout.credentials)},
            "ports": {"superlink": workspace.link_port, "mlflow": workspace.mlflow_port,
                      "fleet-gate": workspace.fleet_port, "intake": workspace.intake_port}}


def test_a_strategy_reaching_for_files_apis_network_or_memory_gets_nothing(deployment):
    targets = probe_targets(deployment)
    answer = submit(deployment, package(deployment.root / "probe", PROBE.format(
        targets=json.dumps(targets)), target="contributor.Probe"))
    lines = [line for line in serverapp_output(deployment).splitlines() if line.startswith("PROBE ")]
    assert lines, serverapp_output(deployment)[-3000:]
    found = json.loads(lines[-1].removeprefix("PROBE "))
    assert not [k for k, v in found.items() if str(v).startswith(("READ", "CONNECTED", "SERVED",
                                                                   "ALLOCATED"))], found
    assert found["/v1/control/list-runs"] == 403 and found["/v1/runtime/create-task"] == 403
    assert found["memory"] == "MemoryError" and found["uid"] != 0
    assert answer["ok"], answer  # the probe itself is a working strategy
    assert str(SENTINEL) not in serverapp_output(deployment)


def test_the_same_probe_wins_without_the_sandbox(deployment, tmp_path):
    """Control: run as the workspace's own process would, the probe reads and reaches everything."""
    source = PROBE.format(targets=json.dumps(probe_targets(deployment)))
    done = subprocess.run([sys.executable, "-c", source + "\nprint('PROBE ' + json.dumps(probe()))\n",
                           f"127.0.0.1:{deployment.workspace.link_port}"],
                          capture_output=True, text=True, timeout=120)
    found = json.loads(done.stdout.splitlines()[-1].removeprefix("PROBE "))
    assert all(found[name].startswith("READ") for name in (
        "cohort", "grant-key", "tls-key", "mlflow-admin-password", "node-mlflow-account",
        "workspace-environment"))
    assert found["superlink"] == "CONNECTED" and found["mlflow"] == "CONNECTED"


def test_a_strategy_that_sleeps_is_stopped_at_the_wall_clock_limit(deployment):
    sleeper = "import time\nfrom flwr.serverapp.strategy import FedAvg\n\nclass Sleeper(FedAvg):\n" \
              "    def __init__(self, **kw):\n        time.sleep(10**6)\n"
    started = time.monotonic()
    answer = submit(deployment, package(deployment.root / "sleeper", sleeper, "contributor.Sleeper"))
    assert not answer["ok"]
    assert time.monotonic() - started < WALL_SECONDS + 90
    assert any(code == "wall-time" for _, code in deployment.workspace.executor.finished)


def test_an_outsiders_bundle_never_runs_beside_the_records(deployment, tmp_path, monkeypatch):
    """A bundle naming its own ClientApp, started on the SuperLink by the workspace's own CLI (the
    only way to start a run): the node refuses it by rule before loading any of it."""
    app = tmp_path / "outsider"
    (app / "outsider").mkdir(parents=True)
    (app / "outsider" / "__init__.py").write_text("")
    (app / "outsider" / "apps.py").write_text(textwrap.dedent(f'''
        import pandas as pd
        from flwr.app import Message, MetricRecord, RecordDict
        from flwr.clientapp import ClientApp
        from flwr.serverapp import Grid, ServerApp

        client = ClientApp()

        @client.query("sentinel")
        def leak(msg, context):
            table = pd.read_parquet({str(deployment.root / "node" / "cohort.parquet")!r})
            return Message(RecordDict({{"row": MetricRecord({{"v": float(table.iloc[7, 3])}})}}),
                           reply_to=msg)

        server = ServerApp()

        @server.main()
        def main(grid: Grid, context) -> None:
            nodes = list(grid.get_node_ids())
            for reply in grid.send_and_receive([Message(RecordDict(), n, "query.sentinel") for n in nodes]):
                print("OUTSIDER", reply.error.reason if reply.has_error() else
                      reply.content["row"]["v"], flush=True)
    '''))
    (app / "pyproject.toml").write_text(textwrap.dedent('''
        [build-system]
        requires = ["hatchling"]
        build-backend = "hatchling.build"
        [project]
        name = "outsider"
        version = "1.0.0"
        [tool.hatch.build.targets.wheel]
        packages = ["."]
        [tool.flwr.app]
        publisher = "outsider"
        [tool.flwr.app.components]
        serverapp = "outsider.apps:server"
        clientapp = "outsider.apps:client"
    '''))
    env = deployment.workspace.env()
    started = subprocess.run([str(Path(sys.executable).parent / "flwr"), "run", str(app), "workspace",
                              "--stream"], env=env, capture_output=True, text=True, timeout=300)
    deadline = time.monotonic() + 120  # `flwr run --stream` may return before the ServerApp ends
    while "OUTSIDER" not in (output := serverapp_output(deployment)) and time.monotonic() < deadline:
        time.sleep(1)
    assert "OUTSIDER" in output and "pinned-clientapp" in output, started.stdout + started.stderr
    assert str(SENTINEL) not in output
    # control: the outsider's ClientApp, had it been loaded as a stock SuperNode loads it, leaks
    sys.path.insert(0, str(app))
    try:
        from flwr.app import Context, Message, RecordDict
        from flwr.supercore.task_identity import TaskIdentity
        from outsider.apps import client

        for name, value in {"task_id": 1, "run_id": 1, "node_id": 1}.items():  # outside an engine
            monkeypatch.setattr(TaskIdentity, f"_{name}", value)
        request = Message(RecordDict(), 1, "query.sentinel")
        leaked = client(request, Context(run_id=1, node_id=1, node_config={}, state=RecordDict(),
                                         run_config={}))
        assert leaked.content["row"]["v"] == pytest.approx(SENTINEL)
    finally:
        sys.path.remove(str(app))
    fab = io.BytesIO()
    with zipfile.ZipFile(fab, "w") as archive:
        archive.writestr("pyproject.toml", (app / "pyproject.toml").read_text())
    with pytest.raises(NodeError, match="pinned-clientapp"):
        check_bundle(fab.getvalue())


# --- faults: each leaves the topology as it found it ------------------------------------


def submit_with_fault(deployment, name: str, contributor: str, after: str, fault, timeout: float) -> dict:
    """Submit a package; when the node's log shows one more ``after`` message served, cause
    ``fault()``; return the workspace's answer."""
    def served() -> int:
        return (deployment.root / "node.log").read_text(errors="replace").count(f"served {after}")

    before, answers = served(), []
    thread = threading.Thread(target=lambda: answers.append(
        submit(deployment, package(deployment.root / name), contributor)))
    thread.start()
    deadline = time.monotonic() + 180
    while served() <= before:
        assert time.monotonic() < deadline, f"no {after} served"
        time.sleep(0.2)
    fault()
    thread.join(timeout=timeout)
    assert answers, "no answer from the workspace"
    return answers[0]


def outbox_size(deployment) -> int:
    with sqlite3.connect(deployment.root / "node" / "state" / "ledger.sqlite") as db:
        return db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]


def test_a_node_killed_mid_round_ends_the_run_and_is_charged_once(deployment):
    killed_at = []
    try:
        answer = submit_with_fault(deployment, "killed", "carol", "train",
                                   lambda: (deployment.kill_node(), killed_at.append(time.monotonic())),
                                   REPLY_SECONDS + 180)
        assert not answer["ok"] and "no node replied" in answer["error"], answer
        assert time.monotonic() - killed_at[0] < REPLY_SECONDS + 120
        run_id = answer["submission_id"]
        assert mlflow_run(deployment, run_id).info.status == "FAILED"
        with sqlite3.connect(deployment.root / "node" / "state" / "ledger.sqlite") as db:
            rounds = [r for (r,) in db.execute("SELECT server_round FROM rounds WHERE run_id = ?", (run_id,))]
        assert rounds and len(rounds) == len(set(rounds)) and max(rounds) <= ROUNDS
    finally:  # the operator starts it again (also when the above failed, for the tests after)
        if deployment.node.poll() is not None:
            deployment.start_node()
    assert submit(deployment, package(deployment.root / "after-kill"), "carol")["ok"]


def test_a_superlink_restarted_mid_run_ends_it_with_a_status_and_serves_the_next(deployment):
    answer = submit_with_fault(deployment, "restarted", "dave", "train",
                               deployment.workspace.restart_superlink, WALL_SECONDS + 240)
    assert answer["ok"] or answer["error"], answer
    status = mlflow_run(deployment, answer["submission_id"]).info.status
    assert status == ("FINISHED" if answer["ok"] else "FAILED")
    deadline = time.monotonic() + 120
    while deployment.workspace.online_nodes() < 1:  # the SuperNode reconnects by itself
        assert time.monotonic() < deadline, "the node did not reconnect"
        time.sleep(1)
    assert submit(deployment, package(deployment.root / "after-restart"), "dave")["ok"]


def test_mlflow_down_at_the_final_score_loses_nothing(deployment):
    answer = submit_with_fault(deployment, "store-down", "erin", "query.holdout_out_of_the_box",
                               deployment.workspace.stop_mlflow, WALL_SECONDS + 120)
    assert answer.get("pending"), answer
    assert outbox_size(deployment) > 0  # the node kept the record
    deployment.workspace.start_mlflow()
    run_id, deadline = answer["submission_id"], time.monotonic() + 180
    while True:
        try:
            run = mlflow_run(deployment, run_id)
            if run.info.status == "FINISHED":
                break
        except Exception:
            pass
        assert time.monotonic() < deadline, "the run was not closed after the store came back"
        time.sleep(2)
    assert {"holdout_out_of_the_box_macro_f1", "holdout_fine_tuned_macro_f1", "compute_flops",
            "importance_top_group"} <= set(run.data.metrics)
    assert outbox_size(deployment) == 0


def test_the_foundation_rescores_past_runs_on_a_grown_cohort_in_the_deployed_store(deployment):
    """Last in this module: the foundation stops its node, adds 160 records to its cohort and runs
    `cohortfl rescore --config node.yaml`, which writes through TLS and the node's own MLflow account:
    every finished run gets a new run on cohort version 2, with both scores."""
    import pandas as pd
    from mlflow.tracking import MlflowClient

    from server.deployment import stop_process
    from synthetic.disease import generate_cohort

    stop_process(deployment.node)
    cohort = deployment.root / "node" / "cohort.parquet"
    grown = pd.concat([pd.read_parquet(cohort), generate_cohort(1).iloc[:160]], ignore_index=True)
    grown.to_parquet(cohort, index=False)
    own_account = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}  # not the admin's
    done = subprocess.run([sys.executable, "-m", "server.cli", "rescore", "--config",
                           str(deployment.root / "node" / "node.yaml")], capture_output=True, text=True,
                          timeout=600, env=own_account)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    client = MlflowClient(deployment.workspace.tracking_uri)  # the test's admin account reads them all
    experiments = [e.experiment_id for e in client.search_experiments()]  # one per contributor
    rescored = client.search_runs(experiments, "tags.`cohortfl.rescore_of` != ''")
    assert FINISHED_RUNS["alice"] in {r.data.tags["cohortfl.rescore_of"] for r in rescored}, done.stdout
    for run in rescored:
        assert run.data.params["cohort_version"] == "2" and run.info.status == "FINISHED"
        assert {"holdout_out_of_the_box_macro_f1", "holdout_fine_tuned_macro_f1"} <= set(run.data.metrics)
    assert f"{len(rescored)} run(s) rescored" in done.stdout
