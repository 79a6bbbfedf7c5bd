"""A submission: the declarative part of a contributor's methodology.

It crosses into Flower as the run config (flat keys, str/int/float values),
set by the workspace when it creates the run.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from flwr.app.user_config import UserConfig

from models import ModelSpec
from models.pipeline import FeatureSpec


@dataclass(frozen=True)
class Submission:
    """One contributor's run: strategy, model, training hyperparameters.

    Attributes
    ----------
    strategy : dict
        Keyword arguments of the strategy with its ``_target_`` class path.
    strategy_source : str
        A contributor's own strategy module as text (``_target_`` ``contributor.Name``).
    initial_weights : str
        Base64 of an ``.npz`` of starting weights; empty: drawn from ``seed``.
    features : FeatureSpec
        The feature pipeline the node runs for the model (priors such as gene sets included).
    """

    contributor: str
    strategy: dict[str, Any]
    model: ModelSpec
    lr: float
    batch_size: int
    local_epochs: int
    num_rounds: int
    seed: int = 0
    submission_id: str = ""
    strategy_source: str = ""
    initial_weights: str = ""
    features: FeatureSpec = FeatureSpec()

    @property
    def strategy_name(self) -> str:
        """Short class name of the strategy, e.g. ``FedProx``."""
        return str(self.strategy["_target_"]).rsplit(".", 1)[-1]

    def train_config(self) -> dict[str, float | int]:
        """The hyperparameters every train message carries (kebab-case wire keys)."""
        return {"lr": self.lr, "batch-size": self.batch_size, "local-epochs": self.local_epochs}

    def to_run_config(self) -> UserConfig:
        """Flat run config for Flower."""
        return {
            "contributor": self.contributor,
            "submission-id": self.submission_id,
            "strategy": json.dumps(self.strategy, sort_keys=True),
            "model": self.model.to_json(),
            "lr": float(self.lr),
            "batch-size": int(self.batch_size),
            "local-epochs": int(self.local_epochs),
            "num-rounds": int(self.num_rounds),
            "seed": int(self.seed),
            "strategy-source": self.strategy_source,
            "initial-weights": self.initial_weights,
            "features": self.features.to_json(),
        }

    @classmethod
    def from_run_config(cls, run_config: UserConfig) -> Submission:
        """Inverse of ``to_run_config``."""
        return cls(
            contributor=str(run_config["contributor"]),
            strategy=json.loads(str(run_config["strategy"])),
            model=ModelSpec.from_json(str(run_config["model"])),
            lr=float(run_config["lr"]),
            batch_size=int(run_config["batch-size"]),
            local_epochs=int(run_config["local-epochs"]),
            num_rounds=int(run_config["num-rounds"]),
            seed=int(run_config["seed"]),
            submission_id=str(run_config["submission-id"]),
            strategy_source=str(run_config.get("strategy-source", "")),
            initial_weights=str(run_config.get("initial-weights", "")),
            features=FeatureSpec.from_json(str(run_config.get("features") or "{}")),
        )

    def declaration(self) -> dict[str, Any]:
        """The submission's declarative methodology in full: strategy, model, features."""
        return {"strategy": self.strategy, "model": json.loads(self.model.to_json()),
                "features": json.loads(self.features.to_json())}

    def params(self) -> dict[str, str]:
        """What the MLflow run records about the submission."""
        strategy_args = {k: v for k, v in self.strategy.items() if k != "_target_"}
        return {
            "contributor": self.contributor, "strategy": self.strategy_name,
            "strategy_class": str(self.strategy["_target_"]),
            "strategy_args": json.dumps(strategy_args, sort_keys=True),
            "model": self.model.name, "model_spec": _short(self.model.to_json()),
            "features": _short(self.features.to_json()),
            "lr": str(self.lr), "batch_size": str(self.batch_size),
            "local_epochs": str(self.local_epochs), "num_rounds": str(self.num_rounds),
            "seed": str(self.seed),
            "strategy_source_sha256": _digest(self.strategy_source),
            "initial_weights_sha256": _digest(self.initial_weights),
        }


def _short(text: str, limit: int = 500) -> str:
    """A param value: the text, or its digest when it is long (gene-set priors are; the
    whole submission is the run's ``submission.json`` artifact)."""
    return text if len(text) <= limit else f"sha256:{_digest(text)}"


def _digest(text: str) -> str:
    """SHA-256 of a text, or "none" when it is empty."""
    return hashlib.sha256(text.encode()).hexdigest() if text else "none"
