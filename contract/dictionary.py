"""The foundation's data dictionary: the cohort's columns as the foundation declares them.

A YAML file the foundation owns (``conf/dictionary/``)::

    id: patient_id
    label: {column: progression, classes: [Slow, Medium, Fast], ordinal: true, reported: Fast}
    groups:                      # numeric columns, by name list or shell-style pattern
      gene: {columns: "gene_*", role: genes, unit: log2 TPM, description: ...}
      clinical: {columns: [age, ck, nfl], units: {ck: U/L}}
    categorical: {sex: [female, male]}
    may_be_missing: [nfl]        # names or patterns

It holds names, units, descriptions, categorical levels and classes, never a value of a record.
``draft`` writes a first version from a cohort file for the foundation to review; ``resolve``
turns it into the ``CohortSchema`` the node validates a file against (``client/cohort.py``), with
every pattern expanded against that file's columns. A group's ``role`` says which columns gene
sets and pathway models draw on (``genes``) and which are signature scores (``signatures``); a
group named ``gene``/``genes`` or ``signature``/``signatures`` has that role unless it says
otherwise. Feature specs name groups by the dictionary's names (``raw: [gene, clinical]``).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from contract.schema import CohortSchema
from models.columns import ColumnGroups

#: Fewer distinct values than this makes a non-numeric column categorical when drafting.
MAX_LEVELS = 20


class DictionaryError(ValueError):
    """The dictionary is malformed, or does not fit the cohort's columns (names every problem)."""


@dataclass(frozen=True)
class Group:
    """Numeric columns that belong together (genes, clinical variables, signature scores)."""

    name: str
    columns: tuple[str, ...]  # names or fnmatch patterns, in order
    unit: str = ""
    description: str = ""
    units: dict[str, str] = field(default_factory=dict)  # per column, where they differ
    role: str = ""  # "genes", "signatures" or none

#: The roles a group may play (``models.columns.ColumnGroups``), and the names that imply one.
ROLES = ("genes", "signatures")
_ROLE_BY_NAME = {"gene": "genes", "genes": "genes", "signature": "signatures", "signatures": "signatures"}


