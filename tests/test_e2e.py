"""One submission through Flower's simulation engine, as a user runs it.

Runs the real ``cohortfl`` command in a subprocess (its own Ray, its own
MLflow SQLite store in a temporary directory), then reads the store back.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from processes import engine_processes_after

from client.holdout import score_predictions
from client.node import ResidentCohort, round_seed
from client.privacy import train_local_dp
from client.settings import NodeSettings
from client.training import FlopMeter, TrainConfig, predict
from contract.schema import SCHEMA
from models import ModelSpec, build_model

ROUNDS = 4
LR = 0.1


def cohortfl(*args, cwd, columns: int = 250):
    env = {**os.environ, "FLWR_HOME": str(cwd / "flwr-home"), "COLUMNS": str(columns)}
    return subprocess.run([sys.executable, "-m", "server.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A linear model fine-tuned for a few FedAvg rounds; returns (store, run, tmp dir)."""
    tmp = tmp_path_factory.mktemp("e2e")
    done = cohortfl("run", "model=linear", "strategy=fedavg", f"lr={LR}", "contributor=alice",
                    f"workspace.num_rounds={ROUNDS}", "workspace.parallel_runs=1",
                    f"output_dir={tmp}", cwd=tmp)
    assert done.returncode == 0, done.stdout + done.stderr
    uri = f"sqlite:///{tmp}/mlflow.db"
    client = MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("cohortfl-leaderboard").experiment_id])
    return uri, run, tmp, done.stdout


def test_the_run_holds_params_scores_series_compute_and_figure(finished_run):
    uri, run, _, _ = finished_run
    assert run.info.status == "FINISHED"
    params, metrics = run.data.params, run.data.metrics
    for key in ("contributor", "strategy", "model", "lr", "cohort_digest", "code_version"):
        assert params[key]
    assert params["contributor"] == "alice" and params["strategy"] == "FedAvg"
    for key in ("holdout_out_of_the_box_macro_f1", "holdout_fine_tuned_macro_f1",
                "holdout_fine_tuned_recall_fast", "holdout_fine_tuned_recall_slow",
                "holdout_fine_tuned_f1_medium", "compute_flops", "compute_device_seconds"):
        assert key in metrics
    assert metrics["holdout_fine_tuned_macro_f1"] > metrics["holdout_out_of_the_box_macro_f1"]
    # the pilot trains under DP-SGD: privacy spent is recorded beside compute
    assert metrics["compute_flops"] > 0
    assert 0 < metrics["privacy_epsilon"] <= metrics["privacy_epsilon_budget"]
    assert metrics["rounds_trained"] == ROUNDS
    # the exact training loss is an un-noised answer about the records: under DP it stays on the node
    assert MlflowClient(uri).get_metric_history(run.info.run_id, "train_loss") == []
    artifacts = [a.path for a in MlflowClient(uri).list_artifacts(run.info.run_id)]
    assert "holdout_confusion_matrix.png" in artifacts



def test_the_run_reads_as_a_board_entry(finished_run):
    """The gain is a metric, the name says who, how and which run, MLflow's own tags say who and
    what code, the experiment says how to read it, and the printed link sorts by the board's score."""
    uri, run, _, stdout = finished_run
    metrics = run.data.metrics
    assert metrics["holdout_gain_macro_f1"] == pytest.approx(
        metrics["holdout_fine_tuned_macro_f1"] - metrics["holdout_out_of_the_box_macro_f1"], abs=1e-6)
    assert run.info.run_name == f"alice-FedAvg-{run.info.run_id[:6]}"
    assert run.data.tags["mlflow.user"] == "alice" and run.data.tags["mlflow.source.git.commit"]
    experiment = MlflowClient(uri).get_experiment(run.info.experiment_id)
    assert "holdout_fine_tuned_macro_f1" in experiment.tags["mlflow.note.content"]
    # the printed link opens the view stored in the experiment: the board's columns, best first
    [key] = re.findall(rf"#/experiments/{run.info.experiment_id}/runs\?viewStateShareKey=([\w-]+)", stdout)
    view = json.loads(experiment.tags[f"mlflow.sharedViewState.{key}"])
    assert view["orderByKey"] == "metrics.`holdout_fine_tuned_macro_f1`" and view["orderByAsc"] is False
    assert {"metrics.`holdout_gain_macro_f1`", "metrics.`holdout_fine_tuned_recall_fast`",
            "tags.`cohortfl.contributor`"} <= set(view["selectedColumns"])


