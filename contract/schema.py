"""The published column schema of the cohort (what any contributor may know)."""

from __future__ import annotations

import hashlib
import json
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
    may_be_missing : tuple of str
        The feature columns whose cells may be missing (the dictionary's ``may_be_missing``); a
        missing cell anywhere else is refused. Feature specs say how to fill them.
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
    may_be_missing: tuple[str, ...] = ()

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
        spec.validate(self.numeric, self.groups, self.categorical)
        return FeaturePipeline(spec, self.numeric, self.categorical, self.groups, self.may_be_missing)

    @property
    def all_columns(self) -> tuple[str, ...]:
        """Every column a cohort file must have."""
        return (self.id_column, *self.feature_columns, self.label_column)

    def to_json(self) -> str:
        """The published form (names, groups, levels, classes; never a value of a record), as
        compact JSON with sorted keys: what the workspace builds a run for and the node checks."""
        return json.dumps({
            "id_column": self.id_column, "label_column": self.label_column, "classes": list(self.classes),
            "reported_class": self.reported_class, "numeric": list(self.numeric),
            "categorical": {k: list(v) for k, v in self.categorical.items()},
            # the keys above are sorted; a pipeline one-hot encodes in the dictionary's order
            "categorical_order": list(self.categorical),
            "groups": self.groups.to_mapping(), "may_be_missing": list(self.may_be_missing)},
            sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> CohortSchema:
        """Inverse of ``to_json``.

        Raises
        ------
        ValueError
            Not the JSON ``to_json`` writes.
        """
        try:
            data = json.loads(text)
            groups = data["groups"]
            return cls(numeric=tuple(map(str, data["numeric"])),
                       categorical={str(k): tuple(map(str, data["categorical"][k])) for k in
                                    data.get("categorical_order", data["categorical"])},
                       id_column=str(data["id_column"]), label_column=str(data["label_column"]),
                       classes=tuple(map(str, data["classes"])), reported_class=str(data["reported_class"]),
                       groups=ColumnGroups({str(k): str(v) for k, v in groups["of"].items()},
                                           groups["genes"], groups["signatures"]),
                       may_be_missing=tuple(map(str, data.get("may_be_missing", []))))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ValueError("not a published cohort schema (CohortSchema.to_json)") from None

    @property
    def fingerprint(self) -> str:
        """The first 16 hex digits of the SHA-256 of ``to_json``: names a schema in messages."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]


SCHEMA = CohortSchema()
