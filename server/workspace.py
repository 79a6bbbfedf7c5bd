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
import logging
import multiprocessing
import os
import signal
import subprocess
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from client.errors import PolicyViolation
from client.policy import check_model, check_train_config, feature_pipeline
from client.settings import NodeSettings
from client.training import TrainConfig
from contract.names import GAIN_METRIC, Artifact, Moment, Tag, UsageMetric, holdout_metric
from contract.schema import SCHEMA, CohortSchema
from contract.submission import Submission
from server.app import Progress
from server.leaderboard import BOARD_VIEW_TAG, describe_experiment, read_budget
from server.signing import WorkspaceSigner
from server.tracking import first_use_lock


@dataclass(frozen=True)
class Outcome:
    """How one submission ended."""

    submission: Submission
    ok: bool
    error: str = ""

log = logging.getLogger("cohortfl.workspace")


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
    schema : CohortSchema
        The cohort schema the node published (``cohortfl schema``): every run is built for it
        (its model's shapes, its features) and carries it; the node refuses another.
    """

    #: How many nodes a run has: the pilot's one (a strategy is rehearsed against as many).
    nodes = 1

    def __init__(self, node: NodeSettings, experiment: str, signer: WorkspaceSigner,
                 artifact_dir: Path | None = None, verbose: bool = False,
                 schema: CohortSchema = SCHEMA) -> None:
        from mlflow.tracking import MlflowClient

        self.node = node
        self.schema = schema
        self.experiment = experiment
        self.signer = signer
        self.verbose = verbose
        if artifact_dir is None and node.tracking_uri.startswith("sqlite:///"):
            artifact_dir = Path(node.tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts"
        with first_use_lock(node.tracking_uri):  # the client migrates a new store's schema
            self.client = MlflowClient(node.tracking_uri)
            found = self.client.get_experiment_by_name(experiment)
            self.experiment_id = found.experiment_id if found else self.client.create_experiment(
                experiment, artifact_location=artifact_dir.resolve().as_uri() if artifact_dir else None)
            if not found or BOARD_VIEW_TAG not in found.tags:  # new, or a store from an earlier version
                describe_experiment(self.client, self.experiment_id)

    def submit_all(self, submissions: list[Submission], batch: str = "", parallel: int = 1,
                   progress: Callable[[Submission], Progress] | None = None,
                   notices: list[list[str]] | None = None) -> list[Outcome]:
        """Run submissions end to end, ``parallel`` at a time; failures are recorded, not raised.

        A submission's MLflow run is opened when its engine is about to start, so its Duration is
        its own. Each engine lives in a worker process of its own session, so that an interrupt
        (Ctrl-C, SIGTERM) reaches only this process, which then kills the workers' process
        groups (Ray's processes with them), marks every run it opened and did not close KILLED
        (runs not yet started were never opened), and raises ``KeyboardInterrupt``. ``notices``
        are ``check``'s, one list per submission. Outcomes come back in the order runs finish.
        """
        waiting = list(zip(submissions, notices or [[] for _ in submissions], strict=True))
        opened, outcomes, running = [], [], {}
        context = multiprocessing.get_context("spawn")  # each run its own engine and Ray
        self.close_recorded()  # an earlier command's runs whose record arrived late
        try:
            with ProcessPoolExecutor(max_workers=parallel, mp_context=context,
                                     initializer=os.setsid) as pool:

                def start_next() -> None:
                    submission, notice = waiting.pop(0)
                    run = self.open_run(submission, batch, notice)
                    opened.append(run)
                    try:
                        running[pool.submit(simulate, self.run_config(run), self.node, self.verbose,
                                            progress(run) if progress else None)] = run
                    except BrokenProcessPool as ex:  # a worker died: the pool takes no more runs
                        outcomes.append(self.close_or_say_why(run, f"BrokenProcessPool: {ex}"))

                try:
                    while waiting or running:
                        while waiting and len(running) < parallel:
                            start_next()
                        done, _ = wait(running, return_when=FIRST_COMPLETED) if running else ((), ())
                        for future in done:
                            try:
                                error = future.result()
                            except Exception as ex:  # the worker process died: the run failed all the same
                                error = f"{type(ex).__name__}: {ex}"
                            outcomes.append(self.close_or_say_why(running.pop(future), error))
                except BaseException:  # interrupted: start no further run, stop the running ones
                    workers = list(pool._processes.values())  # no public API before Python 3.14
                    pool.shutdown(wait=False, cancel_futures=True)
                    for worker in workers:
                        with contextlib.suppress(ProcessLookupError):  # each worker leads its own group:
                            os.killpg(worker.pid, signal.SIGKILL)  # its Ray's processes go with it
                    raise
        except BaseException:
            closed = {o.submission.submission_id for o in outcomes}
            self.kill_runs([s for s in opened if s.submission_id not in closed])
            raise
        with contextlib.suppress(Exception):  # the node delivers queued writes at its next message
            self.close_recorded()
        return outcomes

    def close_or_say_why(self, submission: Submission, error: str) -> Outcome:
        """``close_run``; when the store is unreachable, an outcome that says so (the node keeps its
        official record in its outbox and writes it at its next message once the store answers)."""
        try:
            return self.close_run(submission, error)
        except Exception as ex:
            return Outcome(submission, ok=False, error=(
                f"the MLflow store could not be reached to close run {submission.submission_id} "
                f"({type(ex).__name__}); the node keeps its official record and writes it once the "
                f"store answers; the next cohortfl command on this store closes the run then"
                + (f"; the run: {error}" if error else "")))

    def kill_runs(self, submissions: list[Submission]) -> None:
        """Mark runs that were interrupted KILLED, saying so (never left RUNNING); a store that is
        down leaves them as they are, and says which."""
        for submission in submissions:
            try:
                self.client.set_tag(submission.submission_id, Tag.ERROR,
                                    "interrupted (Ctrl-C or SIGTERM) before the run ended")
                self.client.set_terminated(submission.submission_id, "KILLED")
            except Exception as ex:  # the store is gone too: nothing more to do here
                log.warning("run %s could not be marked KILLED: %s", submission.submission_id, ex)

    def check(self, submission: Submission) -> list[str]:
        """Refuse, before any run exists, a submission the node's policy would refuse or whose
        strategy cannot complete a round with this workspace's nodes (``server/rehearsal.py``).

        Returns
        -------
        list of str
            Notices for the contributor: what the strategy reduces to with this many nodes.

        Raises
        ------
        PolicyViolation
            Naming the rule; the node enforces the same rules again on every message.
        PackageRefused
            ``strategy-rehearsal``: what the strategy did with one stand-in round, and why.
        """
        from server.app import initial_arrays
        from server.rehearsal import rehearse

        policy = self.node.policy
        submission = self.for_cohort(submission)
        check_model(submission.model, policy, feature_pipeline(submission.features, self.schema),
                    len(self.schema.classes))
        if not 1 <= submission.num_rounds <= policy.rounds_max:
            raise PolicyViolation("rounds-range", f"rounds must lie in [1, {policy.rounds_max}]")
        check_train_config(TrainConfig(lr=submission.lr, local_epochs=submission.local_epochs,
                                       batch_size=submission.batch_size), policy)
        budget = read_budget(self.node.tracking_uri, self.experiment, submission.contributor)
        used = budget[UsageMetric.BUDGET_SUBMISSIONS_USED] if budget else 0
        if used >= policy.submissions_max:
            raise PolicyViolation("submission-limit", f"{used:.0f} of {policy.submissions_max} "
                                  "submissions used; none left (as the node recorded on your latest run)")
        return rehearse(submission.strategy, initial_arrays(submission), submission.train_config(),
                        self.nodes, sends_train_loss=not policy.dp_enabled)

    def for_cohort(self, submission: Submission) -> Submission:
        """The submission built for this workspace's published cohort schema (the workspace's
        word, as the contributor and the rounds are)."""
        return replace(submission, cohort_schema="" if self.schema == SCHEMA else self.schema.to_json())

    def open_run(self, submission: Submission, batch: str = "", notices: list[str] = ()) -> Submission:
        """Create the submission's MLflow run (with ``check``'s notices); return the submission
        with its id, built for the published cohort schema."""
        submission = self.for_cohort(submission)
        version = code_version()
        run = self.client.create_run(
            self.experiment_id, tags={
                Tag.CONTRIBUTOR: submission.contributor, Tag.BATCH: batch,
                "mlflow.user": submission.contributor, "mlflow.source.type": "PROJECT",
                "mlflow.source.name": "cohortfl", "mlflow.source.git.commit": version.rpartition("+g")[2]
                if "+g" in version else version,
                **({Tag.NOTICE: "; ".join(notices)} if notices else {})})
        # unique and readable: who, how, which run
        self.client.update_run(run.info.run_id, name=f"{submission.contributor}-{submission.strategy_name}-"
                                                     f"{run.info.run_id[:6]}")
        for key, value in {**submission.params(), "code_version": version}.items():
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
        scores = [recorded.get(holdout_metric(moment, "macro_f1"))
                  for moment in (Moment.OUT_OF_THE_BOX, Moment.FINE_TUNED)]
        if None in scores:
            error = error or "the node did not record both holdout scores"
        else:
            self.client.log_metric(submission.submission_id, GAIN_METRIC, round(scores[1] - scores[0], 6))
        if error:
            self.client.set_tag(submission.submission_id, Tag.ERROR, error[:5000])
        self.client.set_terminated(submission.submission_id, "FAILED" if error else "FINISHED")
        return Outcome(submission, ok=not error, error=error)

    def close_recorded(self) -> list[str]:
        """Close the runs left RUNNING because the store was unreachable when they ended, once the
        node has delivered their whole record (its ``record_complete`` tag): FINISHED. Runs still
        going carry no such tag, so a command running beside this one loses nothing."""
        runs = self.client.search_runs([self.experiment_id], "attributes.status = 'RUNNING' and "
                                       f"tags.`{Tag.RECORD_COMPLETE}` = 'true'")
        for run in runs:
            self.client.set_terminated(run.info.run_id, "FINISHED")
            log.info("run %s closed: the node delivered its record after the store came back",
                     run.info.run_id)
        return [run.info.run_id for run in runs]


def simulate(run_config: dict[str, object], node: NodeSettings, verbose: bool,
             progress: Progress | None) -> str:
    """One Flower run on the simulation engine; returns the error text, empty on success."""
    from client.app import build_client_app
    from client.node import resolve_device
    from server.app import build_server_app
    from server.engine import run_simulation

    if progress:
        progress("engine", 0, 1)
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
