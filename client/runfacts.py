"""What the workspace set when it created a run; a strategy cannot change it."""

from __future__ import annotations

from dataclasses import dataclass

from flwr.app.user_config import UserConfig

from client.errors import PolicyViolation
from models import ModelSpec
from models.pipeline import FeatureSpec, FeatureSpecError


@dataclass(frozen=True)
class RunFacts:
    """The run's identity and shape, from Flower's run config.

    Attributes
    ----------
    contributor : str
        Who the run's work and budget belong to.
    submission_id : str
        The official MLflow run the node writes to; also the key of the
        submission in the node's ledger.
    num_rounds : int
        The training rounds the workspace granted the run.
    features : FeatureSpec
        The feature pipeline the node runs for this model (default: standardised raw columns).
    """

    contributor: str
    submission_id: str
    model: ModelSpec
    seed: int
    num_rounds: int
    features: FeatureSpec = FeatureSpec()

    @classmethod
    def from_run_config(cls, run_config: UserConfig) -> RunFacts:
        """Read the run's configuration.

        Raises
        ------
        PolicyViolation
            ``run-config`` (incomplete) or ``run-identity`` (no contributor or submission).
        """
        try:
            facts = cls(
                contributor=str(run_config["contributor"]),
                submission_id=str(run_config["submission-id"]),
                model=ModelSpec.from_json(str(run_config["model"])),
                seed=int(run_config["seed"]),
                num_rounds=int(run_config["num-rounds"]),
                features=FeatureSpec.from_json(str(run_config.get("features") or "{}")),
            )
        except FeatureSpecError as ex:
            raise PolicyViolation("feature-spec", str(ex)) from None
        except (KeyError, ValueError, TypeError) as ex:
            raise PolicyViolation("run-config", f"the run config is incomplete ({type(ex).__name__})"
                                  ) from None
        if not facts.contributor or not facts.submission_id:
            raise PolicyViolation("run-identity", "runs are created by the workspace with a "
                                  "contributor and a submission id")
        return facts
