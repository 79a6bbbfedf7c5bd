"""The leaderboard: one row per finished submission, read back from MLflow."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from server.errors import LeaderboardError
from server.workspace import TAG_BATCH, TAG_CONTRIBUTOR


@dataclass(frozen=True)
class Row:
    """One submission's line on the leaderboard (scores as the node recorded them)."""

    contributor: str
    strategy: str
    model: str
    out_of_the_box: float
    fine_tuned: float
    fine_tuned_ci95: tuple[float, float]
    fast_recall: float
    compute_pf: float
    budget_used_pf: float
    budget_pf: float
    submissions_used: float
    submissions_limit: float
    exported_bytes: float
    run_id: str

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
            fine_tuned=run.data.metrics.get("holdout_macro_f1", math.nan),
            fine_tuned_ci95=(run.data.metrics.get("holdout_macro_f1_ci95_low", math.nan),
                             run.data.metrics.get("holdout_macro_f1_ci95_high", math.nan)),
            fast_recall=run.data.metrics.get("holdout_recall_fast", math.nan),
            compute_pf=run.data.metrics.get("compute_pf", math.nan),
            budget_used_pf=run.data.metrics.get("budget_compute_used_pf", math.nan),
            budget_pf=run.data.metrics.get("budget_compute_pf", math.nan),
            submissions_used=run.data.metrics.get("budget_submissions_used", math.nan),
            submissions_limit=run.data.metrics.get("budget_submissions_limit", math.nan),
            exported_bytes=run.data.metrics.get("exported_bytes", math.nan),
            run_id=run.info.run_id,
        )
        for run in runs
    ]


def format_leaderboard(rows: list[Row]) -> str:
    """A fixed-width text table shaped like the pilot's."""
    header = ("contributor", "strategy", "model", "out of the box", "after fine-tuning (95% CI)",
              "gain", "Fast recall", "compute (PF)", "budget used (PF)", "submits", "sent (kB)")
    lines = [(r.contributor, r.strategy, r.model, f"{r.out_of_the_box:.3f}",
              f"{r.fine_tuned:.3f} [{r.fine_tuned_ci95[0]:.2f}, {r.fine_tuned_ci95[1]:.2f}]",
              f"{r.gain:+.3f}", f"{r.fast_recall:.3f}",
              f"{r.compute_pf:.3g}", f"{r.budget_used_pf:.3g} / {r.budget_pf:g}",
              f"{r.submissions_used:.0f}/{r.submissions_limit:.0f}",
              f"{r.exported_bytes / 1000:.1f}") for r in rows]
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" if i < 3 else f"{{:>{w}}}" for i, w in enumerate(widths))
    rule = "-" * (sum(widths) + 2 * (len(widths) - 1))
    body = [fmt.format(*row) for row in lines] or ["(no finished submissions)"]
    note = ("95% CI: bootstrap over the holdout's records, computed on the node; "
            "scores whose intervals overlap are not shown to differ.")
    return "\n".join([fmt.format(*header), rule, *body, "", note])
