"""Bootstrap intervals of holdout scores, on tiny cases with known answers."""

import numpy as np

from client.holdout import bootstrap_intervals, score_predictions

CLASSES = ("Slow", "Medium", "Fast")


def test_perfect_and_useless_predictions_have_degenerate_intervals():
    y = np.repeat([0, 1, 2], 40)
    assert bootstrap_intervals(y, y, 3, seed=0)["macro_f1"] == (1.0, 1.0)
    assert bootstrap_intervals(y, (y + 1) % 3, 3, seed=0)["macro_f1"] == (0.0, 0.0)


def test_the_interval_holds_the_score_and_narrows_with_more_records():
    rng = np.random.default_rng(0)

    def width(n):
        y = rng.integers(0, 3, n)
        y_pred = np.where(rng.random(n) < 0.7, y, rng.integers(0, 3, n))
        low, high = bootstrap_intervals(y, y_pred, 3, seed=1)["macro_f1"]
        score = score_predictions(y, y_pred, CLASSES).macro_f1
        assert low <= score <= high
        return high - low

    small, large = width(128), width(4096)
    assert 0.08 < small < 0.25 and large < small / 4


def test_recall_intervals_match_sklearn_on_every_resample():
    """The vectorised confusion counts agree with a direct count on one resample."""
    rng = np.random.default_rng(3)
    y, y_pred = rng.integers(0, 3, 50), rng.integers(0, 3, 50)
    low, high = bootstrap_intervals(y, y_pred, 3, seed=2, resamples=1)["recall_2"]
    picks = np.random.default_rng(2).integers(0, 50, size=(1, 50))[0]
    expected = score_predictions(y[picks], y_pred[picks], CLASSES).recall["Fast"]
    assert low == high == expected


def test_scores_carry_intervals_under_class_names():
    y = np.repeat([0, 1, 2], 10)
    scores = score_predictions(y, y, CLASSES, bootstrap_intervals(y, y, 3, seed=0))
    metrics = scores.as_metrics("holdout")
    assert metrics["holdout_macro_f1_ci95_low"] == 1.0 and "holdout_recall_fast_ci95_high" in metrics
