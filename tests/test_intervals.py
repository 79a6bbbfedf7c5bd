"""Bootstrap intervals of holdout scores, on tiny cases with known answers."""

import numpy as np
import pytest

from client.holdout import bootstrap_intervals, macro_f1, paired_bootstrap, score_predictions
from contract.names import Moment

CLASSES = ("Slow", "Medium", "Fast")


def test_perfect_and_useless_predictions_have_degenerate_intervals():
    y = np.repeat([0, 1, 2], 40)
    assert bootstrap_intervals(y, y, CLASSES, seed=0)["macro_f1", None] == (1.0, 1.0)
    assert bootstrap_intervals(y, (y + 1) % 3, CLASSES, seed=0)["macro_f1", None] == (0.0, 0.0)


def test_the_interval_holds_the_score_and_narrows_with_more_records():
    rng = np.random.default_rng(0)

    def width(n):
        y = rng.integers(0, 3, n)
        y_pred = np.where(rng.random(n) < 0.7, y, rng.integers(0, 3, n))
        low, high = bootstrap_intervals(y, y_pred, CLASSES, seed=1)["macro_f1", None]
        score = score_predictions(y, y_pred, CLASSES).macro_f1
        assert low <= score <= high
        return high - low

    small, large = width(128), width(4096)
    assert 0.08 < small < 0.25 and large < small / 4


def test_recall_intervals_match_sklearn_on_every_resample():
    """The vectorised confusion counts agree with a direct count on one resample."""
    rng = np.random.default_rng(3)
    y, y_pred = rng.integers(0, 3, 50), rng.integers(0, 3, 50)
    low, high = bootstrap_intervals(y, y_pred, CLASSES, seed=2, resamples=1)["recall", "Fast"]
    picks = np.random.default_rng(2).integers(0, 50, size=(1, 50))[0]
    expected = score_predictions(y[picks], y_pred[picks], CLASSES).recall["Fast"]
    assert low == high == expected


def test_scores_carry_intervals_under_class_names():
    y = np.repeat([0, 1, 2], 10)
    scores = score_predictions(y, y, CLASSES, bootstrap_intervals(y, y, CLASSES, seed=0))
    metrics = scores.as_metrics(Moment.FINE_TUNED)
    assert metrics["holdout_fine_tuned_macro_f1_ci95_low"] == 1.0
    assert "holdout_fine_tuned_recall_fast_ci95_high" in metrics


def _noisy(y: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    """Predictions equal to y except a random class on about ``share`` of records."""
    return np.where(rng.random(len(y)) < share, rng.integers(0, 3, len(y)), y)


def test_identical_predictions_differ_by_exactly_nothing():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 128)
    y_pred = _noisy(y, 0.4, rng)
    paired = paired_bootstrap(y, y_pred, y_pred.copy(), 3, seed=0)
    assert (paired.difference, paired.low, paired.high) == (0.0, 0.0, 0.0)
    assert paired.within_noise


def test_a_perfect_model_beats_a_half_noisy_one_beyond_noise():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 128)
    y_noisy = _noisy(y, 0.5, rng)
    paired = paired_bootstrap(y, y, y_noisy, 3, seed=0)
    expected = 1.0 - score_predictions(y, y_noisy, CLASSES).macro_f1
    assert paired.difference == pytest.approx(expected)
    assert 0 < paired.low <= paired.difference <= paired.high and not paired.within_noise


def test_swapping_the_models_negates_the_difference_and_its_interval():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 128)
    a, b = _noisy(y, 0.3, rng), _noisy(y, 0.4, rng)
    ab, ba = paired_bootstrap(y, a, b, 3, seed=5), paired_bootstrap(y, b, a, 3, seed=5)
    assert ba.difference == -ab.difference
    assert (ba.low, ba.high) == pytest.approx((-ab.high, -ab.low))
    assert ab.within_noise == ba.within_noise


def test_pairing_narrows_the_interval_when_the_models_mostly_agree():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 128)
    a = _noisy(y, 0.4, rng)
    b = a.copy()
    changed = rng.choice(128, 6, replace=False)
    b[changed] = (b[changed] + 1) % 3
    paired = paired_bootstrap(y, a, b, 3, seed=0)
    low_a, high_a = bootstrap_intervals(y, a, CLASSES, seed=0)["macro_f1", None]
    low_b, high_b = bootstrap_intervals(y, b, CLASSES, seed=1)["macro_f1", None]
    unpaired_width = (high_a - low_b) - (low_a - high_b)  # widest difference the two intervals allow
    assert paired.high - paired.low < unpaired_width / 3
    assert paired.high - paired.low < 0.6 * min(high_a - low_a, high_b - low_b)


def test_paired_resamples_score_both_models_on_the_same_records():
    """With one resample, the difference equals sklearn's on the drawn records."""
    rng = np.random.default_rng(4)
    y, a, b = rng.integers(0, 3, 50), rng.integers(0, 3, 50), rng.integers(0, 3, 50)
    paired = paired_bootstrap(y, a, b, 3, seed=2, resamples=1)
    picks = np.random.default_rng(2).integers(0, 50, size=(1, 50))[0]
    expected = (score_predictions(y[picks], a[picks], CLASSES).macro_f1
                - score_predictions(y[picks], b[picks], CLASSES).macro_f1)
    assert paired.low == pytest.approx(expected) and paired.high == pytest.approx(expected)


def test_predictions_of_another_length_are_refused():
    y = np.zeros(10, dtype=int)
    with pytest.raises(ValueError, match="one class index per holdout record"):
        paired_bootstrap(y, y, y[:9], 3, seed=0)


def test_fast_macro_f1_equals_sklearns():
    rng = np.random.default_rng(3)
    for n in (5, 128, 1000):
        y, y_pred = rng.integers(0, 3, n), rng.integers(0, 3, n)
        assert np.isclose(macro_f1(y, y_pred, 3)[0], score_predictions(y, y_pred, CLASSES).macro_f1)
    assert macro_f1(np.array([0, 0]), np.array([0, 0]), 3)[0] == score_predictions(
        np.array([0, 0]), np.array([0, 0]), CLASSES).macro_f1
    y, y_pred = rng.integers(0, 3, 300), rng.integers(0, 3, 300)  # three blocks of 100 records
    blocks = [score_predictions(y[i:i + 100], y_pred[i:i + 100], CLASSES).macro_f1 for i in (0, 100, 200)]
    np.testing.assert_allclose(macro_f1(y, y_pred, 3, blocks=3), blocks)
