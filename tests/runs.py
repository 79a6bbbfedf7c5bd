"""Submissions as the node reads them from a run config, and the workspace's signer, for tests."""

from __future__ import annotations

from pathlib import Path

from contract.submission import Submission
from models import ModelSpec
from models.pipeline import FeatureSpec
from server.signing import WorkspaceSigner


def node_run(contributor: str, submission_id: str, model: ModelSpec, seed: int = 0,
             num_rounds: int = 1, features: FeatureSpec | None = None, cohort_schema: str = "") -> Submission:
    """A FedAvg submission with the node-facing fields given and the pilot's hyperparameters."""
    return Submission(contributor=contributor, submission_id=submission_id, model=model, seed=seed,
                      num_rounds=num_rounds, features=features or FeatureSpec(), cohort_schema=cohort_schema,
                      strategy={"_target_": "flwr.serverapp.strategy.FedAvg"}, lr=0.05, batch_size=32,
                      local_epochs=1)


def local_signer(folder: Path) -> WorkspaceSigner:
    """The workspace's signer for a test's local node (its key under ``folder``)."""
    return WorkspaceSigner(Path(folder) / "workspace" / "grant-key.pem")
