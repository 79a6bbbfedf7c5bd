"""The leaderboard: one row per finished submission, read back from MLflow."""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass

from contract.names import (
    GAIN_METRIC,
    LEADERBOARD_METRIC,
    PAIRED_TAG_PREFIX,
    REPORTED_CLASS,
    Moment,
    Tag,
    UsageMetric,
    holdout_metric,
    interval_metrics,
)
from contract.values import PairedDifference
from server.errors import LeaderboardError


@dataclass(frozen=True)
class Row:
    """One submission's line on the leaderboard (scores as the node recorded them)."""

    contributor: str
    strategy: str
    model: str
    out_of_the_box: float
    out_of_the_box_ci95: tuple[float, float]
    fine_tuned: float
    fine_tuned_ci95: tuple[float, float]
    reported_recall: float
    reported_recall_ci95: tuple[float, float]
    compute_pf: float
    budget_used_pf: float
    budget_pf: float
    submissions_used: float
    submissions_limit: float
    exported_bytes: float
    epsilon: float
    privacy: str
    run_id: str
    paired: dict[str, PairedDifference]
    top_group: str
    reported_class: str = REPORTED_CLASS
    #: The node's number of the cohort file the scores are on ("-" in records made before versions).
    cohort_version: str = "-"
    #: The run this one scores again on a later cohort version (``cohortfl rescore``), if any.
    rescore_of: str = ""

    def versus(self, other: Row) -> PairedDifference | None:
        """The node's paired bootstrap of this run's macro-F1 minus ``other``'s on the same
        holdout records, or None if the node made none."""
        if other.run_id in self.paired:
            return self.paired[other.run_id]
        if self.run_id in other.paired:
            return other.paired[self.run_id].reversed()
        return None

    @property
    def gain(self) -> float:
        """Fine-tuned minus out-of-the-box macro-F1."""
        return self.fine_tuned - self.out_of_the_box


def read_leaderboard(tracking_uri: str, experiment: str, batch: str | None = None) -> list[Row]:
    """Finished submissions of ``experiment``, newest cohort version first, and on each version
    best fine-tuned macro-F1 first (scores on two versions are on two holdouts).

    Raises
    ------
    LeaderboardError
        The store has no such experiment, or the batch id is malformed.
    """
    runs = _search(tracking_uri, experiment, batch, "attributes.status = 'FINISHED'",
                   f"metrics.{LEADERBOARD_METRIC} DESC")
    rows = [_row(run) for run in runs]
    return sorted(rows, key=lambda r: -int(r.cohort_version) if r.cohort_version.isdigit() else 0)


@dataclass(frozen=True)
class Unfinished:
    """A submission that is not on the board, and why."""

    contributor: str
    strategy: str
    status: str  # RUNNING, FAILED or KILLED
    reason: str
    run_id: str


def read_unfinished(tracking_uri: str, experiment: str, batch: str | None = None) -> list[Unfinished]:
    """Submissions of ``experiment`` without the node's final score (running, failed, killed),
    newest first, with the reason the workspace recorded."""
    runs = _search(tracking_uri, experiment, batch, "attributes.status != 'FINISHED'",
                   "attributes.start_time DESC")
    return [Unfinished(run.data.tags.get(Tag.CONTRIBUTOR, "?"), run.data.params.get("strategy", "?"),
                       run.info.status, run.data.tags.get(Tag.ERROR, "still running"), run.info.run_id)
            for run in runs]


def _search(tracking_uri: str, experiment: str, batch: str | None, query: str, order: str) -> list:
    """Every submission's run of ``experiment`` (of one batch) that ``query`` matches (the board's
    picture and the cohort's EDA are not)."""
    from mlflow.tracking import MlflowClient

    from server.board_picture import PICTURE_TAG

    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise LeaderboardError(f"no experiment '{experiment}' in {tracking_uri}")
    if batch and not re.fullmatch(r"[\w.-]+", batch):
        raise LeaderboardError("a batch id holds only letters, digits, '.', '_' and '-'")
    if batch:
        query += f" and tags.`{Tag.BATCH}` = '{batch}'"
    return [run for run in every_run(client, [found.experiment_id], query, order)
            if PICTURE_TAG not in run.data.tags and Tag.COHORT_EDA not in run.data.tags]


