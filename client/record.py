"""The official record: what the node itself writes to the submission's MLflow run.

Holdout scores and compute are written here and nowhere else; they never travel
back through Flower. No cohort rows, no dataset logging.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterable, Sequence

import numpy as np

from client.errors import NodeError
from client.holdout import HoldoutScores
from client.importance import Importance, importance_figure, importance_table
from contract.names import (
    PAIRED_TAG_PREFIX,
    TRAIN_LOSS_SERIES,
    Artifact,
    Moment,
    UsageMetric,
    importance_metric,
)
from contract.values import PairedDifference


class OfficialRecord:
    """Writes the node's results to one MLflow run.

    Parameters
    ----------
    tracking_uri : str
        The foundation's MLflow store.
    run_id : str
        The submission's run, created by the workspace before the Flower run.
    """

    def __init__(self, tracking_uri: str, run_id: str) -> None:
        with warnings.catch_warnings():  # SQLAlchemy deprecation noise on first use
            warnings.simplefilter("ignore", DeprecationWarning)
            from mlflow.tracking import MlflowClient  # heavy import, only when scoring

            self._client = MlflowClient(tracking_uri)
            try:
                self._client.get_run(run_id)
            except Exception:  # MlflowException: not a run the workspace created
                raise NodeError("the run's submission-id names no run of the official record"
                                ) from None
        self.run_id = run_id

    def write_out_of_the_box(self, scores: HoldoutScores, usage: dict[str, float],
                             params: dict[str, str]) -> None:
        """Record the holdout score of the model as submitted, before any training,
        with the contributor's budget use from the node's ledger."""
        self._log({**scores.as_metrics(Moment.OUT_OF_THE_BOX), **usage}, params=params)

    def write_final(self, scores: HoldoutScores, rounds_trained: int, curve: Sequence[tuple[int, float]],
                    flops: int, device_seconds: float, classes: Sequence[str],
                    usage: dict[str, float]) -> None:
        """Record the fine-tuned holdout score, the training curve (``(round, loss)``; empty
        under DP-SGD), the compute used by this run and the contributor's budget use."""
        metrics = {**scores.as_metrics(Moment.FINE_TUNED), **usage,
                   UsageMetric.COMPUTE_FLOPS: float(flops), UsageMetric.COMPUTE_PF: flops / 1e15,
                   UsageMetric.COMPUTE_DEVICE_SECONDS: device_seconds,
                   UsageMetric.ROUNDS_TRAINED: float(rounds_trained)}
        self._log(metrics, series={TRAIN_LOSS_SERIES: list(curve)})
        self._client.log_figure(self.run_id, _confusion_figure(scores, classes), Artifact.CONFUSION)

    def write_importance(self, importances: dict[str, Importance], groups: Iterable[str]) -> None:
        """Record permutation importance on the holdout: a table and a figure of every feature
        and group, and one metric per group (``importance_<group>``)."""
        table = importance_table(importances)
        self._client.log_table(self.run_id, table, Artifact.IMPORTANCE_TABLE)
        self._client.log_figure(self.run_id, importance_figure(table), Artifact.IMPORTANCE_FIGURE)
        self._log({importance_metric(g): importances[g].mean for g in groups})

    def write_comparisons(self, comparisons: dict[str, PairedDifference]) -> None:
        """Record this run's paired comparisons with earlier runs on the same holdout, as tags
        ``cohortfl.paired.<run id>`` (macro-F1, this run minus the other)."""
        for other, paired in comparisons.items():
            self._client.set_tag(self.run_id, f"{PAIRED_TAG_PREFIX}{other}", paired.to_text())

    def _log(self, metrics: dict[str, float], params: dict[str, str] | None = None,
             series: dict[str, list[tuple[int, float]]] | None = None) -> None:
        """One batched write: scalar metrics, step-indexed series, params."""
        from mlflow.entities import Metric, Param

        now = int(time.time() * 1000)
        entries = [Metric(k, float(v), now, 0) for k, v in metrics.items()]
        for key, points in (series or {}).items():
            entries += [Metric(key, float(v), now, int(step)) for step, v in points]
        self._client.log_batch(
            self.run_id,
            metrics=entries,
            params=[Param(k, str(v)) for k, v in (params or {}).items()],
        )


def _confusion_figure(scores: HoldoutScores, classes: Sequence[str]):  # -> Figure
    """A labelled confusion-matrix heatmap of aggregate counts."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4, 3.6))
    ax = fig.add_subplot()
    ax.imshow(scores.confusion, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"holdout (n={scores.n_records}), macro-F1 {scores.macro_f1:.3f}")
    for (i, j), count in np.ndenumerate(scores.confusion):
        ax.text(j, i, str(count), ha="center", va="center")
    fig.tight_layout()
    return fig
