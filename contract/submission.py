"""A submission: the declarative part of a contributor's methodology, as it crosses into Flower.

The workspace builds it once from the configuration, sets it as the Flower run config (flat
kebab-case keys, str/int/float values, one per field) when it creates the run, and both the
ServerApp and the node read it back with ``Submission.from_run_config``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, fields
from typing import Any

from contract.grant import GRANT_KEY
from contract.names import TrainKey
from contract.schema import SCHEMA, CohortSchema
from models import ModelSpec
from models.pipeline import FeatureSpec, FeatureSpecError
from models.registry import UnknownModelError


class RunConfigError(ValueError):
    """A run config that is not a submission's: a key missing or a value of the wrong form."""


@dataclass(frozen=True)
class Submission:
    """One contributor's run: strategy, model, features, training hyperparameters.

    Attributes
    ----------
    contributor : str
        Who the run's work and budget belong to (the workspace's word, never the package's).
    submission_id : str
        The official MLflow run; also the submission's key in the node's ledger.
    strategy : dict
        Keyword arguments of the strategy with its ``_target_`` class path.
    model : ModelSpec
        The registered model and its hyperparameters.
    lr, batch_size, local_epochs : float, int, int
        What every train message asks for (the node's policy bounds them).
    num_rounds : int
        The training rounds the workspace granted the run.
    seed : int
        Seeds the initial weights when none are given.
    strategy_source : str
        A contributor's own strategy module as text (``_target_`` ``contributor.Name``).
    initial_weights : str
        Base64 of an ``.npz`` of starting weights; empty: drawn from ``seed``.
    features : FeatureSpec
        The feature pipeline the node runs for the model (priors such as gene sets included).
    comparisons_run_id : str
        Where the node writes this run's paired comparisons with other runs: a run only the
        foundation reads (they name other contributors' runs and give away their scores);
        empty: the official run itself (the local engine's single-user store).
    cohort_schema : str
        The published cohort schema (``CohortSchema.to_json``) the workspace built the run for
        (the workspace's word, signed with the rest); the node refuses a run built for another
        schema than its cohort's. Empty: the demo's.
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
    comparisons_run_id: str = ""
    cohort_schema: str = ""

    @property
    def schema(self) -> CohortSchema:
        """The cohort schema the run was built for (``cohort_schema``, or the demo's).

        Raises
        ------
        ValueError
            ``cohort_schema`` is not a published schema.
        """
        return CohortSchema.from_json(self.cohort_schema) if self.cohort_schema else SCHEMA

    @property
    def strategy_name(self) -> str:
        """Short class name of the strategy, e.g. ``FedProx``."""
        return str(self.strategy["_target_"]).rsplit(".", 1)[-1]

    def train_config(self) -> dict[str, float | int]:
        """The hyperparameters every train message carries."""
        return {TrainKey.LR: self.lr, TrainKey.BATCH_SIZE: self.batch_size,
                TrainKey.LOCAL_EPOCHS: self.local_epochs}

    def to_run_config(self) -> dict[str, str | int | float]:
        """Flat run config for Flower: one kebab-case key per field."""
        return {run_config_key(f.name): _to_wire(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any]) -> Submission:
        """Inverse of ``to_run_config``.

        Raises
        ------
        RunConfigError
            A key is missing or a value does not parse (the message names the key only).
        FeatureSpecError
            The feature spec breaks one of its rules.
        """
        values = {}
        for f in fields(cls):
            key = run_config_key(f.name)
            if key not in run_config:
                raise RunConfigError(f"the run config has no '{key}'")
            try:
                values[f.name] = _from_wire(f.type, run_config[key])
            except FeatureSpecError:
                raise  # says which part of the spec is wrong, never a value of the data
            except (ValueError, TypeError, UnknownModelError):
                raise RunConfigError(f"the run config's '{key}' does not parse") from None
        return cls(**values)

    def declaration(self) -> dict[str, Any]:
        """The submission's declarative methodology in full: strategy, model, features."""
        return {"strategy": self.strategy, "model": json.loads(self.model.to_json()),
                "features": json.loads(self.features.to_json())}

    def params(self) -> dict[str, str]:
        """What the official run records about the submission (MLflow params)."""
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


def run_config_key(field_name: str) -> str:
    """``submission_id`` -> ``submission-id``: Flower's kebab-case for a field."""
    return field_name.replace("_", "-")


#: Every run-config key: the fields, then the workspace's signed grant (``contract/grant.py``).
#: ``pyproject.toml`` declares each; a test checks it.
RUN_CONFIG_KEYS = (*(run_config_key(f.name) for f in fields(Submission)), GRANT_KEY)


def _to_wire(value: object) -> str | int | float:
    """A field's run-config value: JSON for specs and mappings, the scalar otherwise."""
    if isinstance(value, ModelSpec | FeatureSpec):
        return value.to_json()
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return value


def _from_wire(kind: str, value: object) -> object:
    """Parse a run-config value back into a field of type ``kind`` (its annotation text)."""
    parse = {"ModelSpec": lambda v: ModelSpec.from_json(str(v)),
             "FeatureSpec": lambda v: FeatureSpec.from_json(str(v) or "{}"),
             "dict[str, Any]": lambda v: _mapping(json.loads(str(v))),
             "float": float, "int": _whole, "str": str}[kind]
    return parse(value)


def _mapping(value: object) -> dict[str, Any]:
    """A JSON object, or TypeError."""
    if not isinstance(value, dict):
        raise TypeError("not a JSON object")
    return value


def _whole(value: object) -> int:
    """An int from an int or an integral float, or ValueError."""
    if isinstance(value, bool) or float(value) != int(float(value)):
        raise ValueError("not a whole number")
    return int(float(value))


def _short(text: str, limit: int = 500) -> str:
    """A param value: the text, or its digest when it is long (gene-set priors are; the
    whole submission is the run's ``submission.json`` artifact)."""
    return text if len(text) <= limit else f"sha256:{_digest(text)}"


def _digest(text: str) -> str:
    """SHA-256 of a text, or "none" when it is empty."""
    return hashlib.sha256(text.encode()).hexdigest() if text else "none"
