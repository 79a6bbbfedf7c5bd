"""Feature pipelines the node runs from a declarative spec, fitted on one frame only.

A ``FeaturePipeline`` turns a cohort frame into the model's input matrix: raw numeric
columns transformed as declared (log1p, rank, clip) and standardised, categoricals one-hot
against fixed levels, gene-set scores and interaction terms as its ``FeatureSpec`` declares.
Every statistic comes from the frame passed to ``fit`` (the node's training split);
``transform`` applies them to any frame.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from models.columns import ColumnGroups
from models.errors import FeatureSpecError
from models.featurespec import FeatureSpec
from models.genesets import first_component, rank_scores

__all__ = ["FeaturePipeline", "FeatureSpec", "FeatureSpecError"]

#: Values a part of the table holds while it is copied into the matrix (8 MB as float64).
PART_CELLS = 2**20


class FeaturePipeline:
    """Standardised raw columns, one-hot categoricals, gene-set scores and interactions.

    Parameters
    ----------
    spec : FeatureSpec
        What to compute.
    numeric : sequence of str
        Numeric column names, in the order the raw block keeps them.
    categorical : mapping of str to sequence of str
        Categorical column names and their fixed levels; a value outside the levels
        encodes as all zeros.
    groups : ColumnGroups, optional
        The numeric columns' groups (the data dictionary's); by default the demo's, by prefix.
    missing : sequence of str
        The columns whose cells may be missing (the data dictionary's); numeric ones are filled as
        the spec's ``impute`` says, and each gets an indicator column if the spec asks.

    Attributes
    ----------
    fill_ : dict of int to float
        Each numeric column that may be missing (by index) and the value its missing cells take,
        from the fit frame.
    transforms_ : list of (int, tuple of str, list)
        Each transformed column's index, its transforms and each one's statistics on the fit
        frame (kept on the node with the pipeline; never part of a reply).
    mean_, scale_ : numpy.ndarray, shape (len(numeric),)
        Every numeric column's mean and standard deviation (1 where 0) on the fit frame.
    components_ : dict of str to numpy.ndarray
        For ``pc1`` scores, each set's first principal component, shape (set_size,).
    score_mean_, score_scale_ : numpy.ndarray, shape (n_sets,)
        The gene-set scores' mean and standard deviation on the fit frame.
    """

    def __init__(self, spec: FeatureSpec, numeric: Sequence[str],
                 categorical: Mapping[str, Sequence[str]], groups: ColumnGroups | None = None,
                 missing: Sequence[str] = ()) -> None:
        self.spec = spec
        self.numeric = list(numeric)
        self.categorical = {k: list(v) for k, v in categorical.items()}
        self.groups = groups or ColumnGroups.by_prefix(self.numeric)
        self.missing = [c for c in (*self.numeric, *self.categorical) if c in set(missing)]

    @property
    def feature_names(self) -> list[str]:
        """Names of the columns ``transform`` returns, in order (known before ``fit``)."""
        self.spec.validate(self.numeric, self.groups, self.categorical)
        names = [self.numeric[i] for i in self._raw_index()]
        names += [f"{column}={level}" for column, levels in self.categorical.items() for level in levels]
        names += [f"set:{name}" for name in self.spec.gene_sets]
        names += [f"{left}*{right}" for left in self._left_names() for right in self.spec.interactions]
        names += [f"missing:{column}" for column in self.missing] if self.spec.missing_indicators else []
        return names

    @property
    def gene_features(self) -> list[str]:
        """The raw gene columns among ``feature_names`` (those a pathway model's sets may hold)."""
        genes = set(self.groups.gene_columns())
        return [name for name in self.feature_names if name in genes]

    @property
    def n_features(self) -> int:
        """Width of the matrix ``transform`` returns."""
        return len(self.feature_names)

    def fit(self, frame: pd.DataFrame) -> FeaturePipeline:
        """Learn every statistic from ``frame`` alone and return ``self``.

        Raises
        ------
        FeatureSpecError
            The spec does not fit the numeric columns.
        """
        self.spec.validate(self.numeric, self.groups, self.categorical)
        values = self._numeric_values(frame, np.empty((len(frame), len(self.numeric)), np.float32))
        self.fill_ = {}
        for i in self._column_index([c for c in self.missing if c not in self.categorical]):
            observed = values[:, i][~np.isnan(values[:, i])].astype(np.float64)
            fill = (0.0 if self.spec.impute == "zero" or not len(observed) else
                    float(np.median(observed) if self.spec.impute == "median" else observed.mean()))
            self.fill_[i] = fill
            values[np.isnan(values[:, i]), i] = fill
        self.transforms_ = []  # (column index, steps, each step's statistics), from this frame only
        for column, steps in self.spec.transform_plan(self.numeric, self.groups).items():
            i, fitted = self.numeric.index(column), []
            column_values = values[:, i].astype(np.float64)
            for step in steps:
                fitted.append(_fit_step(step, column_values))
                column_values = _apply_step(step, fitted[-1], column_values)
            values[:, i] = column_values
            self.transforms_.append((i, steps, fitted))
        self.mean_, self.scale_ = _moments(values)
        self.components_: dict[str, np.ndarray] = {}
        if self.spec.gene_set_score == "pc1":
            for name, index in zip(self.spec.gene_sets, self._set_index(), strict=True):
                self.components_[name] = first_component((values[:, index] - self.mean_[index])
                                                         / self.scale_[index])
        _, scores = self._standardise_and_score(values)
        self.score_mean_ = scores.mean(axis=0)
        self.score_scale_ = _nonzero(scores.std(axis=0))
        return self

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """Return the float32 feature matrix, shape (len(frame), n_features).

        Computed in float64 column groups' statistics but float32 values, in place in the matrix
        it returns: its memory is that matrix (and a copy of the numeric columns when the spec keeps
        only some of them raw)."""
        raw = self._raw_index()
        out = np.empty((len(frame), self.n_features), np.float32)
        every_raw = len(raw) == len(self.numeric)
        values = self._numeric_values(frame, out[:, :len(raw)] if every_raw else
                                      np.empty((len(frame), len(self.numeric)), np.float32))
        for i, fill in self.fill_.items():
            values[np.isnan(values[:, i]), i] = fill
        for i, steps, fitted in self.transforms_:
            column_values = values[:, i].astype(np.float64)
            for step, statistics in zip(steps, fitted, strict=True):
                column_values = _apply_step(step, statistics, column_values)
            values[:, i] = column_values
        standardised, scores = self._standardise_and_score(values)
        if not every_raw:
            out[:, :len(raw)] = standardised[:, raw]
        blocks = []
        for column, levels in self.categorical.items():
            codes = pd.Categorical(frame[column], categories=levels).codes
            blocks.append(np.vstack([np.eye(len(levels)), np.zeros(len(levels))])[codes])
        scores = (scores - self.score_mean_) / self.score_scale_
        blocks.append(scores)
        if self.spec.interactions:
            by_sets = self.spec.interaction_left == "gene_sets"
            left = scores if by_sets else standardised[:, self._signatures()]
            right = self._modifiers(frame, standardised)
            blocks.append((left[:, :, None] * right[:, None, :]).reshape(len(frame), -1))
        if self.spec.missing_indicators and self.missing:
            blocks.append(frame[self.missing].isna().to_numpy(np.float32))
        start = len(raw)
        for block in blocks:
            out[:, start:start + block.shape[1]] = block
            start += block.shape[1]
        return out

    def _numeric_values(self, frame: pd.DataFrame, out: np.ndarray) -> np.ndarray:
        """The numeric columns' values copied into ``out`` (float32), about ``PART_CELLS`` values at
        a time: no other copy of the table beside it."""
        part = _part_rows(len(frame))  # columns of len(frame) rows
        for start in range(0, len(self.numeric), part):
            out[:, start:start + part] = frame[self.numeric[start:start + part]].to_numpy(np.float32)
        return out

    def _modifiers(self, frame: pd.DataFrame, standardised: np.ndarray) -> np.ndarray:
        """The right sides of the interactions, shape (n_records, n_interactions): a numeric column's
        standardised values, or a categorical level's 0/1 indicator."""
        levels = {f"{c}={level}": (c, level) for c, levels in self.categorical.items() for level in levels}
        columns = []
        for name in self.spec.interactions:
            if name in levels:
                column, level = levels[name]
                columns.append((frame[column].to_numpy() == level).astype(np.float32))
            else:
                columns.append(standardised[:, self.numeric.index(name)])
        return np.column_stack(columns)

    def _standardise_and_score(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Standardise ``values`` (float32, filled and transformed) in place, and return them with
        the unstandardised gene-set scores, shape (n_records, n_sets): ranks are read before."""
        members = self._set_index()
        kind = self.spec.gene_set_score
        scores = None
        if kind == "rank":
            genes = self._column_index(self.groups.gene_columns())
            position = {column: i for i, column in enumerate(genes)}
            # a few rows at a time: ranking holds about 6 float64 copies of what it ranks
            index, rows = [np.array([position[i] for i in m]) for m in members], _part_rows(8 * len(genes))
            scores = np.vstack([rank_scores(values[start:start + rows, genes], index)
                                for start in range(0, max(len(values), 1), rows)])
        values -= self.mean_.astype(np.float32)
        values /= self.scale_.astype(np.float32)
        if kind == "pc1":
            names = list(self.spec.gene_sets)
            columns = [values[:, m] @ self.components_[n] for n, m in zip(names, members, strict=True)]
        elif kind == "mean":
            columns = [values[:, m].mean(axis=1) for m in members]
        if scores is None:
            scores = np.column_stack(columns) if columns else np.empty((len(values), 0))
        return values, scores.astype(np.float64)

    def _raw_index(self) -> list[int]:
        """Indices of the numeric columns the raw block keeps."""
        raw = self.spec.raw
        return [i for i, c in enumerate(self.numeric)
                if raw is None or self.groups.group(c) in (*raw, None)]

    def _signatures(self) -> list[int]:
        """Indices of the signature columns, the default left scores of interactions."""
        return self._column_index(self.groups.columns(self.groups.signatures))

    def _column_index(self, columns: Sequence[str]) -> list[int]:
        """Indices of named numeric columns."""
        position = {c: i for i, c in enumerate(self.numeric)}
        return [position[c] for c in columns]

    def _set_index(self) -> list[list[int]]:
        """For each gene set, the indices of its genes among the numeric columns."""
        return [self._column_index(genes) for genes in self.spec.gene_sets.values()]

    def _left_names(self) -> list[str]:
        """Names of the left scores of the interaction terms."""
        if not self.spec.interactions:
            return []
        if self.spec.interaction_left == "gene_sets":
            return list(self.spec.gene_sets)
        return [self.numeric[i] for i in self._signatures()]


def _fit_step(step: str, column: np.ndarray) -> np.ndarray | None:
    """The statistics one transform needs, from the fit frame's column: the sorted values for
    ``rank``, the two quantiles for ``clip:Q``, nothing for ``log1p``."""
    if step == "rank":
        return np.sort(column)
    if step.startswith("clip:"):
        quantile = float(step.partition(":")[2])
        return np.quantile(column, [quantile, 1 - quantile])
    return None


def _apply_step(step: str, statistics: np.ndarray | None, column: np.ndarray) -> np.ndarray:
    """One transform of one column (``FeatureSpec.transforms``)."""
    if step == "log1p":
        return np.log1p(np.maximum(column, 0.0))
    if step == "rank":  # the fit frame's empirical distribution function
        return np.searchsorted(statistics, column, side="right") / len(statistics)
    return np.clip(column, statistics[0], statistics[1])


def _moments(values: np.ndarray, cells: int = 2**23) -> tuple[np.ndarray, np.ndarray]:
    """Each column's mean and standard deviation (1 where 0), accumulated in float64 a block of
    columns (about ``cells`` values, 64 MB) at a time: no float64 copy of the whole matrix."""
    mean, sd = np.empty(values.shape[1]), np.empty(values.shape[1])
    chunk = max(1, cells // max(len(values), 1))
    for start in range(0, values.shape[1], chunk):
        block = values[:, start:start + chunk].astype(np.float64)
        mean[start:start + chunk] = block.mean(axis=0)
        sd[start:start + chunk] = block.std(axis=0)
    return mean, _nonzero(sd)


def _part_rows(width: int) -> int:
    """Rows of ``width`` values in a part of about ``PART_CELLS`` values."""
    return max(1, PART_CELLS // max(width, 1))


def _nonzero(scale: np.ndarray) -> np.ndarray:
    """Replace zero standard deviations by 1."""
    return np.where(scale > 0, scale, 1.0)
