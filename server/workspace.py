"""The workspace: turns submissions into MLflow runs and Flower runs.

The workspace creates each submission's MLflow run (params, identity tags),
hands the run id to the node through the run config, starts the Flower run,
and closes the MLflow run as finished or failed. It writes no scores: those
come from the node.

Flower runs can go in parallel, each in its own process with its own
simulation engine: a run spends most of its wall time starting up, not
computing, so two at a time on two cores nearly halve the demo's time.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import subprocess
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from client.errors import PolicyViolation
from client.policy import check_model, check_train_config, feature_pipeline
from client.settings import NodeSettings
from client.training import TrainConfig
from contract.names import Artifact, Moment, Tag, holdout_metric
from contract.schema import SCHEMA
from contract.submission import Submission
from server.app import Progress
from server.signing import WorkspaceSigner


@dataclass(frozen=True)
class Outcome:
    """How one submission ended."""

    submission: Submission
    ok: bool
    error: str = ""


class Workspace:
    """Submits runs for one node and one MLflow experiment.

    Parameters
    ----------
    node : NodeSettings
        The (simulated) node's settings, foundation-owned.
    experiment : str
        MLflow experiment that holds the leaderboard.
    signer : WorkspaceSigner
        Signs each run's grant; the node trusts its public key.
    artifact_dir : Path, optional
        Where a new experiment keeps its artifacts; by default ``mlartifacts``
        beside a SQLite store (a tracking server decides for itself).
    """

    def __init__(self, node: NodeSettings, experiment: str, signer: WorkspaceSigner,
                 artifact_dir: Path | None = None, verbose: bool = False) -> None:
        from mlflow.tracking import MlflowClient

        self.node = node
        self.signer = signer
        self.verbose = verbose
        self.client = MlflowClient(node.tracking_uri)
        if artifact_dir is None and node.tracking_uri.startswith("sqlite:///"):
            artifact_dir = Path(node.tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts"
        found = self.client.get_experiment_by_name(experiment)
        self.experiment_id = found.experiment_id if found else self.client.create_experiment(
            experiment, artifact_location=artifact_dir.resolve().as_uri() if artifact_dir else None)

    def submit_all(self, submissions: list[Submission], batch: str = "", parallel: int = 1,
                   progress: Callable[[Submission], Progress] | None = None) -> list[Outcome]:
        """Run submissions end to end, ``parallel`` at a time; failures are recorded, not raised.

        Outcomes come back in the order the runs finish.
        """
        opened = [self.open_run(s, batch) for s in submissions]
        outcomes = []
        if parallel <= 1:
            for submission in opened:
                error = simulate(self.run_config(submission), self.node, self.verbose,
                                 progress(submission) if progress else None)
                outcomes.append(self.close_run(submission, error))
            return outcomes
        context = multiprocessing.get_context("spawn")  # each run its own engine and Ray
        with ProcessPoolExecutor(max_workers=parallel, mp_context=context, initializer=os.setsid) as pool:
            futures = {pool.submit(simulate, self.run_config(s), self.node, self.verbose,
                                   progress(s) if progress else None): s for s in opened}
            try:
                for future in as_completed(futures):
                    try:
                        error = future.result()
                    except Exception as ex:  # the worker process died: the run failed all the same
                        error = f"{type(ex).__name__}: {ex}"
                    outcomes.append(self.close_run(futures[future], error))
            except BaseException:  # interrupted: start no further run, stop the running ones
                workers = list(pool._processes.values())  # no public API before Python 3.14
                pool.shutdown(wait=False, cancel_futures=True)
                for worker in workers:
                    with contextlib.suppress(ProcessLookupError):  # each worker leads its own group:
                        os.killpg(worker.pid, signal.SIGKILL)  # its Ray's processes go with it
                raise
        return outcomes

    def check(self, submission: Submission) -> None:
        """Refuse, before any run exists, a submission the node's policy would refuse.

        Raises
        ------
        PolicyViolation
            Naming the rule; the node enforces the same rules again on every message.
        """
        policy = self.node.policy
        check_model(submission.model, policy, feature_pipeline(submission.features), len(SCHEMA.classes))
        if not 1 <= submission.num_rounds <= policy.rounds_max:
            raise PolicyViolation("rounds-range", f"rounds must lie in [1, {policy.rounds_max}]")
        check_train_config(TrainConfig(lr=submission.lr, local_epochs=submission.local_epochs,
                                       batch_size=submission.batch_size), policy)

    def open_run(self, submission: Submission, batch: str = "") -> Submission:
        """Create the submission's MLflow run; return the submission with its id."""
        run = self.client.create_run(
            self.experiment_id, run_name=f"{submission.contributor}-{submission.strategy_name}",
            tags={Tag.CONTRIBUTOR: submission.contributor, Tag.BATCH: batch})
        for key, value in {**submission.params(), "code_version": code_version()}.items():
            self.client.log_param(run.info.run_id, key, value)
        self.client.log_dict(run.info.run_id, submission.declaration(), Artifact.SUBMISSION)
        return replace(submission, submission_id=run.info.run_id)

    def run_config(self, submission: Submission) -> dict[str, object]:
        """The Flower run config of an opened submission, with the workspace's signed grant."""
        return self.signer.signed(submission.to_run_config())

    def close_run(self, submission: Submission, error: str) -> Outcome:
        """Mark the run finished, or failed with the reason.

        A run without the node's final holdout score failed, whatever the engine said.
        """
        recorded = self.client.get_run(submission.submission_id).data.metrics
        if not error and not {holdout_metric(m, "macro_f1") for m in Moment} <= set(recorded):
            error = "the node did not record both holdout scores"
        if error:
            self.client.set_tag(submission.submission_id, Tag.ERROR, error[:5000])
        self.client.set_terminated(submission.submission_id, "FAILED" if error else "FINISHED")
        return Outcome(submission, ok=not error, error=error)


def simulate(run_config: dict[str, object], node: NodeSettings, verbose: bool,
             progress: Progress | None) -> str:
    """One Flower run on the simulation engine; returns the error text, empty on success."""
    from client.app import build_client_app
    from client.node import resolve_device
    from server.app import build_server_app
    from server.engine import run_simulation

    try:
        run_simulation(build_server_app(progress), build_client_app(node), run_config,
                       use_gpu=resolve_device(node.device).type == "cuda", verbose=verbose)
    except Exception as ex:
        return f"{type(ex).__name__}: {ex}"
    return ""


def code_version() -> str:
    """Package version, plus the git commit when running from a checkout."""
    try:
        text = version("cohortfl")
    except PackageNotFoundError:
        text = "unknown"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=5, cwd=Path(__file__).parent)
        if commit.returncode == 0:
            text += f"+g{commit.stdout.strip()}"
    except OSError:
        pass
    return text