def every_run(client, experiments: list[str], query: str = "", order: str | None = None) -> list:
    """Every run of ``experiments`` matching ``query``, every page of them: a board that silently
    stopped at N rows would mislead."""
    runs, token = [], None
    while experiments:
        page = client.search_runs(experiments, query, order_by=[order] if order else None,
                                  max_results=1000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            break
    return runs


def _row(run) -> Row:  # run: mlflow.entities.Run
    """One finished run's line, from the metrics and tags the node and workspace wrote."""
    metrics, tags = run.data.metrics, run.data.tags

    def value(name: str) -> float:
        return metrics.get(name, math.nan)

    def with_interval(name: str) -> tuple[float, tuple[float, float]]:
        low, high = interval_metrics(name)
        return value(name), (value(low), value(high))

    out_of_the_box = with_interval(holdout_metric(Moment.OUT_OF_THE_BOX, "macro_f1"))
    fine_tuned = with_interval(holdout_metric(Moment.FINE_TUNED, "macro_f1"))
    reported_class = tags.get(Tag.REPORTED_CLASS, REPORTED_CLASS)
    reported = with_interval(holdout_metric(Moment.FINE_TUNED, "recall", reported_class))
    return Row(
        reported_class=reported_class,
        contributor=tags.get(Tag.CONTRIBUTOR, "?"),
        strategy=run.data.params.get("strategy", "?"),
        model=run.data.params.get("model", "?"),
        out_of_the_box=out_of_the_box[0], out_of_the_box_ci95=out_of_the_box[1],
        fine_tuned=fine_tuned[0], fine_tuned_ci95=fine_tuned[1],
        reported_recall=reported[0], reported_recall_ci95=reported[1],
        compute_pf=value(UsageMetric.COMPUTE_PF),
        budget_used_pf=value(UsageMetric.BUDGET_COMPUTE_USED_PF),
        budget_pf=value(UsageMetric.BUDGET_COMPUTE_PF),
        submissions_used=value(UsageMetric.BUDGET_SUBMISSIONS_USED),
        submissions_limit=value(UsageMetric.BUDGET_SUBMISSIONS_LIMIT),
        exported_bytes=value(UsageMetric.EXPORTED_BYTES),
        epsilon=value(UsageMetric.PRIVACY_EPSILON),
        privacy=run.data.params.get("privacy", "?"),
        run_id=run.info.run_id,
        paired={key.removeprefix(PAIRED_TAG_PREFIX): PairedDifference.from_text(text)
                for key, text in tags.items() if key.startswith(PAIRED_TAG_PREFIX)},
        top_group=tags.get(Tag.TOP_GROUP, "-"),
        cohort_version=run.data.params.get("cohort_version", "-"),
        rescore_of=tags.get(Tag.RESCORE_OF, ""),
    )


def _with_interval(value: float, interval: tuple[float, float]) -> str:
    """``0.840 [0.77, 0.90]``."""
    return f"{value:.3f} [{interval[0]:.2f}, {interval[1]:.2f}]"


def _privacy(row: Row) -> str:
    """The contributor's epsilon spent, or a plain warning when the node trained without DP."""
    if row.privacy.startswith("DP-SGD") and not math.isnan(row.epsilon):
        return f"{row.epsilon:.2f}"
    return "DP OFF" if row.privacy.startswith("OFF") else "?"


def _version(row: Row) -> str:
    """``v2``, or ``v2*`` for a rescored run."""
    return "-" if row.cohort_version == "-" else f"v{row.cohort_version}{'*' if row.rescore_of else ''}"


def versus_next(rows: list[Row], i: int) -> str:
    """Row ``i`` against the row below it: the paired difference, and whether it is noise."""
    paired = rows[i].versus(rows[i + 1]) if i + 1 < len(rows) else None
    if paired is None:
        return "-"
    text = f"{paired.difference:+.3f} [{paired.low:+.2f}, {paired.high:+.2f}]"
    return text + (" noise" if paired.within_noise else "")


def recall_header(rows: list[Row]) -> str:
    """``Fast recall``: the reported class's recall, named as the cohort's dictionary names it."""
    classes = {row.reported_class for row in rows} or {REPORTED_CLASS}
    return f"{classes.pop()} recall" if len(classes) == 1 else "reported class recall"


#: The board's columns, most needed first: a narrow terminal drops them from the end of this list.
_PRIORITY = ("contributor", "after fine-tuning", "cohort", "gain", "vs next (paired)", "strategy",
             "out of the box", "reported recall", "model", "budget used (PF)", "privacy (epsilon)",
             "submits", "top feature group", "compute (PF)", "sent (kB)")
_NOTE = ("[low, high]: 95% bootstrap intervals over the holdout's records, computed on the node. vs next: "
         "the node's paired bootstrap of the macro-F1 difference with the row below on the same records; "
         "'noise' when its interval holds 0. top feature group: largest permutation importance. privacy: "
         "the contributor's epsilon spent under DP-SGD (delta in the run's params); DP OFF: the node "
         "trained without differential privacy.")
_COHORT_NOTE = (" cohort: the version of the cohort the scores are on (vN*: an earlier version's run, "
                "rescored on it).")


def format_leaderboard(rows: list[Row], width: int | None = None) -> str:
    """The board as a text table that fits ``width`` columns (default: the terminal's, or
    ``$COLUMNS``): the least needed columns are left out, and the note under it names them."""
    import io
    import shutil

    from rich import box
    from rich.console import Console
    from rich.table import Table

    width = width or shutil.get_terminal_size((160, 24)).columns
    recall = recall_header(rows)
    header = ("contributor", "strategy", "model", "cohort", "out of the box", "after fine-tuning",
              "gain", recall, "vs next (paired)", "top feature group",
              "compute (PF)", "budget used (PF)", "submits", "sent (kB)", "privacy (epsilon)")
    lines = [(r.contributor, r.strategy, r.model, _version(r),
              _with_interval(r.out_of_the_box, r.out_of_the_box_ci95),
              _with_interval(r.fine_tuned, r.fine_tuned_ci95), f"{r.gain:+.3f}",
              _with_interval(r.reported_recall, r.reported_recall_ci95), versus_next(rows, i), r.top_group,
              f"{r.compute_pf:.3g}", f"{r.budget_used_pf:.3g} / {r.budget_pf:g}",
              f"{r.submissions_used:.0f}/{r.submissions_limit:.0f}",
              f"{r.exported_bytes / 1000:.1f}", _privacy(r)) for i, r in enumerate(rows)]
    natural = {name: max(len(row[i]) for row in [header, *lines]) + 3 for i, name in enumerate(header)}
    # the cohort's version only where the board holds more than one (or a rescored run)
    unused = set() if len({r.cohort_version for r in rows}) > 1 or any(r.rescore_of for r in rows) \
        else {"cohort"}
    kept, used = set(), 0
    for name in (recall if name == "reported recall" else name for name in _PRIORITY):
        # each column whole, most needed first, while the width lasts
        if name not in unused and (used + natural[name] <= width or not kept):
            kept.add(name)
            used += natural[name]
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, expand=False)
    columns = [i for i, name in enumerate(header) if name in kept]
    for i in columns:
        table.add_column(header[i], justify="left" if i < 3 else "right", no_wrap=True)
    for row in lines:
        table.add_row(*(row[i] for i in columns))
    out = io.StringIO()
    console = Console(file=out, width=max(width, used), color_system=None, force_terminal=False,
                      highlight=False, emoji=False, markup=False)
    console.print(table if lines else "(no finished submissions)")
    console.print(_NOTE + ("" if unused else _COHORT_NOTE), width=min(width, 110), soft_wrap=False)
    hidden = [name for name in header if name not in kept | unused]
    if hidden:
        console.print(f"Left out at {width} columns: {', '.join(hidden)} (a wider terminal, or "
                      "--format csv, shows every column).", width=min(width, 110))
    return "\n".join(line.rstrip() for line in out.getvalue().splitlines())


