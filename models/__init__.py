"""The model registry: tabular classifiers built from a declarative spec.

A contributor names a model and its hyperparameters; the node builds it. No
contributor code runs on the node.
"""

from models.pipeline import FeaturePipeline, FeatureSpec, FeatureSpecError
from models.registry import MODELS, ModelSpec, UnknownModelError, build_for, build_model, penalties

__all__ = ["MODELS", "FeaturePipeline", "FeatureSpec", "FeatureSpecError", "ModelSpec", "UnknownModelError",
           "build_for", "build_model", "penalties"]
