"""The ServerApp surfaces a node's refusal reasons from error replies."""

import time

import pytest
from flwr.app import Error, Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.supercore.task_identity import TaskIdentity

from server.errors import SubmissionFailed
from server.refusals import REPLY_TIMEOUT_ENV, RefusalRecordingGrid, reason


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    """Flower needs a task identity to build messages outside an engine."""
    for name, value in {"task_id": 1, "run_id": 1, "node_id": 0}.items():
        monkeypatch.setattr(TaskIdentity, f"_{name}", value)


class FakeGrid:
    """Stands in for a Flower Grid in this unit test only: replies arrive one pull at a time."""

    def __init__(self, replies):
        self.replies = list(replies)
        self.pulls = 0

    def push_messages(self, messages):
        return [m.metadata.reply_to_message_id for m in self.replies]

    def pull_messages(self, message_ids):
        self.pulls += 1
        return [self.replies[self.pulls - 1]] if self.pulls <= len(self.replies) else []

    def get_node_ids(self):
        return [7]


def _error_reply(text: str, code: int = 0) -> Message:
    request = Message(RecordDict(), dst_node_id=7, message_type="train")
    wrapped = ("<class 'flwr.clientapp.client_app.ClientAppException'>:<'\nException "
               f"ClientAppException occurred. Message: {text}'>")
    return Message(Error(code=code, reason=wrapped), reply_to=request)


def test_reason_strips_flowers_wrapping():
    assert reason(_error_reply("refused by rule 'lr-range': x")) == "refused by rule 'lr-range': x"


def test_the_grid_records_refusals_and_passes_replies_through():
    replies = [_error_reply("refused by rule 'known-config-keys': y")]
    grid = RefusalRecordingGrid(FakeGrid(replies))
    assert list(grid.send_and_receive([])) == replies
    assert grid.refusals == ["refused by rule 'known-config-keys': y"]
    assert list(grid.get_node_ids()) == [7]


def test_the_grid_pulls_until_every_reply_is_in_and_stops_at_the_timeout():
    replies = [_error_reply("a")]
    late = FakeGrid(replies)
    late.replies = [None, None, *replies]  # nothing in the first two pulls
    late.pull_messages = lambda ids, f=FakeGrid.pull_messages: [m for m in f(late, ids) if m]
    late.push_messages = lambda messages: [replies[0].metadata.reply_to_message_id]
    assert list(RefusalRecordingGrid(late).send_and_receive([])) == replies and late.pulls == 3
    never = FakeGrid(replies)
    never.pull_messages = lambda ids: []
    request = Message(RecordDict(), dst_node_id=7, message_type="train")
    with pytest.raises(SubmissionFailed, match="no node replied to train within 0 s"):
        RefusalRecordingGrid(never).send_and_receive([request], timeout=0.1)


def test_a_reply_the_superlink_wrote_for_a_dead_node_is_no_reply():
    """A killed node's message comes back as the SuperLink's own NODE_UNAVAILABLE error; a run
    that took it for a node's refusal went on to wait for nodes until the wall clock."""
    gone = FakeGrid([_error_reply("node unavailable", ErrorCode.NODE_UNAVAILABLE)])
    request = Message(RecordDict(), dst_node_id=7, message_type="train")
    with pytest.raises(SubmissionFailed, match=r"no node replied to train \(the SuperLink: node unavailable"):
        RefusalRecordingGrid(gone).send_and_receive([request], timeout=5)
    refused = FakeGrid([_error_reply("refused by rule 'lr-range': x", ErrorCode.CLIENT_APP_RAISED_EXCEPTION)])
    assert len(RefusalRecordingGrid(refused).send_and_receive([request], timeout=5)) == 1


def test_no_node_online_for_the_reply_timeout_ends_the_run(monkeypatch):
    monkeypatch.setenv(REPLY_TIMEOUT_ENV, "0.2")
    empty = FakeGrid([])
    empty.get_node_ids = lambda: []
    grid = RefusalRecordingGrid(empty)
    assert list(grid.get_node_ids()) == []  # a strategy may wait a while for a node
    time.sleep(0.25)
    with pytest.raises(SubmissionFailed, match="no node online for 0 s"):
        grid.get_node_ids()


def test_a_pull_that_hangs_on_a_half_uploaded_reply_ends_at_the_timeout():
    """A node killed while uploading its reply leaves objects Flower retries for two hours."""
    stuck = FakeGrid([])
    stuck.pull_messages = lambda ids: time.sleep(60) or []
    request = Message(RecordDict(), dst_node_id=7, message_type="train")
    started = time.monotonic()
    with pytest.raises(SubmissionFailed, match="no node replied to train within 0 s"):
        RefusalRecordingGrid(stuck).send_and_receive([request], timeout=0.3)
    assert time.monotonic() - started < 5