def test_no_cohort_rows_reach_mlflow(finished_run):
    uri, run, tmp, _ = finished_run
    client = MlflowClient(uri)
    # the cohort is logged as a dataset by digest, columns and split sizes: no row, no path
    [given] = run.inputs.dataset_inputs
    assert given.dataset.digest == run.data.params["cohort_digest"][:36]
    assert json.loads(given.dataset.profile) == {"n_train": int(run.data.params["n_train"]),
                                                 "n_holdout": int(run.data.params["n_holdout"])}
    columns = [c["name"] for c in json.loads(given.dataset.schema)["mlflow_colspec"]]
    assert columns == list(SCHEMA.feature_columns)
    assert str(tmp) not in given.dataset.source
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert artifacts == {"holdout_confusion_matrix.png", "holdout_importance.png",
                         "holdout_importance.json", "submission.json"}
    # importance is one aggregate row per group, never per record; per feature stays on the node
    table = json.loads(Path(client.download_artifacts(run.info.run_id, "holdout_importance.json",
                                                      str(tmp))).read_text())
    assert table["columns"] == ["feature", "mean", "sd"]
    assert {row[0] for row in table["data"]} == {"gene", "clinical", "signature", "sex", "onset"}
    kept = json.loads((tmp / "node-state" / "importance" / f"{run.info.run_id}.json").read_text())
    assert {"gene_0", "clinical_28", "gene"} <= set(kept)
    assert len(kept) == len(SCHEMA.feature_columns) + 3  # + genes, clinical, signatures


def test_leaderboard_command_reads_the_store(finished_run):
    uri, run, tmp, _ = finished_run
    shown = cohortfl("leaderboard", "--tracking-uri", uri, cwd=tmp)
    assert shown.returncode == 0, shown.stderr
    header, _, row = shown.stdout.splitlines()[:3]
    assert "out of the box" in header and "after fine-tuning" in header and "compute (PF)" in header
    assert row.split()[:3] == ["alice", "FedAvg", "linear"]
    assert f"{run.data.metrics['holdout_fine_tuned_macro_f1']:.3f}" in row
    narrow = cohortfl("leaderboard", "--tracking-uri", uri, cwd=tmp, columns=80)  # the terminal's width
    assert max(len(line) for line in narrow.stdout.splitlines()) <= 80
    assert "after fine-tuning" in narrow.stdout and "Left out at 80 columns: model," in narrow.stdout


def test_leaderboard_as_csv_or_json_and_without_importing_an_engine(finished_run):
    uri, run, tmp, _ = finished_run
    shown = cohortfl("leaderboard", "--tracking-uri", uri, "--format", "json", cwd=tmp)
    [record] = json.loads(shown.stdout)
    assert record["run_id"] == run.info.run_id and record["contributor"] == "alice"
    assert record["fine_tuned_macro_f1"] == run.data.metrics["holdout_fine_tuned_macro_f1"]
    assert record["fine_tuned_macro_f1_ci95_low"] < record["fine_tuned_macro_f1"]
    rows = cohortfl("leaderboard", "--tracking-uri", uri, "--format", "csv", cwd=tmp).stdout.splitlines()
    assert rows[0].startswith("contributor,strategy,model,run_id") and len(rows) == 2
    probe = subprocess.run([sys.executable, "-c", "import sys; from server.cli import main; "
                            f"main(['leaderboard', '--tracking-uri', '{uri}']); "
                            "print('loaded', 'torch' in sys.modules, 'flwr' in sys.modules)"],
                           cwd=tmp, capture_output=True, text=True, timeout=120)
    assert probe.stdout.strip().endswith("loaded False False"), probe.stdout[-500:] + probe.stderr
    budget = cohortfl("budget", "--contributor", "alice", "--tracking-uri", uri, cwd=tmp)
    assert "submissions        1 of 5 used, 4 left" in budget.stdout, budget.stdout + budget.stderr
    assert "privacy (epsilon)" in budget.stdout
    version = cohortfl("--version", cwd=tmp)
    assert version.returncode == 0 and version.stdout.startswith("cohortfl ")


def test_leaderboard_on_a_store_that_does_not_exist_says_so_and_creates_none(tmp_path):
    shown = cohortfl("leaderboard", "--tracking-uri", f"sqlite:///{tmp_path}/empty.db", cwd=tmp_path)
    assert shown.returncode == 2 and "no MLflow store" in shown.stderr
    assert not (tmp_path / "empty.db").exists()


def test_leaderboard_on_a_store_without_the_experiment_says_so(finished_run):
    uri, _, tmp, _ = finished_run
    shown = cohortfl("leaderboard", "--tracking-uri", uri, "--experiment", "nobody", cwd=tmp)
    assert shown.returncode == 2 and "no experiment" in shown.stderr


def test_federated_with_one_node_matches_central_training(finished_run):
    """Same seed, epochs and batches: FedAvg over one node is central DP-SGD, round by round."""
    uri, run, tmp, _ = finished_run
    settings = NodeSettings(data_path=str(tmp / "cohort.parquet"), tracking_uri=uri,
                            state_dir=str(tmp / "node-state"), device="cpu")
    node = ResidentCohort(settings)
    model = build_model(ModelSpec("linear"), node.standard.pipeline.n_features, 3, seed=0)
    meter, secret = FlopMeter(), (tmp / "node-state" / "secret").read_bytes()
    for server_round in range(1, ROUNDS + 1):  # the node's batches and noise, from its own secret
        seed = round_seed(secret, run.info.run_id, server_round)
        train_local_dp(model, node.standard.x_train, node.y_train,
                       TrainConfig(lr=LR, local_epochs=1, batch_size=32, server_round=server_round,
                                   seed=seed), meter, settings.policy.privacy)
    central = score_predictions(node.y_holdout.numpy(), predict(model, node.standard.x_holdout).numpy(),
                                node.classes)
    assert np.isclose(central.macro_f1, run.data.metrics["holdout_fine_tuned_macro_f1"], atol=1e-9)
    assert meter.total == run.data.metrics["compute_flops"]