def format_unfinished(rows: list[Unfinished], width: int = 160) -> str:
    """The submissions that are not on the board, one line each, with the reason."""
    if not rows:
        return ""
    lines = ["Not on the board (no final score from the node):"]
    for row in rows:
        head = f"  {row.contributor}  {row.strategy}  {row.status}  {row.run_id[:8]}: "
        lines.append(head + " ".join(row.reason.split())[:max(40, width - len(head))])
    return "\n".join(lines)


#: What an analyst reads first on the experiment's page (MLflow shows it as the description).
BOARD_DESCRIPTION = f"""**The cohortfl leaderboard.** One run per submission. Every score was computed and
written by the foundation's node on its holdout; no contributor and no workspace process saw a record.

- Sort by `{LEADERBOARD_METRIC}` (the fine-tuned macro-F1), in the *Model training* view.
- `{GAIN_METRIC}`: fine-tuned minus out-of-the-box macro-F1 (the submitted model before any training).
- `..._ci95_low` / `..._ci95_high`: 95% bootstrap intervals over the holdout's records. On a holdout of
  about 128 records, runs whose intervals overlap are not told apart by this board.
- `holdout_fine_tuned_recall_fast`: recall of the Fast class, the one the foundation cares most about.
- `compute_pf`, `budget_compute_used_pf` / `budget_compute_pf`: the node's compute, in PFLOP.
- Failed and killed runs carry their reason in the tag `cohortfl.error`.
"""


