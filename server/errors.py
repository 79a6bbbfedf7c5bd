"""Exceptions raised by the workspace."""


class SubmissionFailed(RuntimeError):
    """A phase of a submission did not complete; the message says which and why."""


class LeaderboardError(LookupError):
    """The leaderboard cannot be read: no such experiment, or a malformed query."""
