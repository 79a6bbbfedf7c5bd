"""Scoring a model on the holdout: aggregate metrics only."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import confusion_matrix, f1_score, recall_score


@dataclass(frozen=True)
class HoldoutScores:
    """Aggregate holdout metrics of one model.

    Attributes
    ----------
    macro_f1 : float
        Unweighted mean of the per-class F1 scores.
    accuracy : float
        Share of records predicted right.
    recall, f1 : dict of str to float
        Per-class recall and F1, keyed by class name.
    confusion : numpy.ndarray
        Counts, shape (n_classes, n_classes): rows true class, columns predicted.
    n_records : int
        Holdout records scored.
    """

    macro_f1: float
    accuracy: float
    recall: dict[str, float]
    f1: dict[str, float]
    confusion: np.ndarray
    n_records: int

    def as_metrics(self, prefix: str) -> dict[str, float]:
        """Flat metric names, e.g. ``holdout_macro_f1``, ``holdout_recall_fast``."""
        metrics = {f"{prefix}_macro_f1": self.macro_f1, f"{prefix}_accuracy": self.accuracy}
        for name in self.recall:
            metrics[f"{prefix}_recall_{name.lower()}"] = self.recall[name]
            metrics[f"{prefix}_f1_{name.lower()}"] = self.f1[name]
        return metrics


def score_predictions(y_true: np.ndarray, y_pred: np.ndarray,
                      classes: tuple[str, ...]) -> HoldoutScores:
    """Compute the holdout metrics from true and predicted class indices.

    Parameters
    ----------
    y_true, y_pred : numpy.ndarray
        Class indices, shape (n_records,).
    classes : tuple of str
        Class names, in index order.
    """
    labels = list(range(len(classes)))
    recall = recall_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    f1 = f1_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    return HoldoutScores(
        macro_f1=float(np.mean(f1)),
        accuracy=float(np.mean(y_true == y_pred)),
        recall={c: float(r) for c, r in zip(classes, recall, strict=False)},
        f1={c: float(v) for c, v in zip(classes, f1, strict=False)},
        confusion=confusion_matrix(y_true, y_pred, labels=labels),
        n_records=len(y_true),
    )