#: The MLflow UI's view of a board: the key numbers as columns, best fine-tuned macro-F1 first.
#: MLflow 3 keeps a shareable view as an experiment tag ``mlflow.sharedViewState.<key>`` (its
#: "Share" button writes the same); the board's link names the key.
_FINE_TUNED = holdout_metric(Moment.FINE_TUNED, "macro_f1")
_OUT_OF_THE_BOX = holdout_metric(Moment.OUT_OF_THE_BOX, "macro_f1")
BOARD_COLUMNS = (f"tags.`{Tag.CONTRIBUTOR}`", "params.`strategy`", "params.`model`",
                 *(f"metrics.`{name}`" for name in (
                     _FINE_TUNED, *interval_metrics(_FINE_TUNED), _OUT_OF_THE_BOX, GAIN_METRIC,
                     holdout_metric(Moment.FINE_TUNED, "recall", REPORTED_CLASS),
                     UsageMetric.BUDGET_COMPUTE_USED_PF, UsageMetric.BUDGET_COMPUTE_PF)))
BOARD_VIEW = json.dumps({
    "orderByKey": f"metrics.`{LEADERBOARD_METRIC}`", "orderByAsc": False, "runsHiddenMode": "SHOW_ALL",
    "selectedColumns": list(BOARD_COLUMNS), "columnOrder": list(BOARD_COLUMNS),
    "columnWidths": {column: 190 for column in BOARD_COLUMNS if column.startswith("metrics.")},
}, sort_keys=True)
BOARD_VIEW_KEY = "cohortfl-board-" + hashlib.sha256(BOARD_VIEW.encode()).hexdigest()[:12]
BOARD_VIEW_TAG = f"mlflow.sharedViewState.{BOARD_VIEW_KEY}"


def describe_experiment(client, experiment_id: str, text: str = BOARD_DESCRIPTION) -> None:
    """Set the experiment's description (MLflow's ``mlflow.note.content`` tag) and its board view."""
    client.set_experiment_tag(experiment_id, "mlflow.note.content", text)
    client.set_experiment_tag(experiment_id, BOARD_VIEW_TAG, BOARD_VIEW)


def board_link(ui_base: str, experiment_id: str) -> str:
    """The MLflow UI's training-runs view of the board: its key numbers as columns, best
    fine-tuned macro-F1 first (the view ``describe_experiment`` stored)."""
    return (f"{ui_base.rstrip('/')}/#/experiments/{experiment_id}/runs?viewStateShareKey={BOARD_VIEW_KEY}"
            "&workflowType=machine_learning")