@dataclass(frozen=True)
class DataDictionary:
    id_column: str
    label_column: str
    classes: tuple[str, ...]
    ordinal: bool
    groups: tuple[Group, ...]
    categorical: dict[str, tuple[str, ...]]
    may_be_missing: tuple[str, ...] = ()
    reported_class: str = ""  # whose recall the board shows beside macro-F1; default: the last

    @classmethod
    def from_yaml(cls, path: str | Path) -> DataDictionary:
        """Read and check a dictionary file.

        Raises
        ------
        DictionaryError
            Naming every key that is missing or of the wrong kind.
        """
        import yaml

        try:
            raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as ex:
            raise DictionaryError(f"{path}: cannot be read as YAML ({type(ex).__name__})") from None
        return cls.from_mapping(raw, str(path))

    @classmethod
    def from_mapping(cls, raw: object, where: str = "the dictionary") -> DataDictionary:
        problems: list[str] = []
        if not isinstance(raw, dict):
            raise DictionaryError(f"{where}: a mapping with id, label, groups and categorical")
        label = raw.get("label") or {}
        if not isinstance(raw.get("id"), str):
            problems.append("id: the name of the column that identifies a record")
        if not isinstance(label, dict) or not isinstance(label.get("column"), str):
            problems.append("label.column: the name of the outcome column")
        classes = label.get("classes") if isinstance(label, dict) else None
        if not (isinstance(classes, list) and len(classes) >= 2
                and len(set(map(str, classes))) == len(classes)):
            problems.append("label.classes: two or more distinct class names, in order")
        elif label.get("reported") is not None and str(label["reported"]) not in map(str, classes):
            problems.append("label.reported: one of label.classes")
        groups = raw.get("groups") or {}
        if not isinstance(groups, dict) or not groups:
            problems.append("groups: at least one group of numeric columns")
            groups = {}
        parsed = []
        for name, spec in groups.items():
            columns = spec.get("columns") if isinstance(spec, dict) else None
            columns = [columns] if isinstance(columns, str) else columns
            if not (isinstance(columns, list) and columns and all(isinstance(c, str) for c in columns)):
                problems.append(f"groups.{name}.columns: a list of column names or patterns")
                continue
            role = str(spec.get("role") or _ROLE_BY_NAME.get(str(name), ""))
            if role not in ("", *ROLES):
                problems.append(f"groups.{name}.role: one of {list(ROLES)}")
            parsed.append(Group(str(name), tuple(columns), str(spec.get("unit", "")),
                                str(spec.get("description", "")),
                                {str(k): str(v) for k, v in (spec.get("units") or {}).items()}, role))
        for role in ROLES:
            having = [g.name for g in parsed if g.role == role]
            if len(having) > 1:
                problems.append(f"groups: only one group may have role '{role}' ({', '.join(having)})")
        categorical = raw.get("categorical") or {}
        if not isinstance(categorical, dict) or not all(
                isinstance(v, list) and v for v in categorical.values()):
            problems.append("categorical: each column with the list of its levels")
            categorical = {}
        missing = raw.get("may_be_missing") or []
        if not isinstance(missing, list):
            problems.append("may_be_missing: a list of column names or patterns")
            missing = []
        if problems:
            raise DictionaryError(f"{where}: " + "; ".join(problems))
        return cls(raw["id"], label["column"], tuple(map(str, classes)), bool(label.get("ordinal", False)),
                   tuple(parsed), {str(k): tuple(map(str, v)) for k, v in categorical.items()},
                   tuple(map(str, missing)), str(label.get("reported") or classes[-1]))

    def to_yaml(self) -> str:
        """The dictionary as the YAML ``from_yaml`` reads."""
        import yaml

        groups = {}
        for group in self.groups:
            spec: dict[str, object] = {"columns": group.columns[0] if len(group.columns) == 1 and
                                       _is_pattern(group.columns[0]) else list(group.columns)}
            if group.unit:
                spec["unit"] = group.unit
            if group.description:
                spec["description"] = group.description
            if group.units:
                spec["units"] = dict(group.units)
            if group.role and group.role != _ROLE_BY_NAME.get(group.name):
                spec["role"] = group.role
            groups[group.name] = spec
        return yaml.safe_dump({
            "id": self.id_column,
            "label": {"column": self.label_column, "classes": list(self.classes), "ordinal": self.ordinal,
                      "reported": self.reported_class or self.classes[-1]},
            "groups": groups,
            "categorical": {k: list(v) for k, v in self.categorical.items()},
            "may_be_missing": list(self.may_be_missing),
        }, sort_keys=False, allow_unicode=True)

    def resolve(self, columns: list[str] | tuple[str, ...]) -> CohortSchema:
        """The schema this dictionary gives a file with ``columns``: each group's patterns expanded
        in the file's column order, a name given outright kept where it stands.

        Raises
        ------
        DictionaryError
            A name or pattern matches no column, or one column falls in two places.
        """
        owner = self.groups_of(columns)
        role = {g.role: g.name for g in self.groups if g.role}
        features = (*owner, *self.categorical)
        never = [c for c in (self.id_column, self.label_column)
                 if any(fnmatch.fnmatchcase(c, p) for p in self.may_be_missing)]
        if never:
            raise DictionaryError(f"may_be_missing: '{never[0]}' is the id or the label, which every "
                                  "record must have")
        unmatched = [p for p in self.may_be_missing if not any(fnmatch.fnmatchcase(c, p) for c in features)]
        if unmatched:
            raise DictionaryError(f"may_be_missing: '{unmatched[0]}' matches no feature column of the file")
        return CohortSchema(numeric=tuple(owner), categorical=dict(self.categorical),
                            id_column=self.id_column, label_column=self.label_column,
                            classes=self.classes, reported_class=self.reported_class or self.classes[-1],
                            groups=ColumnGroups(owner, role.get("genes"), role.get("signatures")),
                            may_be_missing=tuple(self.missing_allowed(features)))

    def groups_of(self, columns: list[str] | tuple[str, ...]) -> dict[str, str]:
        """Each numeric column of ``columns`` and its group, in the dictionary's order.

        Raises
        ------
        DictionaryError
            As ``resolve``.
        """
        problems, owner = [], {}
        for group in self.groups:
            for entry in group.columns:
                found = ([c for c in columns if fnmatch.fnmatchcase(c, entry)] if _is_pattern(entry)
                         else [entry] if entry in columns else [])
                if not found:
                    problems.append(f"group '{group.name}': '{entry}' matches no column of the file")
                for column in found:
                    if column in owner:
                        problems.append(f"column '{column}' is in both '{owner[column]}' and '{group.name}'")
                    owner[column] = group.name
        for column in (*self.categorical, self.id_column, self.label_column):
            if column in owner:
                problems.append(f"column '{column}' is in group '{owner[column]}' and declared again")
        if problems:
            raise DictionaryError("; ".join(problems))
        return owner

    def missing_allowed(self, columns: list[str] | tuple[str, ...]) -> list[str]:
        """The columns of ``columns`` the foundation declared may be missing."""
        return [c for c in columns if any(fnmatch.fnmatchcase(c, p) for p in self.may_be_missing)]


def _is_pattern(text: str) -> bool:
    return any(ch in text for ch in "*?[")


#: Ensembl gene ids (``ENSG00000141510``, a version suffix allowed): a column so named is a gene.
_ENSEMBL = re.compile(r"ENS[A-Z]*G\d{11}(\.\d+)?")


