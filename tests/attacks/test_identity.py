"""Identity that cannot be claimed: the node works only for runs the workspace signed.

Whoever can start a Flower run sets its run config, ``contributor`` and ``submission-id``
included. Each attack here hands the real ClientApp a run config an attacker could build: no
grant, a grant signed with the attacker's own key, a valid grant with the config edited after
signing (another contributor, another submission, another learning rate), an expired grant, a
node that trusts no key. Each must be refused by rule before any work, nothing may be charged to
the identity it claims, and the export ledger must record the claim as unverified.
"""

from __future__ import annotations

import pytest
from flwr.app import ArrayRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from mlflow.tracking import MlflowClient
from runs import local_signer

from client.app import build_client_app
from client.ledger import NodeLedger
from client.node import Node
from client.settings import NodeSettings
from contract.grant import GRANT_KEY
from contract.names import HOLDOUT_OUT_OF_THE_BOX
from contract.submission import Submission
from models import ModelSpec
from server.signing import WorkspaceSigner
from server.workspace import Workspace


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    """Flower needs a task identity to build messages outside an engine."""
    for name, value in {"task_id": 1, "run_id": 1, "node_id": 0}.items():
        monkeypatch.setattr(TaskIdentity, f"_{name}", value)


@pytest.fixture
def setting(tmp_path, cohort_parquet):
    """A node that trusts the workspace's key; the workspace; alice's honest, signed run config."""
    signer = local_signer(tmp_path)
    node = NodeSettings(data_path=str(cohort_parquet), tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
                        state_dir=str(tmp_path / "node-state"), device="cpu",
                        workspace_key=str(signer.public_key_path))
    workspace = Workspace(node, "identity", signer)
    alice = workspace.open_run(Submission(
        contributor="alice", strategy={"_target_": "flwr.serverapp.strategy.FedAvg"},
        model=ModelSpec("linear"), lr=0.05, batch_size=32, local_epochs=1, num_rounds=2))
    return node, workspace, workspace.run_config(alice), tmp_path


def _ask(node: NodeSettings, run_config: dict) -> Exception | None:
    """Ask the node for the out-of-the-box score under ``run_config``; the refusal, if any."""
    model = Node.for_settings(node).build(Submission.from_run_config(
        {**run_config, "contributor": "x", "submission-id": "x"}))[0]
    arrays = ArrayRecord({k: v.detach() for k, v in model.state_dict().items()})
    message = Message(RecordDict({"arrays": arrays}), dst_node_id=0, message_type=HOLDOUT_OUT_OF_THE_BOX)
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config)
    try:
        build_client_app(node)(message, context)
    except Exception as ex:  # the node's refusal, as the strategy would read it
        return ex
    return None


def _forged(run_config: dict, folder) -> dict:
    """The same run config, signed with the attacker's own key."""
    return WorkspaceSigner(folder / "mallory" / "key.pem").signed(run_config)


ATTACKS = {
    "no grant": lambda config, folder: {k: v for k, v in config.items() if k != GRANT_KEY},
    "a grant signed with the attacker's key": lambda config, folder: _forged(config, folder),
    "claim another contributor": lambda config, folder: {**config, "contributor": "mallory"},
    "write into another submission": lambda config, folder: {**config, "submission-id": "0" * 32},
    "edit a hyperparameter after signing": lambda config, folder: {**config, "lr": 1.0},
    "a grant that is not a grant": lambda config, folder: {**config, GRANT_KEY: "x.y"},
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_a_run_config_the_workspace_did_not_sign_is_refused_and_charges_nobody(setting, attack):
    node, _, signed, folder = setting
    refusal = _ask(node, ATTACKS[attack](signed, folder))
    assert refusal is not None and "refused by rule 'run-grant'" in str(refusal)
    ledger = NodeLedger(node.ledger_path)
    assert ledger.usage("alice").submissions == 0 and ledger.usage("mallory").submissions == 0
    assert all(row.contributor.startswith("unverified:") for row in ledger.exports())
    metrics = MlflowClient(node.tracking_uri).get_run(str(signed["submission-id"])).data.metrics
    assert metrics == {}  # nothing written into alice's official run


def test_an_expired_grant_is_refused(setting):
    node, workspace, _, folder = setting
    workspace.signer.lifetime = -1.0
    expired = workspace.signer.signed({k: v for k, v in setting[2].items() if k != GRANT_KEY})
    assert "run-grant-expired" in str(_ask(node, expired))


def test_a_node_that_trusts_no_key_works_for_nobody(setting):
    node, _, signed, _ = setting
    from dataclasses import replace

    assert "trusts no workspace key" in str(_ask(replace(node, workspace_key=""), signed))


def test_the_honest_signed_run_is_served_and_charged_to_the_signed_identity(setting):
    node, _, signed, _ = setting
    assert _ask(node, signed) is None
    ledger = NodeLedger(node.ledger_path)
    assert ledger.usage("alice").submissions == 1
    assert [row.contributor for row in ledger.exports()] == ["alice"]


def test_the_signing_key_is_readable_by_its_owner_only_and_the_node_holds_the_public_half(tmp_path):
    signer = local_signer(tmp_path)
    assert signer.key_path.stat().st_mode & 0o077 == 0
    assert b"PUBLIC KEY" in signer.public_key_path.read_bytes()
    assert b"PRIVATE" not in signer.public_key_path.read_bytes()


def test_a_replayed_grant_gets_no_second_score(setting):
    """A second Flower run with alice's grant (a replay) finds her submission's phase used."""
    node, _, signed, _ = setting
    assert _ask(node, signed) is None
    assert "submission-phases" in str(_ask(node, signed))
    assert NodeLedger(node.ledger_path).usage("alice").submissions == 1
