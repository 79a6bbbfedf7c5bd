"""Name -> model class, and building a model from a declarative spec."""

from __future__ import annotations

import inspect
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from models.errors import UnknownModelError
from models.heads import HEADS, OrdinalHead
from models.linear import LinearClassifier
from models.mlp import MLPClassifier
from models.pathway import PathwayNet
from models.pipeline import FeaturePipeline

__all__ = ["MODELS", "PENALTIES", "ModelSpec", "UnknownModelError", "build_for", "build_model",
           "penalties"]

MODELS: dict[str, type[nn.Module]] = {
    "linear": LinearClassifier,
    "mlp": MLPClassifier,
    "pathway": PathwayNet,
}


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


def build_model(spec: ModelSpec, n_features: int, n_classes: int, seed: int = 0,
                feature_names: Sequence[str] | None = None,
                gene_names: Sequence[str] | None = None) -> nn.Module:
    """Build the model a spec names, with weights drawn from ``seed``.

    Parameters
    ----------
    spec : ModelSpec
        The model's name and hyperparameters; ``head: ordinal`` among them puts a cumulative-link
        outcome (``models/heads.py``) over the model built with one output.
    n_features, n_classes : int
        Width of the input matrix and number of output logits.
    seed : int
        Seed of the initial weights.
    feature_names : sequence of str, optional
        Names of the input matrix's columns; passed to models whose constructor
        takes ``feature_names`` (such as ``pathway``), which need them.
    gene_names : sequence of str, optional
        The inputs that are genes; passed to models that take ``gene_names``.

    Raises
    ------
    UnknownModelError
        Unknown name, hyperparameters the model does not take or that break its
        rules, or feature names missing or of the wrong length.
    """
    model_cls = MODELS.get(spec.name)
    if model_cls is None:
        raise UnknownModelError(f"unknown model '{spec.name}': choose one of {sorted(MODELS)}")
    for key in ("feature_names", "gene_names"):
        if key in spec.params:
            raise UnknownModelError(f"'{key}' is set by the node, not by a model spec")
    kwargs = dict(spec.params)
    head = kwargs.pop("head", "multinomial")
    if head not in HEADS:
        raise UnknownModelError(f"unknown head '{head}': choose one of {list(HEADS)}")
    penalties(spec)  # training's, not the constructor's
    for key in PENALTIES:
        kwargs.pop(key, None)
    takes = inspect.signature(model_cls.__init__).parameters
    if "feature_names" in takes:
        if feature_names is None:
            raise UnknownModelError(f"model '{spec.name}' needs the input's feature names")
        kwargs["feature_names"] = list(feature_names)
    if "gene_names" in takes and gene_names is not None:
        kwargs["gene_names"] = list(gene_names)
    if feature_names is not None and len(feature_names) != n_features:
        raise UnknownModelError(
            f"n_features is {n_features} but {len(feature_names)} feature names were given"
        )
    torch.manual_seed(seed)
    try:
        if head == "ordinal":
            return OrdinalHead(model_cls(n_features, 1, **kwargs), n_classes)
        return model_cls(n_features, n_classes, **kwargs)
    except TypeError:
        raise UnknownModelError(
            f"hyperparameters {sorted(spec.params)} do not fit model '{spec.name}'"
        ) from None
    except ValueError as ex:
        raise UnknownModelError(f"model '{spec.name}': {ex}") from None


#: Elastic-net penalties a model spec may declare on its weights (``client/training.py``).
PENALTIES = ("l1", "l2")


def penalties(spec: ModelSpec) -> dict[str, float]:
    """The spec's elastic-net penalties, ``{"l1": a, "l2": b}`` (0 where not declared).

    Raises
    ------
    UnknownModelError
        A penalty that is not a finite number of at least 0.
    """
    found = {}
    for key in PENALTIES:
        value = spec.params.get(key, 0.0)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < float("inf"):
            raise UnknownModelError(f"penalty '{key}' must be a number of at least 0")
        found[key] = float(value)
    return found


def build_for(spec: ModelSpec, pipeline: FeaturePipeline, n_classes: int, seed: int = 0) -> nn.Module:
    """The model a spec names, reading what ``pipeline`` outputs: the one place a feature
    pipeline and a model are put together (node, workspace, pretraining, benchmarks).

    Raises
    ------
    UnknownModelError, FeatureSpecError
        As ``build_model``, or the pipeline's spec is broken.
    """
    names = pipeline.feature_names
    return build_model(spec, len(names), n_classes, seed, feature_names=names,
                       gene_names=pipeline.gene_features)