def draft(table: pd.DataFrame, label: str | None = None, id_column: str | None = None,
          gene_symbols: Collection[str] = ()) -> DataDictionary:
    """A first dictionary for ``table`` for the foundation to review: the id and label columns
    (given, or guessed by name and content), numeric columns that are genes (named in
    ``gene_symbols``, such as the panel's symbol list, or Ensembl gene ids) in the group ``gene``,
    other numeric columns grouped by their name's prefix (``lab_12`` and ``lab_7`` go to ``lab``),
    non-numeric columns with few values as
    categorical with their levels, and which columns hold missing cells. It holds no value of a
    record but categorical levels and class names.

    Raises
    ------
    DictionaryError
        The id or label column cannot be found.
    """
    columns = [str(c) for c in table.columns]
    id_column = id_column or _guess(columns, r"(^|_)(id|patient|subject|record)(_|$)", table, unique=True)
    label = label or _guess([c for c in columns if c != id_column],
                            r"(^|_)(label|outcome|class|progression|target|y)(_|$)", table, unique=False)
    problems = [f"no {what} column: name it with --{flag}" for what, flag, value in
                (("id", "id", id_column), ("label", "label", label)) if value is None]
    for name in (id_column, label):
        if name is not None and name not in columns:
            problems.append(f"'{name}' is not a column of the file")
    if problems:
        raise DictionaryError("; ".join(problems))
    groups: dict[str, list[str]] = {}
    categorical: dict[str, tuple[str, ...]] = {}
    symbols = set(gene_symbols)
    for column in columns:
        if column in (id_column, label):
            continue
        values = table[column]
        if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            prefix = re.sub(r"[_.-]?\d+$", "", column) or column
            if column in symbols or _ENSEMBL.fullmatch(column):
                prefix = "gene"
            groups.setdefault(prefix if prefix != column else "other", []).append(column)
        elif values.nunique(dropna=True) <= MAX_LEVELS:
            categorical[column] = tuple(sorted(map(str, values.dropna().unique())))
    singletons = [g for g, cols in groups.items() if len(cols) == 1 and g != "other"]
    for name in singletons:  # a group of one is just a column of its own: keep them together
        groups.setdefault("other", []).extend(groups.pop(name))
    classes = tuple(sorted(map(str, table[label].dropna().unique())))
    return DataDictionary(
        id_column=id_column, label_column=label, classes=classes, ordinal=False,
        reported_class=classes[-1],
        groups=tuple(Group(name, _compact(cols, name), role=_ROLE_BY_NAME.get(name, ""))
                     for name, cols in groups.items()),
        categorical=categorical,
        may_be_missing=tuple(c for c in columns if c not in (id_column, label) and table[c].isna().any()))


def _compact(columns: list[str], prefix: str) -> tuple[str, ...]:
    """``gene_*`` when every column is the prefix and a number (``ENSG*`` for Ensembl ids), else the
    names."""
    if columns and all(_ENSEMBL.fullmatch(c) for c in columns):
        return ("ENS*G*",)
    if prefix != "other" and all(re.fullmatch(rf"{re.escape(prefix)}[_.-]?\d+", c) for c in columns):
        separator = re.match(rf"{re.escape(prefix)}([_.-]?)\d", columns[0]).group(1)
        return (f"{prefix}{separator}*",)
    return tuple(columns)


def _guess(columns: list[str], pattern: str, table: pd.DataFrame, unique: bool) -> str | None:
    for column in columns:
        if re.search(pattern, column.lower()):
            values = table[column]
            if unique and values.is_unique:
                return column
            if not unique and 2 <= values.nunique(dropna=True) <= MAX_LEVELS:
                return column
    return None


def describe(schema: CohortSchema, dictionary: DataDictionary | None = None,
             split: tuple[int, int] | None = None) -> list[str]:
    """``cohortfl schema``: what contributors may know of the cohort, as text: its columns, groups,
    levels and classes, which columns may be missing and the split's sizes; never a value of a
    record. Units and descriptions come from ``dictionary`` when given."""
    def listed(names, limit: int = 6) -> str:
        names = list(names)
        shown = ", ".join(names[:limit])
        return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")

    about = {g.name: g for g in (dictionary.groups if dictionary else ())}
    order = " < " if dictionary is None or dictionary.ordinal else ", "
    lines = [f"cohort schema {schema.fingerprint}: what contributors may know (no value of a record)"]
    if split:
        lines.append(f"records: {sum(split)} ({split[0]} training, {split[1]} holdout, "
                     "scored on the node only)")
    lines += [f"id column: {schema.id_column}",
              f"label: {schema.label_column}, classes {order.join(schema.classes)}; the board reports "
              f"{schema.reported_class} recall",
              "numeric groups (feature specs name them, e.g. raw: [...], transforms):"]
    roles = {schema.groups.genes: "genes: gene sets and pathway models draw on it",
             schema.groups.signatures: "signatures: interaction_left=signatures"}
    for name in schema.groups.names:
        group = about.get(name)
        notes = [n for n in (roles.get(name), group and group.unit, group and group.description) if n]
        lines.append(f"  {name}: {listed(schema.groups.columns(name))}"
                     + (f" [{'; '.join(notes)}]" if notes else ""))
    ungrouped = [c for c in schema.numeric if schema.groups.group(c) is None]
    if ungrouped:
        lines.append(f"  (no group): {listed(ungrouped)}")
    lines.append("categorical: " + ("; ".join(f"{c} [{', '.join(v)}]" for c, v in schema.categorical.items())
                                    or "none"))
    lines.append("may be missing (feature specs: impute, missing_indicators): "
                 + (listed(schema.may_be_missing) or "none"))
    return lines
