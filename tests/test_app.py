"""The ClientApp's guard: what crosses the wire when things go wrong, and the export ledger."""

import pytest
from flwr.app import ArrayRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from client.app import build_client_app
from client.errors import NodeError
from client.ledger import NodeLedger
from client.node import round_seed
from client.settings import NodeSettings

SENTINEL = "987654.321"


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    """Flower needs a task identity to build messages outside an engine."""
    for name, value in {"task_id": 1, "run_id": 1, "node_id": 0}.items():
        monkeypatch.setattr(TaskIdentity, f"_{name}", value)


def _context(tmp_path) -> Context:
    run_config = {"contributor": "mallory", "submission-id": "run-x", "model": '{"name": "linear"}',
                  "seed": 0, "num-rounds": 2}
    return Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config)


def test_a_cohort_that_fails_to_load_sends_fixed_text_and_is_ledgered(tmp_path, cohort_frame):
    """A file without its header row would echo the first record in a validation error."""
    frame = cohort_frame.copy()
    frame.iloc[0, 1] = float(SENTINEL)
    path = tmp_path / "headerless.csv"
    frame.to_csv(path, index=False, header=False)
    settings = NodeSettings(data_path=str(path), tracking_uri=f"sqlite:///{tmp_path}/m.db",
                            state_dir=str(tmp_path / "state"), device="cpu")
    app = build_client_app(settings)
    message = Message(RecordDict({"arrays": ArrayRecord()}), dst_node_id=0,
                      message_type="query.holdout_out_of_the_box")
    with pytest.raises(Exception) as info:
        app(message, _context(tmp_path))
    assert "cannot load its cohort" in str(info.value)
    assert SENTINEL not in str(info.value) and "P000" not in str(info.value)
    [export] = NodeLedger(settings.ledger_path).exports("unverified:mallory")  # before any grant
    assert export.keys == ["error"] and export.message_type == "query.holdout_out_of_the_box"


@pytest.mark.parametrize("message_type", ["query.predictions", "evaluate", "query"])
def test_message_types_without_a_handler_are_refused(tmp_path, cohort_parquet, message_type):
    settings = NodeSettings(data_path=str(cohort_parquet), tracking_uri=f"sqlite:///{tmp_path}/m.db",
                            state_dir=str(tmp_path / "state"), device="cpu")
    message = Message(RecordDict(), dst_node_id=0, message_type=message_type)
    with pytest.raises(ValueError, match="No .* function registered"):
        build_client_app(settings)(message, _context(tmp_path))


def test_round_seeds_need_the_nodes_secret():
    assert round_seed(b"a" * 32, "run", 1) == round_seed(b"a" * 32, "run", 1)
    assert round_seed(b"a" * 32, "run", 1) != round_seed(b"b" * 32, "run", 1)
    assert round_seed(b"a" * 32, "run", 1) != round_seed(b"a" * 32, "run", 2)
    assert round_seed(b"a" * 32, "run", 1) != round_seed(b"a" * 32, "other", 1)


def test_node_errors_keep_their_rule_text(tmp_path, cohort_parquet):
    settings = NodeSettings(data_path=str(cohort_parquet), tracking_uri=f"sqlite:///{tmp_path}/m.db",
                            state_dir=str(tmp_path / "state"), device="cpu")
    message = Message(RecordDict({"arrays": ArrayRecord()}), dst_node_id=0, message_type="train")
    with pytest.raises(Exception) as info:
        build_client_app(settings)(message, _context(tmp_path))
    assert isinstance(info.value, NodeError) or "refused by rule" in str(info.value)
    assert "refused by rule" in str(info.value)
