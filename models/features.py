"""Feature preprocessing fitted on the training split only.

Numeric columns are standardised with the training split's mean and standard
deviation; categorical columns are one-hot encoded against the schema's fixed
levels, so the encoding never depends on which records a site holds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd


class StandardFeatures:
    """Standardise numeric columns, one-hot encode categoricals.

    Parameters
    ----------
    numeric : sequence of str
        Numeric column names.
    categorical : mapping of str to sequence of str
        Categorical column names and their allowed levels.

    Attributes
    ----------
    mean_, scale_ : numpy.ndarray
        Per-numeric-column statistics of the frame passed to ``fit``.
    """

    def __init__(self, numeric: Sequence[str], categorical: Mapping[str, Sequence[str]]) -> None:
        self.numeric = list(numeric)
        self.categorical = {k: list(v) for k, v in categorical.items()}

    @property
    def n_features(self) -> int:
        """Width of the matrix ``transform`` returns."""
        return len(self.numeric) + sum(len(v) for v in self.categorical.values())

    def fit(self, frame: pd.DataFrame) -> StandardFeatures:
        """Learn the numeric columns' mean and scale from ``frame``."""
        values = frame[self.numeric].to_numpy(dtype=np.float64)
        self.mean_ = values.mean(axis=0)
        scale = values.std(axis=0)
        self.scale_ = np.where(scale > 0, scale, 1.0)
        return self

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """Return a float32 matrix of shape (len(frame), n_features)."""
        numeric = (frame[self.numeric].to_numpy(dtype=np.float64) - self.mean_) / self.scale_
        blocks = [numeric]
        for column, levels in self.categorical.items():
            codes = pd.Categorical(frame[column], categories=levels).codes
            blocks.append(np.eye(len(levels))[codes])
        return np.hstack(blocks).astype(np.float32)
