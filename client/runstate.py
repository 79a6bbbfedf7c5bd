"""What the node knows about one run: the workspace's facts and the run's progress."""

from __future__ import annotations

from dataclasses import dataclass, field

from flwr.app import ConfigRecord, RecordDict
from flwr.app.user_config import UserConfig

from client.errors import PhaseViolation, PolicyViolation
from client.policy import WorkspacePolicy
from models import ModelSpec

_STATE_KEY = "cohortfl-run"

#: Phases of a submission on the node, in order.
NEW, SCORED_OOB, TRAINING, CLOSED = "new", "scored-oob", "training", "closed"


@dataclass(frozen=True)
class RunFacts:
    """What the workspace set when it created the run; a strategy cannot change it."""

    contributor: str
    submission_id: str
    model: ModelSpec
    seed: int

    @classmethod
    def from_run_config(cls, run_config: UserConfig, policy: WorkspacePolicy) -> RunFacts:
        """Read and check the run's configuration.

        Raises
        ------
        PolicyViolation
            No contributor or submission id, or a model outside the policy.
        """
        try:
            facts = cls(
                contributor=str(run_config["contributor"]),
                submission_id=str(run_config["submission-id"]),
                model=ModelSpec.from_json(str(run_config["model"])),
                seed=int(run_config["seed"]),
            )
        except (KeyError, ValueError, TypeError) as ex:
            raise PolicyViolation("run-config", f"the run config is incomplete ({type(ex).__name__})"
                                  ) from None
        if not facts.contributor or not facts.submission_id:
            raise PolicyViolation("run-identity", "runs are created by the workspace with a "
                                  "contributor and a submission id")
        if facts.model.name not in policy.allowed_models:
            raise PolicyViolation("allowed-models", f"models allowed: {list(policy.allowed_models)}")
        return facts


@dataclass
class RunState:
    """The run's progress on this node, kept in Flower's per-run node state."""

    phase: str = NEW
    rounds: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    flops: int = 0
    device_seconds: float = 0.0

    @classmethod
    def load(cls, state: RecordDict) -> RunState:
        """Read from ``context.state`` (a fresh state when the run is new)."""
        record = state.get(_STATE_KEY)
        if record is None:
            return cls()
        return cls(phase=str(record["phase"]), rounds=list(record["rounds"]),
                   losses=list(record["losses"]), flops=int(record["flops"]),
                   device_seconds=float(record["device-seconds"]))

    def save(self, state: RecordDict) -> None:
        """Write back into ``context.state``."""
        state[_STATE_KEY] = ConfigRecord({
            "phase": self.phase, "rounds": list(self.rounds), "losses": list(self.losses),
            "flops": int(self.flops), "device-seconds": float(self.device_seconds),
        })

    def require(self, *phases: str, action: str) -> None:
        """Refuse ``action`` unless the run is in one of ``phases``."""
        if self.phase not in phases:
            raise PhaseViolation(
                "submission-phases",
                f"'{action}' is not allowed once the run is '{self.phase}' "
                "(order: holdout out of the box, training rounds, final holdout)",
            )


