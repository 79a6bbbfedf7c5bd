"""The cohort's exploratory analysis, computed on the node from the training split only.

Two versions of one report: the foundation's (every cell) and the published one contributors
read, in which every count under ``k`` records is shown as ``<k`` and every statistic of fewer
than ``k`` records is withheld. Where a table publishes a total (the class balance: the split's
size is public), a single suppressed cell could be recovered by subtraction, so the smallest other
cell of that row is suppressed too. No quantile, minimum or maximum is reported: each is one
record's value. Sections: class balance, categorical levels by class, numeric groups by class
(per-column means and standard deviations for small groups, the group's mean standardised value
for every group), the correlation structure of each group (variance of its first principal
components, mean absolute correlation), and missing cells by class. Figures
(``client/eda_figures.py``) are drawn from the tables' published text only.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from contract.names import Tag
from contract.schema import CohortSchema

#: Groups up to this many columns get per-column statistics; larger ones (a gene panel) only
#: group-level summaries.
PER_COLUMN_MAX = 40
#: Columns sampled from a large group for its mean absolute correlation.
CORRELATION_SAMPLE = 200
COMPONENTS = 5
#: Records (evenly spaced in the training split) the correlation structure is estimated from: a
#: group's whole matrix in float64 would be 16 GB at 100,000 x 20,000.
CORRELATION_RECORDS = 2_000


@dataclass(frozen=True)
class Table:
    """One table of the report: every cell already a string, suppression applied."""

    title: str
    columns: tuple[str, ...]
    rows: list[tuple[str, ...]]
    note: str = ""


@dataclass(frozen=True)
class Report:
    """The report: its tables, the ``k`` it was suppressed at (1: the foundation's, unsuppressed)."""

    k: int
    n_records: int
    tables: list[Table] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"k": self.k, "n_records": self.n_records,
                "tables": [{"title": t.title, "columns": list(t.columns), "rows": [list(r) for r in t.rows],
                            "note": t.note} for t in self.tables]}


def suppressed_counts(counts: list[int], k: int, total_published: bool) -> list[str]:
    """Counts as text, each under ``k`` as ``<k`` (1 shows every count); with a published total, a
    lone suppressed cell takes the smallest other one with it (else the total minus the rest would
    give it back)."""
    hidden = [c < k and k > 1 for c in counts]
    if total_published and sum(hidden) == 1 and len(counts) > 1:
        rest = [i for i, h in enumerate(hidden) if not h]
        hidden[min(rest, key=lambda i: counts[i])] = True
    return [f"<{k}" if h else str(c) for c, h in zip(counts, hidden, strict=True)]


def cohort_eda(frame: pd.DataFrame, labels: np.ndarray, schema: CohortSchema, k: int) -> Report:
    """The report of ``frame`` (the training split's feature columns) with class indices ``labels``,
    suppressed at ``k`` (1 for the foundation's own).

    Raises
    ------
    ValueError
        ``k`` under 1.
    """
    if k < 1:
        raise ValueError("k must be at least 1")
    classes = list(schema.classes)
    members = [labels == i for i in range(len(classes))]
    sizes = [int(m.sum()) for m in members]
    report = Report(k, len(frame))
    balance = suppressed_counts(sizes, k, True)
    # a class whose size is suppressed keeps it hidden everywhere: no share, and no level counts
    # (they would add up to it)
    hidden = [cell.startswith("<") for cell in balance]
    shares = ["-" if h else f"{n / len(frame):.2f}" for n, h in zip(sizes, hidden, strict=True)]
    report.tables.append(Table("Class balance (training split)", ("class", "records", "share"),
                               list(zip(classes, balance, shares, strict=True)),
                               "The holdout keeps the same proportions; it is scored on the node only."))
    rows = []
    for column, levels in schema.categorical.items():
        values = frame[column]
        names = [*levels, "(missing)"]
        counts = [[int(((values.isna() if name == "(missing)" else values == name) & m).sum())
                   for m in members] for name in names]
        if not any(counts[-1]):
            names, counts = names[:-1], counts[:-1]
        # within a class the levels add up to its published size: suppress down each class's column
        by_class = [["-"] * len(names) if hidden[j] else
                    suppressed_counts([row[j] for row in counts], k, True) for j in range(len(classes))]
        rows += [(column, name, *(by_class[j][i] for j in range(len(classes))))
                 for i, name in enumerate(names)]
    report.tables.append(Table("Categorical levels by class", ("column", "level", *classes), rows,
                               "'-': a class whose size is suppressed (its levels would add up to it)."))
    _numeric(report, frame, members, classes, sizes, schema, k)
    _correlations(report, frame, schema)
    missing = [c for c in schema.may_be_missing if c in frame.columns]
    rows = [(c, *suppressed_counts([int(frame.loc[m, c].isna().sum()) for m in members], k, False))
            for c in missing] or [("(no column may be missing)", *("" for _ in classes))]
    report.tables.append(Table("Missing cells by class", ("column", *classes), rows,
                               "Only the columns the data dictionary lets be missing; elsewhere a "
                               "missing cell is refused."))
    return report


