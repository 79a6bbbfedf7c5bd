"""Exceptions raised by the workspace."""


class SubmissionFailed(RuntimeError):
    """A phase of a submission did not complete; the message says which and why."""


class LeaderboardError(LookupError):
    """The leaderboard cannot be read: no such experiment, or a malformed query."""


class PackageRefused(ValueError):
    """A submission package broke an intake rule; nothing in it ran.

    Parameters
    ----------
    rule : str
        The rule's name, e.g. ``package-files``.
    detail : str
        What is allowed.
    """

    def __init__(self, rule: str, detail: str) -> None:
        self.rule = rule
        super().__init__(f"package refused by rule '{rule}': {detail}")


class TrackingStoreError(OSError):
    """The MLflow store cannot be used; the message names the URI and what to do."""
