"""Feature preprocessing fitted on the training split only: the default pipeline.

Numeric columns are standardised with the training split's mean and standard
deviation; categorical columns are one-hot encoded against the schema's fixed
levels, so the encoding never depends on which records a site holds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from models.pipeline import FeaturePipeline, FeatureSpec


class StandardFeatures(FeaturePipeline):
    """Standardise numeric columns, one-hot encode categoricals: ``FeatureSpec()``.

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
        super().__init__(FeatureSpec(), numeric, categorical)
