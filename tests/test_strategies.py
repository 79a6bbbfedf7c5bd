"""Every strategy Flower ships, run for real on the simulation engine: it finishes with the node's
final score, or the workspace refused it before any run existed (slow: CI runs it).

The fast twin, ``tests/test_rehearsal.py``, checks the refusals' wording; this one checks that
the rehearsal tells the truth: what it accepts finishes, and what it refuses would have failed.
"""

from __future__ import annotations

from dataclasses import replace
from itertools import pairwise

import pytest
from mlflow.tracking import MlflowClient
from processes import engine_processes_after
from test_rehearsal import config_for, flower_strategy_classes

from contract.names import Tag
from server.cli import write_synthetic_cohort
from server.config import load_job
from server.errors import PackageRefused
from server.signing import WorkspaceSigner
from server.workspace import Workspace

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Each class checked by the workspace; the accepted ones run one round each, one at a time."""
    tmp = tmp_path_factory.mktemp("strategies")
    job = load_job([f"output_dir={tmp}", "model=linear", "workspace.num_rounds=1"], demo=False)
    write_synthetic_cohort(job.workspace.cohort_path, job.workspace.synthetic_seed)
    workspace = Workspace(job.node, job.workspace.experiment, WorkspaceSigner(job.workspace.signing_key))
    refused, accepted, notices = {}, [], []
    for name in flower_strategy_classes():
        submission = replace(job.entries[0].submission, contributor=name.lower(),
                             strategy={**config_for(name), "fraction_evaluate": 0.0}
                             if "fraction_evaluate" in config_for(name) else config_for(name))
        try:
            notices.append(workspace.check(submission))
            accepted.append(submission)
        except PackageRefused as ex:
            refused[name] = str(ex)
    outcomes = workspace.submit_all(accepted, batch="sweep", notices=notices)
    return workspace, refused, {o.submission.contributor: o for o in outcomes}, job


def test_every_accepted_strategy_finishes_with_the_nodes_final_score(sweep):
    workspace, refused, outcomes, _ = sweep
    assert len(refused) + len(outcomes) == len(flower_strategy_classes())
    failed = {name: o.error for name, o in outcomes.items() if not o.ok}
    assert not failed, failed
    client = MlflowClient(workspace.node.tracking_uri)
    for outcome in outcomes.values():
        run = client.get_run(outcome.submission.submission_id)
        assert run.info.status == "FINISHED"
        assert "holdout_fine_tuned_macro_f1" in run.data.metrics


def test_a_refused_strategy_opened_no_run_and_charged_nothing(sweep):
    workspace, refused, _, job = sweep
    from client.ledger import NodeLedger

    assert refused, "Flower 1.42 ships strategies the pilot's node cannot serve"
    runs = MlflowClient(workspace.node.tracking_uri).search_runs([workspace.experiment_id])
    contributors = {run.data.tags[Tag.CONTRIBUTOR] for run in runs}
    ledger = NodeLedger(job.node.state_dir + "/ledger.sqlite")
    for name in refused:
        assert name.lower() not in contributors
        assert ledger.usage(name.lower()).submissions == 0


def test_a_robust_aggregator_says_on_its_run_that_it_is_fedavg_here(sweep):
    workspace, _, outcomes, _ = sweep
    run = MlflowClient(workspace.node.tracking_uri).get_run(outcomes["krum"].submission.submission_id)
    assert "FedAvg" in run.data.tags[Tag.NOTICE]


def test_no_engine_process_is_left_running(sweep):
    assert engine_processes_after(30) == ""


def test_each_run_is_opened_when_its_engine_starts_so_its_duration_is_its_own(sweep):
    """One at a time: a run's MLflow start follows the previous run's end (the demo's queued runs
    used to show the queue's wait as their Duration)."""
    workspace, _, outcomes, _ = sweep
    client = MlflowClient(workspace.node.tracking_uri)
    runs = sorted((client.get_run(o.submission.submission_id).info for o in outcomes.values()),
                  key=lambda info: info.start_time)
    assert all(later.start_time >= earlier.end_time for earlier, later in pairwise(runs))
