"""Name -> model class, and building a model from a declarative spec."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from models.linear import LinearClassifier
from models.mlp import MLPClassifier

MODELS: dict[str, type[nn.Module]] = {
    "linear": LinearClassifier,
    "mlp": MLPClassifier,
}


class UnknownModelError(ValueError):
    """The spec names a model that is not in the registry, or bad hyperparameters."""


@dataclass(frozen=True)
class ModelSpec:
    """A model by name with its hyperparameters (JSON-serialisable values only)."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        """Serialise for a Flower run config (flat string values only)."""
        return json.dumps({"name": self.name, **self.params}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        """Parse what ``to_json`` wrote."""
        data = json.loads(text)
        if not isinstance(data, dict) or "name" not in data:
            raise UnknownModelError("a model spec is a JSON object with a 'name'")
        name = data.pop("name")
        return cls(name=str(name), params=data)


def build_model(spec: ModelSpec, n_features: int, n_classes: int, seed: int = 0) -> nn.Module:
    """Build the model a spec names, with weights drawn from ``seed``.

    Raises
    ------
    UnknownModelError
        Unknown name, or hyperparameters the model does not take.
    """
    model_cls = MODELS.get(spec.name)
    if model_cls is None:
        raise UnknownModelError(f"unknown model '{spec.name}': choose one of {sorted(MODELS)}")
    torch.manual_seed(seed)
    try:
        return model_cls(n_features, n_classes, **spec.params)
    except TypeError:
        raise UnknownModelError(
            f"hyperparameters {sorted(spec.params)} do not fit model '{spec.name}'"
        ) from None
