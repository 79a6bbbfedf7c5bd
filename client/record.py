"""The official record: what the node itself writes to the submission's MLflow run.

Holdout scores and compute are written here and nowhere else; they never travel
back through Flower. No cohort rows, no dataset logging.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from client.errors import NodeError
from client.holdout import HoldoutScores
from client.importance import Importance, importance_figure, importance_table
from client.ledger import NodeLedger
from contract.names import (
    PAIRED_TAG_PREFIX,
    REPORTED_CLASS,
    TOP_GROUP_METRIC,
    TRAIN_LOSS_SERIES,
    Artifact,
    Moment,
    Tag,
    UsageMetric,
)
from contract.values import PairedDifference

log = logging.getLogger("cohortfl.node")


class OfficialRecord:
    """Writes the node's results to one MLflow run.

    Each write is a JSON-able mapping, applied at once; when the store cannot take it,
    this write and every later one are kept in the node's ledger (``outbox``) in order,
    and ``deliver_queued`` applies them when the store is back: a store that is down at
    the final score loses no official result.

    Parameters
    ----------
    tracking_uri : str
        The foundation's MLflow store.
    run_id : str
        The submission's run, created by the workspace before the Flower run.
    outbox : NodeLedger, optional
        Where writes wait when the store is down; without one, a failed write raises.
    must_reach : bool
        Refuse (``NodeError``) when the store cannot be reached now; when False, the
        run's existence is taken as checked earlier and writes wait in the outbox.
    """

    def __init__(self, tracking_uri: str, run_id: str, outbox: NodeLedger | None = None,
                 must_reach: bool = True) -> None:
        with warnings.catch_warnings():  # SQLAlchemy deprecation noise on first use
            warnings.simplefilter("ignore", DeprecationWarning)
            from mlflow.tracking import MlflowClient  # heavy import, only when scoring

            self._client = MlflowClient(tracking_uri)
        self.tracking_uri, self.run_id, self.outbox = tracking_uri, run_id, outbox
        self.deferred = False
        try:
            self._client.get_run(run_id)
        except Exception as ex:  # MlflowException: no such run, or no store to ask
            if _is_missing(ex):
                raise NodeError("the run's submission-id names no run of the official record") from None
            if must_reach or outbox is None:
                raise NodeError("the official record's store cannot be reached; nothing was "
                                "scored, try again later") from None
            self._defer("the store cannot be reached")

    def write_out_of_the_box(self, scores: HoldoutScores, usage: dict[str, float],
                             params: dict[str, str], dataset: dict[str, object] | None = None,
                             reported_class: str = REPORTED_CLASS) -> None:
        """Record the holdout score of the model as submitted, before any training, with the
        contributor's budget use from the node's ledger, the class whose recall the board shows,
        and the cohort as a dataset: its digest, its columns and the split sizes, never a row
        (``dataset``: name, digest, columns, counts)."""
        self._submit({"metrics": {**scores.as_metrics(Moment.OUT_OF_THE_BOX), **usage},
                      "params": params, "tags": {Tag.REPORTED_CLASS: reported_class},
                      **({"dataset": dataset} if dataset else {})})

    def write_final(self, scores: HoldoutScores, rounds_trained: int, curve: Sequence[tuple[int, float]],
                    flops: int, device_seconds: float, classes: Sequence[str],
                    usage: dict[str, float]) -> None:
        """Record the fine-tuned holdout score, the training curve (``(round, loss)``; empty
        under DP-SGD), the compute used by this run and the contributor's budget use."""
        metrics = {**scores.as_metrics(Moment.FINE_TUNED), **usage,
                   UsageMetric.COMPUTE_FLOPS: float(flops), UsageMetric.COMPUTE_PF: flops / 1e15,
                   UsageMetric.COMPUTE_DEVICE_SECONDS: device_seconds,
                   UsageMetric.ROUNDS_TRAINED: float(rounds_trained)}
        self._submit({"metrics": metrics, "series": {TRAIN_LOSS_SERIES: [list(p) for p in curve]}})
        self._submit({"confusion": {"matrix": np.asarray(scores.confusion).tolist(),
                                    "classes": list(classes), "n": int(scores.n_records),
                                    "macro_f1": float(scores.macro_f1)}})

    def write_importance(self, importances: dict[str, Importance], groups: Iterable[str]) -> None:
        """Record permutation importance on the holdout: a table and a figure of every feature
        and group (artifacts), and which group matters most (a tag) and by how much (a metric)."""
        self._submit({"importance": importance_table(importances).to_dict(orient="list")})
        top = max(groups, key=lambda g: importances[g].mean, default=None)
        if top is not None:
            self._submit({"metrics": {TOP_GROUP_METRIC: importances[top].mean},
                          "tags": {Tag.TOP_GROUP: top}})

    def write_comparisons(self, comparisons: dict[str, PairedDifference]) -> None:
        """Record this run's paired comparisons with earlier runs on the same holdout, as tags
        ``cohortfl.paired.<run id>`` (macro-F1, this run minus the other)."""
        self._submit({"tags": {f"{PAIRED_TAG_PREFIX}{other}": paired.to_text()
                               for other, paired in comparisons.items()}})

    def write_complete(self) -> None:
        """The record's last write: whoever waits for the record (a workspace closing a run whose
        writes were queued) knows every earlier one has arrived."""
        self._submit({"tags": {Tag.RECORD_COMPLETE: "true"}})

    def _submit(self, write: dict) -> None:
        """Apply one write now, or keep it (and every later one, in order) in the outbox."""
        if not self.deferred:
            try:
                self.apply(write)
                return
            except Exception:
                if self.outbox is None:
                    raise
                self._defer("a write failed")
        self.outbox.queue_write(self.run_id, self.tracking_uri, write)

    def _defer(self, why: str) -> None:
        log.warning("official record of %s: %s; writes wait in the node's outbox", self.run_id, why)
        self.deferred = True

    def apply(self, write: dict) -> None:
        """Perform one write (as ``_submit`` builds them) on the store."""
        from mlflow.entities import Metric, Param

        now = int(time.time() * 1000)
        entries = [Metric(k, float(v), now, 0) for k, v in write.get("metrics", {}).items()]
        for key, points in write.get("series", {}).items():
            entries += [Metric(key, float(v), now, int(step)) for step, v in points]
        params = [Param(k, str(v)) for k, v in write.get("params", {}).items()]
        if entries or params:
            self._client.log_batch(self.run_id, metrics=entries, params=params)
        for key, value in write.get("tags", {}).items():
            self._client.set_tag(self.run_id, key, value)
        if "dataset" in write:
            from mlflow.entities import Dataset, DatasetInput, InputTag

            given = write["dataset"]
            schema = {"mlflow_colspec": [{"name": name, "type": kind} for name, kind in given["columns"]]}
            self._client.log_inputs(self.run_id, datasets=[DatasetInput(
                Dataset(name=given["name"], digest=given["digest"], source_type="cohortfl-node",
                        source=json.dumps({"held_by": "the foundation's node; no row leaves it"}),
                        schema=json.dumps(schema), profile=json.dumps(given["counts"])),
                tags=[InputTag("mlflow.data.context", "training and holdout, on the node")])])
        if "confusion" in write:
            self._client.log_figure(self.run_id, _confusion_figure(**write["confusion"]),
                                    Artifact.CONFUSION)
        if "importance" in write:
            table = pd.DataFrame(write["importance"])
            with warnings.catch_warnings():  # MLflow 3.17's own use of a pandas 3 deprecation
                warnings.simplefilter("ignore", DeprecationWarning)
                self._client.log_table(self.run_id, table, Artifact.IMPORTANCE_TABLE)
            self._client.log_figure(self.run_id, importance_figure(table), Artifact.IMPORTANCE_FIGURE)


def deliver_queued(ledger: NodeLedger) -> int:
    """Apply the outbox's writes in order until the first that still fails; how many went."""
    done = 0
    for seq, run_id, tracking_uri, write in ledger.queued_writes():
        try:
            OfficialRecord(tracking_uri, run_id).apply(write)
        except Exception:
            break
        ledger.delivered(seq)
        done += 1
    if done:
        log.info("delivered %d queued write(s) to the official record", done)
    return done


def _is_missing(ex: Exception) -> bool:
    """An MLflow answer that the run does not exist (the store answered)."""
    return getattr(ex, "error_code", "") == "RESOURCE_DOES_NOT_EXIST"


def _confusion_figure(matrix: list[list[int]], classes: Sequence[str], n: int,
                      macro_f1: float):  # -> Figure
    """A labelled confusion-matrix heatmap of aggregate counts."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4, 3.6))
    ax = fig.add_subplot()
    ax.imshow(np.asarray(matrix), cmap="Blues")
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"holdout (n={n}), macro-F1 {macro_f1:.3f}")
    for (i, j), count in np.ndenumerate(np.asarray(matrix)):
        ax.text(j, i, str(count), ha="center", va="center")
    fig.tight_layout()
    return fig