def test_progress_and_ui_hint_are_printed(finished_run):
    *_, stdout = finished_run
    assert f"round {ROUNDS}/{ROUNDS}" in stdout
    assert "[alice] engine starting" in stdout and "\x1b[" not in stdout  # no terminal escape codes
    assert "mlflow ui --backend-store-uri" in stdout


def test_no_engine_process_is_left_running(finished_run):
    assert engine_processes_after(10) == ""


def test_a_strategy_the_node_refuses_fails_the_run_with_the_rule_name(tmp_path):
    """FedProx asking for a proximal term above policy: the node refuses every round."""
    done = cohortfl("run", "strategy=fedprox", "strategy.proximal_mu=100", "contributor=mallory",
                    "workspace.num_rounds=2", f"output_dir={tmp_path}", cwd=tmp_path)
    assert done.returncode == 1
    assert "refused by rule 'proximal-mu-range'" in done.stderr
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    [run] = client.search_runs([client.get_experiment_by_name("cohortfl-leaderboard").experiment_id])
    assert run.info.status == "FAILED" and "proximal-mu-range" in run.data.tags["cohortfl.error"]
    assert "holdout_out_of_the_box_macro_f1" in run.data.metrics
    assert "holdout_fine_tuned_macro_f1" not in run.data.metrics


@pytest.mark.parametrize("args, message", [
    (["model=nonexistent"], "Could not find 'model/nonexistent'"),
    (["workspace.no_such_key=1"], "Could not override 'workspace.no_such_key'"),
    (["lr=100"], "refused by rule 'lr-range'"),
    (["workspace.num_rounds=99"], "refused by rule 'rounds-range'"),
    (["lr=abc"], "lr='abc': lr must be a number"),
    (["batch_size=1.5"], "batch_size=1.5: batch_size must be a whole number"),
])
def test_bad_input_is_refused_before_any_run_with_a_clear_message(tmp_path, args, message):
    done = cohortfl("run", *args, f"output_dir={tmp_path}", cwd=tmp_path)
    assert done.returncode == 2 and message in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "mlflow.db").exists() or "FINISHED" not in done.stdout


def test_the_export_ledger_lists_every_reply_and_only_whitelisted_records(finished_run):
    uri, run, tmp, _ = finished_run
    shown = cohortfl("exports", "--contributor", "alice", "--state-dir", str(tmp / "node-state"),
                     cwd=tmp)
    assert shown.returncode == 0, shown.stderr
    assert f"{ROUNDS + 2} replies" in shown.stdout  # out of the box, each round, final
    from client.ledger import NodeLedger

    rows = NodeLedger(tmp / "node-state" / "ledger.sqlite").exports("alice")
    assert [r.message_type for r in rows] == (
        ["query.holdout_out_of_the_box"] + ["train"] * ROUNDS + ["query.holdout_fine_tuned"])
    allowed = {"arrays/linear.weight", "arrays/linear.bias", "metrics/train-loss",
               "metrics/num-examples", "metrics/compute-flops", "metrics/device-seconds",
               "metrics/recorded"}
    assert all(set(r.keys) <= allowed for r in rows)
    assert all(r.run_id == run.info.run_id for r in rows)


def test_the_official_run_shows_budget_and_submissions(finished_run):
    _, run, _, _ = finished_run
    metrics = run.data.metrics
    assert metrics["budget_submissions_used"] == 1 and metrics["budget_submissions_limit"] == 5
    assert metrics["budget_compute_pf"] == 100.0
    assert metrics["budget_compute_used_pf"] == metrics["compute_pf"]


def test_the_scaffold_writes_a_package_that_runs_and_reaches_the_board(tmp_path):
    """`cohortfl new` as the README tells a newcomer: the package runs unmodified."""
    made = cohortfl("new", "mine", cwd=tmp_path)
    assert made.returncode == 0 and "cohortfl submit mine --contributor" in made.stdout
    assert cohortfl("new", "mine", cwd=tmp_path).returncode == 2  # never overwrites
    done = cohortfl("submit", "mine", "--contributor", "ada", "workspace.num_rounds=2",
                    f"output_dir={tmp_path}", cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    board = cohortfl("leaderboard", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--format", "json",
                     cwd=tmp_path)
    [row] = json.loads(board.stdout)
    assert row["contributor"] == "ada" and row["strategy"] == "WarmRestartFedAvg"
