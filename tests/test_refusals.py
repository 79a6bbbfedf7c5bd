"""The ServerApp surfaces a node's refusal reasons from error replies."""

import pytest
from flwr.app import Error, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from server.refusals import RefusalRecordingGrid, reason


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    """Flower needs a task identity to build messages outside an engine."""
    for name, value in {"task_id": 1, "run_id": 1, "node_id": 0}.items():
        monkeypatch.setattr(TaskIdentity, f"_{name}", value)


class FakeGrid:
    """Stands in for a Flower Grid in this unit test only: returns canned replies."""

    def __init__(self, replies):
        self.replies = replies

    def send_and_receive(self, messages, *, timeout=None):
        return self.replies

    def get_node_ids(self):
        return [7]


def _error_reply(text: str) -> Message:
    request = Message(RecordDict(), dst_node_id=7, message_type="train")
    wrapped = ("<class 'flwr.clientapp.client_app.ClientAppException'>:<'\nException "
               f"ClientAppException occurred. Message: {text}'>")
    return Message(Error(code=0, reason=wrapped), reply_to=request)


def test_reason_strips_flowers_wrapping():
    assert reason(_error_reply("refused by rule 'lr-range': x")) == "refused by rule 'lr-range': x"


def test_the_grid_records_refusals_and_passes_replies_through():
    replies = [_error_reply("refused by rule 'known-config-keys': y")]
    grid = RefusalRecordingGrid(FakeGrid(replies))
    assert list(grid.send_and_receive([])) == replies
    assert grid.refusals == ["refused by rule 'known-config-keys': y"]
    assert list(grid.get_node_ids()) == [7]
