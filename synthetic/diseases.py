"""The synthetic diseases, by the name a config gives them (``cohort.disease``, ``pretrain.disease``):
each one's foundation cohort, another centre's cohort, data dictionary and exact posterior."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

_CONF = Path(__file__).resolve().parents[1] / "conf" / "dictionary"


@dataclass(frozen=True)
class SyntheticDisease:
    """One synthetic disease.

    Attributes
    ----------
    dictionary : Path
        The data dictionary its files follow.
    foundation : callable
        ``foundation(seed)``: the foundation's cohort table.
    external : callable
        ``external(seed, n_records)``: a cohort of another centre (a contributor's own).
    true_posterior : callable
        ``true_posterior(frame)``: each record's exact class probabilities, shape (n, n_classes).
    """

    dictionary: Path
    foundation: Callable[[int], pd.DataFrame]
    external: Callable[[int, int], pd.DataFrame]
    true_posterior: Callable[[pd.DataFrame], np.ndarray]


def _demo() -> SyntheticDisease:
    from synthetic.disease import generate_cohort, generate_external_cohort, true_posterior

    return SyntheticDisease(_CONF / "synthetic.yaml", lambda seed: generate_cohort(seed),
                            generate_external_cohort, true_posterior)


def _myopathy() -> SyntheticDisease:
    from synthetic.myopathy import generate_myopathy, true_posterior

    return SyntheticDisease(_CONF / "myopathy.yaml", lambda seed: generate_myopathy(seed),
                            lambda seed, n: generate_myopathy(seed, n, external=True), true_posterior)


_DISEASES: dict[str, Callable[[], SyntheticDisease]] = {"demo": _demo, "myopathy": _myopathy}


def synthetic_disease(name: str, key: str = "disease") -> SyntheticDisease:
    """The disease called ``name``.

    Raises
    ------
    ValueError
        No disease has that name (``key`` is the config key that gave it, for the message).
    """
    if name not in _DISEASES:
        raise ValueError(f"{key} must be one of {list(_DISEASES)}, not {name!r}")
    return _DISEASES[name]()
