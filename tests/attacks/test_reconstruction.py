"""The attacker's reconstruction mathematics against one real torch SGD step, without privacy.

Synthetic standardised records (512 x 255: 250 numeric columns driven by 12
latent factors, like the cohort's pathways, plus 5 one-hot columns), 3 classes,
one full-batch step of ``torch.optim.SGD`` on the mean cross-entropy, exactly as
the node trains. Run ``python tests/attacks/test_reconstruction.py`` (or pytest
with ``-s``) to print the numbers.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from models.linear import LinearClassifier
from models.mlp import MLPClassifier
from tests.attacks.reconstruction import (
    best_correlations,
    imprint_labels,
    imprint_weights,
    null_exceedance,
    reconstruct_difference,
    reconstruct_imprint,
    recovered_records,
)

N_RECORDS, N_NUMERIC, N_LEVELS, N_CLASSES = 512, 250, 5, 3
N_FEATURES = N_NUMERIC + N_LEVELS
#: Imprint bins: 4 per record. A record is alone in its bin with probability about
#: exp(-(B - 1) / (units + 1)) = 0.78 when the projection is exactly N(0, 1).
N_UNITS = 4 * N_RECORDS
IMPRINT_LR = 0.05
EXACT = 0.99


def synthetic_records(seed: int, patients: int = 0, n: int = N_RECORDS) -> tuple[np.ndarray, np.ndarray]:
    """Standardised records with correlated columns, and random labels.

    Parameters
    ----------
    seed : int
        Seed of the latent structure (the population).
    patients : int
        Seed of the records drawn from it.
    n : int
        Number of records.

    Returns
    -------
    tuple of numpy.ndarray
        ``x`` float32 (n, 255) with column means 0 and sds 1; ``y`` int64 (n,).
    """
    rng = np.random.default_rng(seed)
    loadings = rng.standard_normal((12, N_NUMERIC)) * (rng.random((12, N_NUMERIC)) < 0.2)
    rng = np.random.default_rng([seed, patients])
    numeric = rng.standard_normal((n, 12)) @ loadings + rng.standard_normal((n, N_NUMERIC))
    x = np.hstack([numeric, np.eye(N_LEVELS)[rng.integers(0, N_LEVELS, n)]])
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    return x.astype(np.float32), rng.integers(0, N_CLASSES, n)


def sgd_step(model: nn.Module, weights: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray,
             lr: float) -> dict[str, np.ndarray]:
    """Load ``weights``, take one full-batch SGD step as the node does, return the new state dict."""
    model.load_state_dict({key: torch.from_numpy(np.asarray(value)) for key, value in weights.items()})
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y)).backward()
    optimizer.step()
    return {key: value.detach().numpy().copy() for key, value in model.state_dict().items()}


@pytest.fixture(scope="module")
def records() -> tuple[np.ndarray, np.ndarray]:
    """The node's training records."""
    return synthetic_records(seed=0)


@pytest.fixture(scope="module")
def imprint_round(records) -> tuple[dict, dict]:
    """The malicious weights sent and the weights returned after one round."""
    x, y = records
    before = imprint_weights(N_FEATURES, N_UNITS, N_CLASSES, seed=1)
    model = MLPClassifier(N_FEATURES, N_CLASSES, hidden=(N_UNITS,))
    return before, sgd_step(model, before, x, y, IMPRINT_LR)


def test_the_imprint_attack_recovers_most_records_exactly(records, imprint_round):
    x, y = records
    before, after = imprint_round
    candidates = reconstruct_imprint(before, after, IMPRINT_LR)
    exact = recovered_records(x, candidates, corr_bar=EXACT, share=1.1)
    lenient = recovered_records(x, candidates)
    print(f"\nimprint, {N_UNITS} units, {N_RECORDS} records: {len(candidates)} candidates, "
          f"{exact} recovered exactly (r > {EXACT}), {lenient} by the default bars")
    assert exact >= 0.7 * N_RECORDS
    assert lenient >= 0.8 * N_RECORDS


def test_the_imprint_attack_reads_the_labels_of_the_records_it_isolates(records, imprint_round):
    x, y = records
    before, after = imprint_round
    candidates = reconstruct_imprint(before, after, IMPRINT_LR)
    labels = imprint_labels(before, after, IMPRINT_LR, N_RECORDS)
    correlations = best_correlations(candidates, x)
    source = np.argmax(_correlation_matrix(candidates, x), axis=1)
    isolated = correlations > EXACT
    accuracy = float(np.mean(labels[isolated] == y[source[isolated]]))
    print(f"\nimprint labels: {accuracy:.3f} correct on {isolated.sum()} isolated records")
    assert accuracy == 1.0


def _correlation_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlations between the rows of ``a`` and the rows of ``b``."""
    def rows(values: np.ndarray) -> np.ndarray:
        centred = values - values.mean(axis=1, keepdims=True)
        return centred / np.linalg.norm(centred, axis=1, keepdims=True)
    return rows(a) @ rows(b).T


@pytest.mark.parametrize("label", range(N_CLASSES))
def test_the_difference_attack_recovers_the_left_out_record_and_its_class(records, label):
    x, y = records
    left_out = int(np.flatnonzero(y == label)[-1])
    model = LinearClassifier(N_FEATURES, N_CLASSES)
    zero = {key: np.zeros(tuple(value.shape), np.float32) for key, value in model.state_dict().items()}
    keep = np.arange(N_RECORDS) != left_out
    update_a = sgd_step(model, zero, x, y, lr=1.0)
    update_b = sgd_step(model, zero, x[keep], y[keep], lr=1.0)
    record, label = reconstruct_difference(update_a, update_b, N_RECORDS, N_RECORDS - 1, lr=1.0)
    correlation = float(np.corrcoef(record, x[left_out])[0, 1])
    error = float(np.abs(record - x[left_out]).max())
    print(f"\ndifference, record {left_out}: r = {correlation:.6f}, max error {error:.2e} sd, "
          f"class {label} (true {y[left_out]})")
    assert correlation > EXACT
    assert label == y[left_out]
    assert recovered_records(x[left_out:left_out + 1], record[None, :]) == 1


def test_random_candidates_recover_nothing(records):
    x, _ = records
    candidates = np.random.default_rng(2).standard_normal((20_000, N_FEATURES))
    found = recovered_records(x, candidates)
    top = float(best_correlations(x, candidates).max())
    expected = null_exceedance(0.5, N_FEATURES, N_RECORDS * len(candidates))
    print(f"\nnull: {found} of {N_RECORDS} recovered by 20000 N(0, 1) candidates, largest r = {top:.3f}, "
          f"expected pairs above 0.5 under the null = {expected:.1e}")
    assert found == 0


def test_records_of_the_same_population_pass_the_default_bar_but_not_the_exact_one(records):
    x, _ = records
    others, _ = synthetic_records(seed=0, patients=1)
    loose = recovered_records(x, others)
    exact = recovered_records(x, others, corr_bar=EXACT)
    print(f"\nsame-population null: {loose} of {N_RECORDS} 'recovered' at r > 0.5, {exact} at r > {EXACT}")
    assert exact == 0


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__, "-q", "-s", "-p", "no:cacheprovider"]))
