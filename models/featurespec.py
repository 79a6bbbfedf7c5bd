"""What a feature pipeline computes, as declarative data a contributor sends as JSON.

A spec names gene sets, how to score them, which raw column groups to keep and
which interaction terms to add. It never carries code.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from models.columns import ColumnGroups
from models.errors import FeatureSpecError
from models.genesets import gene_set_problem

SCORE_KINDS = ("mean", "pc1", "rank")
#: How a numeric cell the data dictionary lets be missing is filled: the training split's median or
#: mean of the column, or 0.
IMPUTE_KINDS = ("median", "mean", "zero")
INTERACTION_LEFTS = ("gene_sets", "signatures")
MAX_INTERACTIONS = 50
MAX_JSON_CHARS = 2_000_000
#: Per-column transforms, applied in the order given before standardisation, each fitted on the
#: node's training split: ``log1p`` (of the value floored at 0: for lognormal laboratory values),
#: ``rank`` (the training split's empirical distribution function, to [0, 1]), ``clip:Q``
#: (winsorise at the training split's Q and 1-Q quantiles, 0 < Q <= 0.25).
TRANSFORMS = ("log1p", "rank", "clip:Q")
MAX_TRANSFORM_KEYS = 200


@dataclass(frozen=True)
class FeatureSpec:
    """A feature pipeline, declared.

    Parameters
    ----------
    gene_sets : dict of str to tuple of str
        Set name -> gene column names; each set becomes one score column ``set:NAME``,
        in the order of the set names (kept sorted, as in the JSON form).
    gene_set_score : {"mean", "pc1", "rank"}
        How a set's genes become one score: the mean of its standardised genes, their
        first principal component, or each record's scaled mean rank of the set's genes.
    raw : tuple of str, or None
        The groups of raw numeric columns kept, standardised (group names of the cohort's data
        dictionary: ``gene``, ``clinical``, ``signature`` for the demo's); None keeps every group.
        Columns in no group are always kept.
    interactions : tuple of str
        Modifiers that multiply every left score: a numeric column (its standardised value, after
        its transforms) or a categorical column's level, ``COLUMN=LEVEL`` (1 for the records at that
        level, else 0: ``sex=male`` gives a set's effect in men apart).
    interaction_left : {"gene_sets", "signatures"}
        The left scores: the gene-set scores, or the standardised signature columns.
    transforms : dict of str to tuple of str
        A numeric column, a group (``clinical``) or a shell-style pattern (``clinical_1*``)
        -> transforms applied in order before standardisation (``TRANSFORMS``); a column may be
        named by one key only.
    impute : {"median", "mean", "zero"}
        How missing numeric cells (only in the columns the data dictionary lets be missing) are
        filled, before the transforms: with the training split's median or mean, or 0. A missing
        categorical cell encodes as all zeros.
    missing_indicators : bool
        Add a 0/1 column ``missing:COLUMN`` for each column that may be missing.

    Raises
    ------
    FeatureSpecError
        A wrong type, an unknown score kind, group or left side, or a gene set that
        breaks a limit (see ``models.genesets``).
    """

    gene_sets: dict[str, tuple[str, ...]] = field(default_factory=dict)
    gene_set_score: str = "mean"
    raw: tuple[str, ...] | None = None
    interactions: tuple[str, ...] = ()
    interaction_left: str = "signatures"
    transforms: dict[str, tuple[str, ...]] = field(default_factory=dict)
    impute: str = "median"
    missing_indicators: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.gene_sets, dict):
            raise FeatureSpecError("'gene_sets' must be an object of set name -> list of gene names")
        problem = gene_set_problem(self.gene_sets, None)
        if problem:
            raise FeatureSpecError(f"'gene_sets': {problem}")
        object.__setattr__(self, "gene_sets", {k: tuple(self.gene_sets[k]) for k in sorted(self.gene_sets)})
        if self.raw is not None:
            object.__setattr__(self, "raw", _names("raw", self.raw, None))
        object.__setattr__(self, "interactions", _names("interactions", self.interactions, None))
        _choice("gene_set_score", self.gene_set_score, SCORE_KINDS)
        _choice("interaction_left", self.interaction_left, INTERACTION_LEFTS)
        _choice("impute", self.impute, IMPUTE_KINDS)
        if not isinstance(self.missing_indicators, bool):
            raise FeatureSpecError("'missing_indicators' must be true or false")
        if len(self.interactions) > MAX_INTERACTIONS:
            raise FeatureSpecError(f"'interactions': at most {MAX_INTERACTIONS} columns")
        if self.interactions and self.interaction_left == "gene_sets" and not self.gene_sets:
            raise FeatureSpecError("'interactions' with interaction_left 'gene_sets' need gene sets")
        if not isinstance(self.transforms, dict) or len(self.transforms) > MAX_TRANSFORM_KEYS:
            raise FeatureSpecError(f"'transforms' must be an object of at most {MAX_TRANSFORM_KEYS} "
                                   "column, group or pattern -> list of transforms")
        object.__setattr__(self, "transforms", {
            str(k): _transforms(str(k), v) for k, v in sorted(self.transforms.items())})

    def validate(self, numeric: Sequence[str], groups: ColumnGroups | None = None,
                 categorical: Mapping[str, Sequence[str]] | None = None) -> None:
        """Check the spec against the numeric columns a pipeline will see.

        Parameters
        ----------
        numeric : sequence of str
            Numeric column names.
        groups : ColumnGroups, optional
            Their groups (the data dictionary's); by default the demo's, by column prefix.
        categorical : mapping of str to sequence of str, optional
            The categorical columns and their levels (``COLUMN=LEVEL`` interactions name them).

        Raises
        ------
        FeatureSpecError
            A raw group the cohort does not have, a gene set that names a column outside the genes
            group, an interaction that is neither a numeric column nor a categorical level, or no
            signatures to
            interact with.
        """
        groups = groups or ColumnGroups.by_prefix(numeric)
        if self.raw is not None:
            unknown = [g for g in self.raw if g not in groups.names]
            if unknown:
                raise FeatureSpecError(f"'raw': '{unknown[0][:40]}' is not a group of this cohort; "
                                       f"its groups: {list(groups.names)}")
        genes = set(groups.gene_columns())
        problem = gene_set_problem(self.gene_sets, genes)
        if problem:
            raise FeatureSpecError(f"'gene_sets': {problem}")
        known = set(numeric) | {f"{c}={level}" for c, levels in (categorical or {}).items()
                                 for level in levels}
        unknown = [c for c in self.interactions if c not in known]
        if unknown:
            raise FeatureSpecError(f"'interactions': {len(unknown)} name(s) are neither numeric columns nor "
                                   f"categorical levels (COLUMN=LEVEL), e.g. '{unknown[0][:40]}'")
        if (self.interactions and self.interaction_left == "signatures"
                and not groups.columns(groups.signatures)):
            raise FeatureSpecError("'interactions' with interaction_left 'signatures' need signature columns")
        self.transform_plan(numeric, groups)

    def transform_plan(self, numeric: Sequence[str],
                       groups: ColumnGroups | None = None) -> dict[str, tuple[str, ...]]:
        """Each numeric column that has transforms -> its transforms.

        Raises
        ------
        FeatureSpecError
            A key matches no numeric column, or a column is matched by two keys.
        """
        groups = groups or ColumnGroups.by_prefix(numeric)
        plan: dict[str, tuple[str, ...]] = {}
        for key, steps in self.transforms.items():
            matched = [c for c in numeric if c == key or groups.group(c) == key
                       or (any(ch in key for ch in "*?[") and fnmatch.fnmatchcase(c, key))]
            if not matched:
                raise FeatureSpecError(f"'transforms': '{key[:40]}' matches no numeric column")
            twice = [c for c in matched if c in plan]
            if twice:
                raise FeatureSpecError(f"'transforms': column '{twice[0][:40]}' is named by two keys")
            plan.update(dict.fromkeys(matched, steps))
        return plan

    def to_json(self) -> str:
        """Serialise as compact JSON with sorted keys."""
        data = asdict(self)
        data["gene_sets"] = {k: list(v) for k, v in self.gene_sets.items()}
        data["transforms"] = {k: list(v) for k, v in self.transforms.items()}
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> FeatureSpec:
        """Parse what ``to_json`` wrote; missing keys take their defaults.

        Raises
        ------
        FeatureSpecError
            Not JSON, not an object, an unknown key, or a value of the wrong type.
        """
        if not isinstance(text, str) or len(text) > MAX_JSON_CHARS:
            raise FeatureSpecError(f"a feature spec is a JSON string of at most {MAX_JSON_CHARS} characters")
        try:
            data: Any = json.loads(text)
        except ValueError:
            raise FeatureSpecError("a feature spec must be valid JSON") from None
        if not isinstance(data, dict):
            raise FeatureSpecError("a feature spec is a JSON object")
        allowed = [f.name for f in fields(cls)]
        unknown = sorted(k for k in data if k not in allowed)
        if unknown:
            raise FeatureSpecError(f"unknown key '{unknown[0][:40]}'; allowed: {allowed}")
        return cls(**data)


def _names(key: str, value: object, allowed: Sequence[str] | None) -> tuple[str, ...]:
    """Check a list of distinct strings (from ``allowed`` when given) and return it as a tuple."""
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise FeatureSpecError(f"'{key}' must be a list of strings")
    if not all(isinstance(v, str) for v in value):
        raise FeatureSpecError(f"'{key}' must be a list of strings")
    if len(set(value)) != len(value):
        raise FeatureSpecError(f"'{key}' names an entry twice")
    if allowed is not None and not set(value) <= set(allowed):
        raise FeatureSpecError(f"'{key}' entries must be among {list(allowed)}")
    return tuple(value)


def _transforms(key: str, value: object) -> tuple[str, ...]:
    """Check one key's list of transforms (``TRANSFORMS``) and return it as a tuple."""
    steps = _names(f"transforms.{key[:40]}", value, None)
    for step in steps:
        name, _, argument = step.partition(":")
        if step in ("log1p", "rank"):
            continue
        try:
            quantile = float(argument) if name == "clip" else None
        except ValueError:
            quantile = None
        if quantile is None or not 0 < quantile <= 0.25:
            raise FeatureSpecError(f"'transforms.{key[:40]}': '{step[:40]}' is not one of {list(TRANSFORMS)} "
                                   "(clip:Q with 0 < Q <= 0.25)")
    return steps


def _choice(key: str, value: object, allowed: Sequence[str]) -> None:
    """Check that a value is one of the allowed strings."""
    if not isinstance(value, str) or value not in allowed:
        raise FeatureSpecError(f"'{key}' must be one of {list(allowed)}")
