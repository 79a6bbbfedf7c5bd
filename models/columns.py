"""Which group each numeric column of a cohort belongs to, and which groups play a role.

The groups come from the foundation's data dictionary (``contract/dictionary.py``): any names it
chooses (``gene``, ``clinical``, ``labs``...). Two roles matter to feature pipelines and models:
the group whose columns are genes (gene sets, gene-set scores and pathway models draw on it) and
the group of signature scores (the default left side of interaction terms).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

#: The demo cohort's groups by column prefix (``gene_3`` is in ``gene``), and its two roles.
PREFIX_GROUPS = ("gene", "clinical", "signature")


@dataclass(frozen=True)
class ColumnGroups:
    """Numeric column -> group name, in column order, with the groups that have a role.

    Attributes
    ----------
    of : mapping of str to str
        Each grouped numeric column and its group; a numeric column absent here is in no group.
    genes : str or None
        The group gene sets draw their members from; None when the cohort has no genes.
    signatures : str or None
        The group of signature scores; None when the cohort has none.
    """

    of: Mapping[str, str] = field(default_factory=dict)
    genes: str | None = None
    signatures: str | None = None

    @classmethod
    def by_prefix(cls, numeric: Sequence[str]) -> ColumnGroups:
        """The demo's convention: ``gene_*``, ``clinical_*`` and ``signature_*`` by prefix."""
        of = {}
        for column in numeric:
            prefix = column.split("_", 1)[0]
            if prefix in PREFIX_GROUPS and column != prefix:
                of[column] = prefix
        present = set(of.values())
        return cls(of, "gene" if "gene" in present else None,
                   "signature" if "signature" in present else None)

    @property
    def names(self) -> tuple[str, ...]:
        """The group names, in the order their first column appears."""
        return tuple(dict.fromkeys(self.of.values()))

    def group(self, column: str) -> str | None:
        """The group of ``column``, or None."""
        return self.of.get(column)

    def columns(self, group: str | None) -> list[str]:
        """The columns of ``group`` in column order (none for None)."""
        return [c for c, g in self.of.items() if group is not None and g == group]

    def gene_columns(self) -> list[str]:
        """The columns of the genes group."""
        return self.columns(self.genes)

    def to_mapping(self) -> dict:
        """The JSON form: ``{"of": {...}, "genes": ..., "signatures": ...}``."""
        return {"of": dict(self.of), "genes": self.genes, "signatures": self.signatures}
