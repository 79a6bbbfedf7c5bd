"""Exceptions raised by the model registry and the feature pipelines.

Messages name the key or parameter that was wrong and the rule it broke, never a
long value and never a value from the cohort.
"""


class UnknownModelError(ValueError):
    """The spec names a model that is not in the registry, or bad hyperparameters."""


class FeatureSpecError(ValueError):
    """A feature spec breaks a rule: an unknown key, a wrong type, or an unknown column."""
