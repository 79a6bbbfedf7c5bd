"""Permutation importance on the holdout, computed on the node: aggregate only.

A group of columns is shuffled across holdout records, all columns of the group by the
same row permutation, and the model is scored again; the drop from the unshuffled score
is the group's importance. Only the mean and spread of that drop per group leave this
module, never a record.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from client.holdout import macro_f1
from contract.schema import ID_COLUMN, LABEL_COLUMN
from models.columns import ColumnGroups

_NOT_FEATURES: tuple[str, ...] = (ID_COLUMN, LABEL_COLUMN)


@dataclass(frozen=True)
class Importance:
    """Drop in the holdout score when one group of columns is permuted.

    Attributes
    ----------
    mean : float
        Baseline score minus permuted score, averaged over repeats.
    sd : float
        Standard deviation of that drop over repeats (population, ``ddof=0``).
    """

    mean: float
    sd: float


def permutation_importance(predict: Callable[[pd.DataFrame], np.ndarray], frame: pd.DataFrame,
                           y_true: np.ndarray, n_classes: int, groups: Mapping[str, Sequence[str]],
                           seed: int, repeats: int = 5, batch: int = 64) -> dict[str, Importance]:
    """Importance of each group of columns: how much macro-F1 drops when it is permuted.

    Each repeat draws one row permutation per group and applies it to all the group's
    columns at once, so values that belong to one record stay together within the group
    while the group as a whole is cut loose from the rest of the record and the label.
    The permuted copies of up to ``batch`` groups are stacked and predicted in one call.

    Parameters
    ----------
    predict : callable
        Takes a frame shaped like ``frame`` (any number of rows) and returns the model's
        class indices for its rows, shape (n_rows,).
    frame : pandas.DataFrame
        The raw holdout, shape (n_records, n_columns); it is not modified.
    y_true : numpy.ndarray
        The holdout's class indices, shape (n_records,).
    groups : mapping of str to sequence of str
        Group name -> the columns permuted together, e.g. from ``single_feature_groups``
        or ``column_groups``. Must not hold the label column.
    seed : int
        Seeds the permutations; the same seed gives the same result.
    repeats : int, default 5
        Permutations per group.

    Returns
    -------
    dict of str to Importance
        Per group, in the order of ``groups``.

    Raises
    ------
    ValueError
        If ``repeats`` is below 1, a group is empty, names a column that ``frame`` lacks,
        or holds the label column.
    """
    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    _check_groups(groups, frame.columns)
    rng = np.random.default_rng(seed)
    baseline = float(macro_f1(y_true, predict(frame.copy()), n_classes)[0])
    names = list(groups)
    drops: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(repeats):
        for start in range(0, len(names), batch):
            chunk = names[start:start + batch]
            stacked = _stacked_permutations(frame, [groups[name] for name in chunk], rng)
            scores = macro_f1(np.tile(y_true, len(chunk)), predict(stacked), n_classes, len(chunk))
            for name, score in zip(chunk, scores, strict=True):
                drops[name].append(baseline - float(score))
    return {name: Importance(mean=float(np.mean(d)), sd=float(np.std(d))) for name, d in drops.items()}


def single_feature_groups(columns: Sequence[str], *,
                          exclude: Collection[str] = _NOT_FEATURES) -> dict[str, list[str]]:
    """One group per column, named by the column: ``"gene_12" -> ["gene_12"]``.

    Parameters
    ----------
    columns : sequence of str
        Column names, e.g. ``frame.columns``.
    exclude : collection of str, default the id and label columns
        Columns that are not features and get no group.

    Returns
    -------
    dict of str to list of str
        In the order of ``columns``.
    """
    return {column: [column] for column in columns if column not in exclude}


def column_groups(columns: Sequence[str], gene_sets: Mapping[str, Sequence[str]] | None = None, *,
                  groups: ColumnGroups | None = None,
                  exclude: Collection[str] = _NOT_FEATURES) -> dict[str, list[str]]:
    """Coarse groups: the data dictionary's groups, each other column, each gene set.

    Parameters
    ----------
    columns : sequence of str
        Column names, e.g. ``frame.columns``.
    gene_sets : mapping of str to sequence of str, optional
        Gene set name -> its gene columns; each becomes a group ``"set:<name>"``.
    groups : ColumnGroups, optional
        The numeric columns' groups (the cohort's data dictionary); by default the demo's,
        by column prefix (``gene``, ``clinical``, ``signature``).
    exclude : collection of str, default the id and label columns
        Columns that are not features and belong to no group.

    Returns
    -------
    dict of str to list of str
        Each group of ``groups`` with a column among ``columns``; then one group per other
        column, named by the column (the categorical ones); then the gene sets.

    Raises
    ------
    ValueError
        If a gene set is empty or names a column that is not a gene column of ``columns``.
    """
    features = [column for column in columns if column not in exclude]
    groups = groups or ColumnGroups.by_prefix(features)
    found: dict[str, list[str]] = {}
    for column in features:
        found.setdefault(groups.group(column) or column, []).append(column)
    genes = set(found.get(groups.genes, [])) if groups.genes else set()
    for name, members in (gene_sets or {}).items():
        if not members:
            raise ValueError(f"gene set '{name}' is empty: give it at least one gene column")
        unknown = [column for column in members if column not in genes]
        if unknown:
            raise ValueError(f"gene set '{name}' names '{unknown[0]}', which is not a gene column "
                             f"of the frame ({groups.genes or 'the cohort has no genes group'})")
        found[f"set:{name}"] = list(members)
    return found


def importance_table(importances: Mapping[str, Importance]) -> pd.DataFrame:
    """Importances as a table, most important first.

    Parameters
    ----------
    importances : mapping of str to Importance
        From ``permutation_importance``.

    Returns
    -------
    pandas.DataFrame
        Columns ``feature``, ``mean``, ``sd``; one row per group, sorted by ``mean``
        descending (ties keep their order).
    """
    table = pd.DataFrame({"feature": pd.Series(list(importances), dtype=object),
                          "mean": pd.Series([i.mean for i in importances.values()], dtype=float),
                          "sd": pd.Series([i.sd for i in importances.values()], dtype=float)})
    return table.sort_values("mean", ascending=False, kind="stable").reset_index(drop=True)


def importance_figure(table: pd.DataFrame, top: int = 20) -> Figure:
    """Horizontal bar chart of the most important groups, with one-sd error bars.

    Parameters
    ----------
    table : pandas.DataFrame
        From ``importance_table``: columns ``feature``, ``mean``, ``sd``.
    top : int, default 20
        Bars shown: the ``top`` largest means, the largest at the top.

    Returns
    -------
    matplotlib.figure.Figure
        Not attached to pyplot; save it with ``figure.savefig``.

    Raises
    ------
    ValueError
        If ``top`` is below 1 or ``table`` lacks one of the columns.
    """
    if top < 1:
        raise ValueError("top must be at least 1")
    missing = [column for column in ("feature", "mean", "sd") if column not in table.columns]
    if missing:
        raise ValueError(f"table lacks column '{missing[0]}': build it with importance_table")
    shown = table.sort_values("mean", ascending=False, kind="stable").head(top).iloc[::-1]
    figure = Figure(figsize=(6.0, 1.0 + 0.3 * max(len(shown), 1)), layout="constrained")
    axes = figure.subplots()
    axes.barh(shown["feature"].astype(str), shown["mean"], xerr=shown["sd"], capsize=2)
    axes.axvline(0.0, color="black", linewidth=0.8)
    axes.set_xlabel("drop in holdout score when permuted")
    axes.set_title("Permutation importance")
    return figure


def _check_groups(groups: Mapping[str, Sequence[str]], present: Collection[str]) -> None:
    """Raise ValueError if a group is empty, names a column the frame lacks, or holds the label."""
    present = set(present)
    for name, columns in groups.items():
        if not columns:
            raise ValueError(f"group '{name}' is empty: give it at least one column")
        if LABEL_COLUMN in columns:
            raise ValueError(f"group '{name}' holds the label column '{LABEL_COLUMN}': "
                             "permute features only")
        missing = [column for column in columns if column not in present]
        if missing:
            raise ValueError(f"group '{name}' names column '{missing[0]}', which the frame lacks")


def _stacked_permutations(frame: pd.DataFrame, groups: list[Sequence[str]], rng: np.random.Generator
                          ) -> pd.DataFrame:
    """One copy of ``frame`` per group, stacked; in copy ``b`` the columns of group ``b`` are
    shuffled across rows by one shared permutation. Column dtypes are kept."""
    n = len(frame)
    original = {column: frame[column].to_numpy() for column in frame.columns}
    stacked = {column: np.tile(values, len(groups)) for column, values in original.items()}
    for block, columns in enumerate(groups):
        order = rng.permutation(n)
        for column in columns:
            stacked[column][block * n:(block + 1) * n] = original[column][order]
    return pd.DataFrame(stacked).astype(frame.dtypes.to_dict())