def _numeric(report: Report, frame: pd.DataFrame, members: list[np.ndarray], classes: list[str],
             sizes: list[int], schema: CohortSchema, k: int) -> None:
    """Per group: the mean standardised value by class; per column of a small group: mean (sd)."""
    shown = [n >= k for n in sizes]
    group_rows, column_rows = [], []
    for group in schema.groups.names:
        columns = schema.groups.columns(group)
        score = _group_score(frame, columns)
        group_rows.append((group, str(len(columns)), *(
            f"{np.nanmean(score[m]):+.3f} ({np.nanstd(score[m]):.3f})" if ok else "-"
            for m, ok in zip(members, shown, strict=True))))
        if len(columns) <= PER_COLUMN_MAX:
            values = frame[columns].to_numpy(np.float64)
            for j, column in enumerate(columns):
                column_rows.append((group, column, *(
                    f"{np.nanmean(values[m, j]):.3g} ({np.nanstd(values[m, j]):.3g})" if ok else "-"
                    for m, ok in zip(members, shown, strict=True))))
    report.tables.append(Table("Numeric groups by class: mean (sd) of the group's mean standardised value",
                               ("group", "columns", *classes), group_rows,
                               f"'-': a class of fewer than {k} records."))
    report.tables.append(Table(f"Columns of groups of at most {PER_COLUMN_MAX}: mean (sd) by class",
                               ("group", "column", *classes), column_rows,
                               "Means and standard deviations only: a quantile is one record's value."))