def picture_link(ui_base: str, experiment_id: str, run_id: str) -> str:
    """The MLflow UI's view of the board's picture (``server/board_picture.py``)."""
    return f"{ui_base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}/artifacts"


def as_records(rows: list[Row]) -> list[dict[str, object]]:
    """The board as flat records (``--format csv|json``): one per run, intervals as two columns."""
    records = []
    for row in rows:
        record: dict[str, object] = {"contributor": row.contributor, "strategy": row.strategy,
                                     "model": row.model, "run_id": row.run_id,
                                     "cohort_version": row.cohort_version, "rescore_of": row.rescore_of}
        for name, (value, (low, high)) in (
                ("out_of_the_box_macro_f1", (row.out_of_the_box, row.out_of_the_box_ci95)),
                ("fine_tuned_macro_f1", (row.fine_tuned, row.fine_tuned_ci95)),
                (f"{row.reported_class.lower()}_recall", (row.reported_recall, row.reported_recall_ci95))):
            record.update({name: value, f"{name}_ci95_low": low, f"{name}_ci95_high": high})
        record.update({"gain_macro_f1": row.gain, "top_feature_group": row.top_group,
                       "compute_pf": row.compute_pf, "budget_used_pf": row.budget_used_pf,
                       "budget_pf": row.budget_pf, "submissions_used": row.submissions_used,
                       "submissions_limit": row.submissions_limit, "exported_bytes": row.exported_bytes,
                       "privacy": _privacy(row)})
        records.append({k: (None if isinstance(v, float) and math.isnan(v) else v)
                        for k, v in record.items()})
    return records


def read_budget(tracking_uri: str, experiment: str, contributor: str) -> dict[str, float] | None:
    """A contributor's budgets as the node recorded them on their latest run (submissions, compute,
    privacy: used and limit); None if they have no run in ``experiment``."""
    runs = _search(tracking_uri, experiment, None, f"tags.`{Tag.CONTRIBUTOR}` = '{_quoted(contributor)}'",
                   "attributes.start_time DESC")
    names = (UsageMetric.BUDGET_SUBMISSIONS_USED, UsageMetric.BUDGET_SUBMISSIONS_LIMIT,
             UsageMetric.BUDGET_COMPUTE_USED_PF, UsageMetric.BUDGET_COMPUTE_PF,
             UsageMetric.PRIVACY_EPSILON, UsageMetric.PRIVACY_EPSILON_BUDGET)
    for run in runs:  # the newest run the node has written its usage to
        if UsageMetric.BUDGET_SUBMISSIONS_USED in run.data.metrics:
            return {str(name): run.data.metrics.get(name, math.nan) for name in names}
    return None


def format_budget(contributor: str, budget: dict[str, float]) -> str:
    """What is used and what is left, one line per budget."""
    lines = [f"{contributor}'s budgets on the node (as of their latest run):"]
    for label, used, limit, unit in (
            ("submissions", UsageMetric.BUDGET_SUBMISSIONS_USED, UsageMetric.BUDGET_SUBMISSIONS_LIMIT, ""),
            ("compute", UsageMetric.BUDGET_COMPUTE_USED_PF, UsageMetric.BUDGET_COMPUTE_PF, " PF"),
            ("privacy (epsilon)", UsageMetric.PRIVACY_EPSILON, UsageMetric.PRIVACY_EPSILON_BUDGET, "")):
        spent, total = budget[str(used)], budget[str(limit)]
        if math.isnan(total):
            lines.append(f"  {label:18} not metered (differential privacy is off)" if "privacy" in label
                         else f"  {label:18} -")
            continue
        lines.append(f"  {label:18} {spent:.4g} of {total:g}{unit} used, {max(total - spent, 0):.4g} left")
    return "\n".join(lines)


def _quoted(text: str) -> str:
    if not re.fullmatch(r"[\w.-]+", text):
        raise LeaderboardError("a contributor name holds only letters, digits, '.', '_' and '-'")
    return text
