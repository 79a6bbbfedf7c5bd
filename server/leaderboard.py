"""The leaderboard: one row per finished submission, read back from MLflow."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from client.record import TAG_PAIRED
from server.errors import LeaderboardError
from server.workspace import TAG_BATCH, TAG_CONTRIBUTOR


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
    fast_recall: float
    fast_recall_ci95: tuple[float, float]
    compute_pf: float
    budget_used_pf: float
    budget_pf: float
    submissions_used: float
    submissions_limit: float
    exported_bytes: float
    run_id: str
    paired: dict[str, tuple[float, float, float]]
    top_group: str

    def versus(self, other: Row) -> tuple[float, float, float] | None:
        """The node's paired bootstrap of this run's macro-F1 minus ``other``'s on the same
        holdout records: (difference, low, high), or None if the node made none."""
        if other.run_id in self.paired:
            return self.paired[other.run_id]
        if self.run_id in other.paired:
            difference, low, high = other.paired[self.run_id]
            return -difference, -high, -low
        return None

    @property
    def gain(self) -> float:
        """Fine-tuned minus out-of-the-box macro-F1."""
        return self.fine_tuned - self.out_of_the_box


def read_leaderboard(tracking_uri: str, experiment: str, batch: str | None = None) -> list[Row]:
    """Finished submissions of ``experiment``, best fine-tuned macro-F1 first.

    Raises
    ------
    LeaderboardError
        The store has no such experiment, or the batch id is malformed.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise LeaderboardError(f"no experiment '{experiment}' in {tracking_uri}")
    query = "attributes.status = 'FINISHED'"
    if batch and not re.fullmatch(r"[\w.-]+", batch):
        raise LeaderboardError("a batch id holds only letters, digits, '.', '_' and '-'")
    if batch:
        query += f" and tags.`{TAG_BATCH}` = '{batch}'"
    runs, token = [], None
    while True:  # every page: a leaderboard that silently stops at N rows would mislead
        page = client.search_runs([found.experiment_id], filter_string=query,
                                  order_by=["metrics.holdout_macro_f1 DESC"], max_results=1000,
                                  page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            break
    return [
        Row(
            contributor=run.data.tags.get(TAG_CONTRIBUTOR, "?"),
            strategy=run.data.params.get("strategy", "?"),
            model=run.data.params.get("model", "?"),
            out_of_the_box=run.data.metrics.get("holdout_oob_macro_f1", math.nan),
            out_of_the_box_ci95=_interval(run.data.metrics, "holdout_oob_macro_f1"),
            fine_tuned=run.data.metrics.get("holdout_macro_f1", math.nan),
            fine_tuned_ci95=_interval(run.data.metrics, "holdout_macro_f1"),
            fast_recall=run.data.metrics.get("holdout_recall_fast", math.nan),
            fast_recall_ci95=_interval(run.data.metrics, "holdout_recall_fast"),
            compute_pf=run.data.metrics.get("compute_pf", math.nan),
            budget_used_pf=run.data.metrics.get("budget_compute_used_pf", math.nan),
            budget_pf=run.data.metrics.get("budget_compute_pf", math.nan),
            submissions_used=run.data.metrics.get("budget_submissions_used", math.nan),
            submissions_limit=run.data.metrics.get("budget_submissions_limit", math.nan),
            exported_bytes=run.data.metrics.get("exported_bytes", math.nan),
            run_id=run.info.run_id,
            paired={key.removeprefix(TAG_PAIRED): tuple(map(float, value.split()))
                    for key, value in run.data.tags.items() if key.startswith(TAG_PAIRED)},
            top_group=_top_group(run.data.metrics),
        )
        for run in runs
    ]


def _interval(metrics: dict[str, float], name: str) -> tuple[float, float]:
    """The node's 95% bootstrap interval of a holdout metric."""
    return metrics.get(f"{name}_ci95_low", math.nan), metrics.get(f"{name}_ci95_high", math.nan)


def _with_interval(value: float, interval: tuple[float, float]) -> str:
    """``0.840 [0.77, 0.90]``."""
    return f"{value:.3f} [{interval[0]:.2f}, {interval[1]:.2f}]"


def _top_group(metrics: dict[str, float]) -> str:
    """The feature group whose permutation costs the most macro-F1 (``importance_<group>``)."""
    groups = {k.removeprefix("importance_"): v for k, v in metrics.items() if k.startswith("importance_")}
    return max(groups, key=groups.get) if groups else "-"


def _versus_next(rows: list[Row], i: int) -> str:
    """Row ``i`` against the row below it: the paired difference, and whether it is noise."""
    paired = rows[i].versus(rows[i + 1]) if i + 1 < len(rows) else None
    if paired is None:
        return "-"
    difference, low, high = paired
    return f"{difference:+.3f} [{low:+.2f}, {high:+.2f}]" + (" noise" if low <= 0 <= high else "")


def format_leaderboard(rows: list[Row]) -> str:
    """A fixed-width text table shaped like the pilot's."""
    header = ("contributor", "strategy", "model", "out of the box", "after fine-tuning",
              "gain", "Fast recall", "vs next (paired)", "top feature group",
              "compute (PF)", "budget used (PF)", "submits", "sent (kB)")
    lines = [(r.contributor, r.strategy, r.model, _with_interval(r.out_of_the_box, r.out_of_the_box_ci95),
              _with_interval(r.fine_tuned, r.fine_tuned_ci95), f"{r.gain:+.3f}",
              _with_interval(r.fast_recall, r.fast_recall_ci95), _versus_next(rows, i), r.top_group,
              f"{r.compute_pf:.3g}", f"{r.budget_used_pf:.3g} / {r.budget_pf:g}",
              f"{r.submissions_used:.0f}/{r.submissions_limit:.0f}",
              f"{r.exported_bytes / 1000:.1f}") for i, r in enumerate(rows)]
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" if i < 3 else f"{{:>{w}}}" for i, w in enumerate(widths))
    rule = "-" * (sum(widths) + 2 * (len(widths) - 1))
    body = [fmt.format(*row) for row in lines] or ["(no finished submissions)"]
    note = ("[low, high]: 95% bootstrap intervals over the holdout's records, computed on the node. "
            "vs next: the node's paired bootstrap\nof the macro-F1 difference with the row below on "
            "the same records; 'noise' when its interval holds 0. top feature group: largest "
            "permutation importance.")
    return "\n".join([fmt.format(*header), rule, *body, "", note])