def _group_score(frame: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """Each record's mean standardised value over ``columns`` (missing cells left out), computed
    a part of the columns at a time: a 20,000-gene group is never copied whole."""
    total, count = np.zeros(len(frame)), np.zeros(len(frame))
    part = max(1, 2**21 // max(len(frame), 1))
    for start in range(0, len(columns), part):
        values = frame[columns[start:start + part]].to_numpy(np.float64)
        sd = np.nanstd(values, axis=0)
        z = (values - np.nanmean(values, axis=0)) / np.where(sd > 0, sd, 1.0)
        total += np.nansum(z, axis=1)
        count += (~np.isnan(z)).sum(axis=1)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _correlations(report: Report, frame: pd.DataFrame, schema: CohortSchema) -> None:
    """Each group's variance in its first principal components and its mean |correlation|, over
    at most ``CORRELATION_RECORDS`` records (evenly spaced) of the training split."""
    from sklearn.utils.extmath import randomized_svd

    rows = []
    if len(frame) > CORRELATION_RECORDS:
        frame = frame.iloc[np.linspace(0, len(frame) - 1, CORRELATION_RECORDS).astype(int)]
    for group in schema.groups.names:
        columns = schema.groups.columns(group)
        if len(columns) < 3:
            continue
        values = frame[columns].to_numpy(np.float64)
        values = np.where(np.isnan(values), np.nanmean(values, axis=0), values)
        sd = values.std(axis=0)
        z = (values - values.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
        n_components = min(COMPONENTS, *z.shape)
        _, singular, _ = randomized_svd(z, n_components, random_state=0)
        explained = singular ** 2 / max((z ** 2).sum(), 1e-12)
        sample = (np.linspace(0, len(columns) - 1, CORRELATION_SAMPLE).astype(int)
                  if len(columns) > CORRELATION_SAMPLE else np.arange(len(columns)))
        corr = np.corrcoef(z[:, sample], rowvar=False)
        off = np.abs(corr[~np.eye(len(sample), dtype=bool)])
        rows.append((group, str(len(columns)), " ".join(f"{e:.2f}" for e in explained),
                     f"{np.nanmean(off):.3f}"))
    report.tables.append(Table("Correlation structure of each group", (
        "group", "columns", f"variance share of its first {COMPONENTS} components", "mean |correlation|"),
        rows, f"Over at most {CORRELATION_RECORDS} records and, for the mean |correlation|, "
        f"{CORRELATION_SAMPLE} columns (evenly spaced)."))


def to_html(report: Report, title: str) -> str:
    """A self-contained page (no script, no network); every text escaped."""
    parts = ["<!doctype html><html><head><meta charset='utf-8'>",
             f"<title>{html.escape(title)}</title><style>body{{font-family:system-ui,sans-serif;margin:2em}}"
             "table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;"
             "padding:3px 8px;text-align:right}td:first-child,th:first-child{text-align:left}"
             ".note{color:#555}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>",
             f"<p>{report.n_records} training records. "
             + (f"Counts under {report.k} records are shown as &lt;{report.k}; statistics of fewer "
                f"records are withheld." if report.k > 1 else "The foundation's own version: nothing "
                "suppressed; not for contributors.") + "</p>"]
    from client.eda_figures import figures

    drawn = figures(report)
    for table in report.tables:
        figure = f"<figure>{drawn[table.title]}</figure>" if table.title in drawn else ""
        parts.append(f"<h2>{html.escape(table.title)}</h2>{figure}<table><thead><tr>"
                     + "".join(f"<th>{html.escape(c)}</th>" for c in table.columns) + "</tr></thead><tbody>")
        parts += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in table.rows]
        parts.append("</tbody></table>")
        if table.note:
            parts.append(f"<p class='note'>{html.escape(table.note)}</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


#: Tags the one EDA run of an experiment (the board's rows never include it).
EDA_TAG = Tag.COHORT_EDA
EDA_RUN_NAME = "cohort-eda"
EDA_FILE, EDA_JSON = "cohort_eda.html", "cohort_eda.json"


def eda_of_file(path, dictionary, k: int, holdout_size: int = 128, split_seed: int = 0,
                holdout_fraction: float | None = None) -> Report:
    """The report of a cohort file's training split, as the node splits it.

    Raises
    ------
    CohortValidationError, DictionaryError
        As the node's loading and split.
    """
    from client.cohort import arrange, load_cohort, split_cohort

    cohort = load_cohort(path, dictionary)
    split = split_cohort(cohort, holdout_size, split_seed, holdout_fraction)
    cohort, n_train = arrange(cohort, split), len(split.train)  # the training split: a view, no copy
    return cohort_eda(cohort.frame.iloc[:n_train], cohort.labels[:n_train], cohort.schema, k)


def log_eda(client, experiment_id: str, report: Report, title: str) -> str:
    """Put the report in ``experiment_id`` as its one run tagged ``EDA_TAG`` (the previous one
    deleted), as ``cohort_eda.html``, ``cohort_eda.json`` and its figures (``figures/*.svg``);
    returns the run's id.
    ``client``: an MlflowClient."""
    for old in client.search_runs([experiment_id], f"tags.`{EDA_TAG}` = 'true'"):
        client.delete_run(old.info.run_id)
    run = client.create_run(experiment_id, run_name=EDA_RUN_NAME, tags={
        EDA_TAG: "true", "mlflow.note.content": f"The cohort's EDA (suppressed at k={report.k}): open "
                                                f"`{EDA_FILE}` under Artifacts."})
    client.log_text(run.info.run_id, to_html(report, title), EDA_FILE)
    client.log_dict(run.info.run_id, report.to_dict(), EDA_JSON)
    from client.eda_figures import figures, standalone

    for i, svg in enumerate(figures(report).values(), 1):
        client.log_text(run.info.run_id, standalone(svg), f"figures/figure_{i}.svg")
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id
