"""Typed values that cross between the node and the workspace, with their wire forms."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class PairedDifference:
    """Macro-F1 of run a minus that of run b on the same holdout records, with its interval.

    Attributes
    ----------
    difference : float
        ``macro_f1(a) - macro_f1(b)`` on the full holdout.
    low, high : float
        Percentile bootstrap interval of the difference, both runs scored on the same
        resampled records each time.
    """

    difference: float
    low: float
    high: float

    @property
    def within_noise(self) -> bool:
        """Whether the interval holds 0: the holdout cannot tell the two runs apart."""
        return self.low <= 0.0 <= self.high

    def reversed(self) -> PairedDifference:
        """b minus a."""
        return PairedDifference(-self.difference, -self.high, -self.low)

    def to_text(self) -> str:
        """The tag value the node writes (JSON)."""
        return json.dumps({k: round(v, 4) for k, v in asdict(self).items()}, sort_keys=True)

    @classmethod
    def from_text(cls, text: str) -> PairedDifference:
        """Inverse of ``to_text``."""
        values = json.loads(text)
        return cls(float(values["difference"]), float(values["low"]), float(values["high"]))
