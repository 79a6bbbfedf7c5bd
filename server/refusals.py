"""Why a run failed, kept for the contributor: the nodes' refusals and what Flower warned.

Flower's strategies log failed replies and skip them, and say why they aggregated
nothing only in their log; the node's reasons (rule names, never data) and Flower's
warnings would otherwise stay in a log the contributor may not see.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from flwr.app import Message
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid

from server.errors import SubmissionFailed

#: Flower internals used here (module, name), checked on every Flower upgrade.
PRIVATE_FLOWER_API = (("flwr.common.constant", "ErrorCode"),)

#: Seconds between pulls for replies: the first pause, and the longest.
POLL_FIRST, POLL_MAX = 0.02, 0.5
#: The longest wait for a reply (a node stops a round at its policy's ``round_seconds_max``);
#: the workspace's sandbox sets it through this environment variable.
REPLY_TIMEOUT, REPLY_TIMEOUT_ENV = 300.0, "COHORTFL_REPLY_TIMEOUT"
#: Error codes the SuperLink writes itself when the node or its message is gone: not a reply
#: from any node.
LINK_MADE = frozenset({ErrorCode.NODE_UNAVAILABLE, ErrorCode.MESSAGE_UNAVAILABLE,
                       ErrorCode.REPLY_MESSAGE_UNAVAILABLE})


class RefusalRecordingGrid(Grid):
    """Delegates every call to ``grid`` and keeps the reasons of error replies."""

    def __init__(self, grid: Grid) -> None:
        self._grid = grid
        self.refusals: list[str] = []
        self._no_node_since: float | None = None

    def set_run(self, run) -> None:  # run: Flower's Run
        """Set the run on the wrapped grid."""
        self._grid.set_run(run)

    @property
    def run(self):  # -> Run
        """The wrapped grid's run."""
        return self._grid.run

    def create_message(self, *args, **kwargs) -> Message:
        """Create a message with the wrapped grid."""
        return self._grid.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        """Node ids of the wrapped grid.

        Raises
        ------
        SubmissionFailed
            No node has been online for the reply timeout: Flower's strategies would wait for
            one without end, and the run would only stop at the sandbox's wall clock.
        """
        nodes = list(self._grid.get_node_ids())
        if nodes:
            self._no_node_since = None
            return nodes
        now = time.monotonic()
        self._no_node_since = self._no_node_since or now
        if now - self._no_node_since >= reply_timeout():
            raise SubmissionFailed(f"no node online for {reply_timeout():.0f} s")
        return nodes

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Push through the wrapped grid."""
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Pull through the wrapped grid, noting refusals."""
        return self._note(self._grid.pull_messages(message_ids))

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        """Push, then pull replies until all are in or the timeout passes, noting refusals.

        Flower's deployment grid sleeps a fixed 3 s between pulls; this one starts at
        ``POLL_FIRST`` s and doubles up to ``POLL_MAX``, so a fast node is not waited for.
        The wait is at most ``REPLY_TIMEOUT`` s (or ``$COHORTFL_REPLY_TIMEOUT``) whatever the
        strategy asks. A pull still going at the deadline is left behind: Flower retries the
        objects of a reply whose upload a dying node never finished for up to two hours.

        Raises
        ------
        SubmissionFailed
            No node replied at all in time, or the SuperLink answered every message itself
            because its node is gone (``LINK_MADE``): a node that died mid-round ends the run
            now, with that reason, instead of every later round waiting in turn.
        """
        messages = list(messages)
        waiting = set(self._grid.push_messages(messages))
        timeout = reply_timeout() if timeout is None else min(timeout, reply_timeout())
        deadline = time.monotonic() + timeout
        replies: list[Message] = []
        pause = POLL_FIRST
        while waiting and time.monotonic() < deadline:
            pulled = self._pull_by(waiting, deadline)
            if pulled is None:
                break
            replies += pulled
            waiting -= {m.metadata.reply_to_message_id for m in pulled}
            if waiting:
                time.sleep(pause)
                pause = min(2 * pause, POLL_MAX)
        if messages and all(r.has_error() and r.error.code in LINK_MADE for r in replies):
            kind = messages[0].metadata.message_type
            why = f"(the SuperLink: {reason(replies[0])})" if replies else f"within {timeout:.0f} s"
            raise SubmissionFailed(f"no node replied to {kind} {why}")
        return self._note(replies)

    def _pull_by(self, message_ids: set[str], deadline: float) -> list[Message] | None:
        """One pull of the wrapped grid, or None if it has not returned by ``deadline``."""
        pulled: list[list[Message]] = []
        pull = threading.Thread(target=lambda: pulled.append(list(self._grid.pull_messages(message_ids))),
                                daemon=True, name="pull-replies")
        pull.start()
        pull.join(max(0.0, deadline - time.monotonic()))
        return pulled[0] if pulled else None

    def __getattr__(self, name: str):  # noqa: ANN204
        """Anything else a Grid implementation offers, from the wrapped grid."""
        return getattr(self._grid, name)

    def _note(self, replies: Iterable[Message]) -> list[Message]:
        """Keep the reasons of error replies; return the replies unchanged."""
        replies = list(replies)
        self.refusals += [reason(r) for r in replies if r.has_error()]
        return replies


def reply_timeout() -> float:
    """The longest wait for a node, in seconds."""
    return float(os.environ.get(REPLY_TIMEOUT_ENV, REPLY_TIMEOUT))


def reason(reply: Message) -> str:
    """The node's own words from an error reply, without Flower's wrapping."""
    text = reply.error.reason
    if "Message: " in text:
        text = text.split("Message: ", 1)[1]
    return text.strip().removesuffix("'>").strip()


@contextmanager
def flower_warnings(echo: bool = False) -> Iterator[list[str]]:
    """Collect what Flower logs at WARNING and above while it lasts; shown as well when ``echo``,
    else kept off the terminal (the engine quiets Flower unless asked to be verbose)."""
    said: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            said.append(record.getMessage())

    logger = logging.getLogger("flwr")
    saved = logger.handlers[:], logger.level, logger.propagate
    if echo:
        logger.addHandler(Collect(logging.WARNING))
    else:
        logger.handlers, logger.propagate = [Collect(logging.WARNING)], False
    logger.setLevel(min(logger.level or logging.WARNING, logging.WARNING))
    try:
        yield said
    finally:
        logger.handlers, logger.propagate = saved[0], saved[2]
        logger.setLevel(saved[1])
