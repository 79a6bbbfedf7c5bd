"""The model registry: tabular classifiers built from a declarative spec.

A contributor names a model and its hyperparameters; the node builds it. No
contributor code runs on the node.
"""

from models.registry import MODELS, ModelSpec, build_model

__all__ = ["MODELS", "ModelSpec", "build_model"]
