"""The published column schema of the cohort (what any contributor may know)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from contract.names import REPORTED_CLASS
from models.columns import ColumnGroups
from models.pipeline import FeaturePipeline, FeatureSpec

GENE_COLUMNS: tuple[str, ...] = tuple(f"gene_{i}" for i in range(200))
CLINICAL_COLUMNS: tuple[str, ...] = tuple(f"clinical_{i}" for i in range(29))
SIGNATURE_COLUMNS: tuple[str, ...] = tuple(f"signature_{i}" for i in range(21))
CATEGORICAL_LEVELS: dict[str, tuple[str, ...]] = {
    "sex": ("female", "male"),
    "onset": ("childhood", "juvenile", "adult"),
}
ID_COLUMN = "patient_id"
LABEL_COLUMN = "progression"
CLASSES: tuple[str, ...] = ("Slow", "Medium", "Fast")
#: The class whose recall is reported beside macro-F1 (the foundation's clinical priority).


@dataclass(frozen=True)
class CohortSchema:
    """Column groups, categorical levels and class labels of the cohort.

    Attributes
    ----------
    numeric : tuple of str
        The 250 numerical feature columns (genes, clinical, signatures).
    categorical : dict of str to tuple of str
        The 2 categorical feature columns and their allowed levels.
    classes : tuple of str
        The label's classes, in order (progression is ordinal: Slow < Medium < Fast).
    reported_class : str
        The class whose recall the leaderboard shows beside macro-F1.
    groups : ColumnGroups
        Each numeric column's group and the groups with a role (genes, signatures); by default
        the demo's, by column prefix.
    """

    numeric: tuple[str, ...] = GENE_COLUMNS + CLINICAL_COLUMNS + SIGNATURE_COLUMNS
    categorical: dict[str, tuple[str, ...]] = field(
        default_factory=lambda: dict(CATEGORICAL_LEVELS)
    )
    id_column: str = ID_COLUMN
    label_column: str = LABEL_COLUMN
    classes: tuple[str, ...] = CLASSES
    reported_class: str = REPORTED_CLASS
    groups: ColumnGroups | None = None

    def __post_init__(self) -> None:
        if self.groups is None:
            object.__setattr__(self, "groups", ColumnGroups.by_prefix(self.numeric))

    @property
    def feature_columns(self) -> tuple[str, ...]:
        """All feature columns, numeric first, in file order."""
        return self.numeric + tuple(self.categorical)

    def label_indices(self, labels: pd.Series) -> np.ndarray:
        """Class indices (into ``classes``) of a column of class names, shape (n,)."""
        return labels.map({c: i for i, c in enumerate(self.classes)}).to_numpy(np.int64, copy=True)

    def pipeline(self, spec: FeatureSpec) -> FeaturePipeline:
        """The unfitted feature pipeline ``spec`` asks for over this schema's columns.

        Raises
        ------
        FeatureSpecError
            The spec names columns the schema does not have.
        """
        spec.validate(self.numeric, self.groups)
        return FeaturePipeline(spec, self.numeric, self.categorical, self.groups)

    @property
    def all_columns(self) -> tuple[str, ...]:
        """Every column a cohort file must have."""
        return (self.id_column, *self.feature_columns, self.label_column)


SCHEMA = CohortSchema()
