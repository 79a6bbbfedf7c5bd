"""Exceptions raised on the node.

Messages name the rule or the column that was wrong and how to fix it, never a
value from the cohort: a ClientApp exception travels to the server as text.
"""


class NodeError(Exception):
    """Base class of every error the node raises on purpose."""


class CohortValidationError(NodeError):
    """The cohort file does not match the schema; nothing was processed.

    Parameters
    ----------
    problems : list of str
        One line per broken rule, each naming the column(s) and the rule.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        lines = "\n  - ".join(self.problems)
        super().__init__(f"cohort rejected ({len(self.problems)} problem(s)):\n  - {lines}")


class PolicyViolation(NodeError):
    """Incoming work broke a rule of the node policy; it was refused before it ran.

    Parameters
    ----------
    rule : str
        The policy rule's name, e.g. ``lr-range``.
    detail : str
        What was expected, in terms of the policy (never of the data).
    """

    def __init__(self, rule: str, detail: str) -> None:
        self.rule = rule
        super().__init__(f"refused by rule '{rule}': {detail}")


class PhaseViolation(PolicyViolation):
    """A message arrived at a moment of the submission where it is not allowed."""


class ReplyRefused(NodeError):
    """A reply the node built does not fit the export whitelist; it was not sent."""
