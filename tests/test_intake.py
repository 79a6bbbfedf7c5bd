"""Submission packages: refused before any of their code runs; accepted ones run for real."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from contract.submission import Submission
from models import ModelSpec, build_model
from server.errors import PackageRefused
from server.intake import FILE_LIMITS, load_package

STRATEGY = '''
"""FedAvg with a learning-rate warm-up over the first rounds."""

from flwr.app import ConfigRecord
from flwr.serverapp.strategy import FedAvg


class FedAvgWarmup(FedAvg):
    def __init__(self, warmup_rounds: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.warmup_rounds = warmup_rounds

    def configure_train(self, server_round, arrays, config, grid):
        config = ConfigRecord(dict(config))
        if server_round <= self.warmup_rounds:
            config["lr"] = float(config["lr"]) * server_round / (self.warmup_rounds + 1)
        return super().configure_train(server_round, arrays, config, grid)
'''
SUBMISSION = {"strategy": {"_target_": "contributor.FedAvgWarmup", "fraction_evaluate": 0.0,
                           "warmup_rounds": 2},
              "model": {"name": "linear"}, "lr": 0.1, "batch_size": 32, "seed": 3}


def make_package(folder: Path, submission: dict | None = None, strategy: str | None = STRATEGY,
                 weights_seed: int | None = 42) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "submission.yaml").write_text(yaml.safe_dump(submission or SUBMISSION))
    if strategy is not None:
        (folder / "strategy.py").write_text(strategy)
    if weights_seed is not None:
        model = build_model(ModelSpec("linear"), 255, 3, seed=weights_seed)
        np.savez(folder / "initial.npz", **{k: v.numpy() for k, v in model.state_dict().items()})
    return folder


def load(folder: Path):
    return load_package(folder, "ada", local_epochs=1, num_rounds=3, max_weight_bytes=10**6)


def test_a_package_becomes_a_submission_whose_identity_comes_from_the_workspace(tmp_path):
    submission = load(make_package(tmp_path / "p"))
    assert submission.contributor == "ada" and submission.num_rounds == 3
    assert "class FedAvgWarmup" in submission.strategy_source and submission.initial_weights


@pytest.mark.parametrize("name", ["client_app.py", "pyproject.toml", "task.py", "model.pt"])
def test_extra_files_are_refused(tmp_path, name):
    folder = make_package(tmp_path / "p")
    (folder / name).write_text("x")
    with pytest.raises(PackageRefused, match=f"'package-files'.*{name}"):
        load(folder)


def test_a_subfolder_is_refused(tmp_path):
    folder = make_package(tmp_path / "p")
    (folder / "client").mkdir()
    with pytest.raises(PackageRefused, match="'package-files'"):
        load(folder)


@pytest.mark.parametrize("line", [
    "from flwr.clientapp import ClientApp",
    "import flwr.clientapp",
    "from client.node import Node",
    "import client.app as node_app",
    "app = ClientApp()",
    "from flwr.simulation import run_simulation",
])
def test_client_side_code_in_the_strategy_is_refused(tmp_path, line, monkeypatch):
    imported = []
    monkeypatch.setattr("builtins.__import__", _spy(imported))
    folder = make_package(tmp_path / "p", strategy=STRATEGY + "\n" + line + "\n")
    with pytest.raises(PackageRefused, match="'no-client-code'"):
        load(folder)
    assert "contributor" not in imported  # the strategy was read, never imported


def _spy(imported: list[str]):
    real = __import__

    def spy(name, *args, **kwargs):
        imported.append(name)
        return real(name, *args, **kwargs)

    return spy


@pytest.mark.parametrize("target", ["os.system", "client.app.build_client_app",
                                    "contributor.FedAvgWarmup"])
def test_targets_outside_the_allowed_packages_are_refused(tmp_path, target):
    submission = {**SUBMISSION, "strategy": {"_target_": target}}
    strategy = None if target.startswith("contributor.") else STRATEGY  # contributor.* needs a module
    with pytest.raises(PackageRefused, match="'strategy-target'"):
        load(make_package(tmp_path / "p", submission, strategy=strategy))


def test_a_package_carries_its_feature_spec_and_gene_set_prior(tmp_path):
    features = {"gene_sets": {"mine": ["gene_1", "gene_2"]}, "gene_set_score": "pc1",
                "raw": ["clinical", "signature"]}
    submission = load(make_package(tmp_path / "p", {**SUBMISSION, "features": features}, weights_seed=None))
    assert submission.features.gene_sets == {"mine": ("gene_1", "gene_2")}
    assert submission.features.gene_set_score == "pc1"
    assert Submission.from_run_config(submission.to_run_config()).features == submission.features


@pytest.mark.parametrize("change, rule", [
    ({"contributor": "someone-else"}, "submission-keys"),  # identity is not the package's to say
    ({"record_ids": [1, 2]}, "submission-keys"),
    ({"features": {"rows": [1, 2]}}, "feature-spec"),
    ({"features": {"gene_set_score": "import os"}}, "feature-spec"),
])
def test_unknown_submission_keys_are_refused(tmp_path, change, rule):
    with pytest.raises(PackageRefused, match=f"'{rule}'"):
        load(make_package(tmp_path / "p", {**SUBMISSION, **change}))


def test_weights_that_are_not_an_npz_or_too_large_are_refused(tmp_path):
    folder = make_package(tmp_path / "p")
    with pytest.raises(PackageRefused, match="'max-array-bytes'"):
        load_package(folder, "ada", 1, 3, max_weight_bytes=100)
    (folder / "initial.npz").write_bytes(b"not an archive")
    with pytest.raises(PackageRefused, match="'initial-weights'"):
        load(folder)


@pytest.mark.parametrize("strategy", [
    {"_target_": "flwr.serverapp.strategy.fedavg.time.sleep", "secs": 1},  # through a module
    {"_target_": "flwr.serverapp.strategy.FedAvg",
     "train_metrics_aggr_fn": {"_target_": "os.system", "command": "id"}},  # nested
    {"_target_": "flwr.serverapp.strategy.DifferentialPrivacyClientSideFixedClipping",
     "strategy": {"_target_": "contributor.Mine"}},  # contributor code only at the top
])
def test_every_target_must_be_a_strategy_class_of_an_allowed_package(tmp_path, strategy):
    folder = make_package(tmp_path / "p")
    declared = yaml.safe_load((folder / "submission.yaml").read_text())
    (folder / "submission.yaml").write_text(yaml.safe_dump({**declared, "strategy": strategy}))
    with pytest.raises(PackageRefused, match="'strategy-target'"):
        load(folder)


def test_sizes_are_refused_before_reading_and_an_npz_bomb_before_inflating(tmp_path):
    folder = make_package(tmp_path / "p")
    with (folder / "strategy.py").open("a") as handle:  # 101 MB of source used to be read
        handle.truncate(FILE_LIMITS["strategy.py"] + 1)
    with pytest.raises(PackageRefused, match="'package-size'"):
        load(folder)
    folder = make_package(tmp_path / "q")
    buffer = io.BytesIO()
    np.savez_compressed(buffer, w=np.zeros(2**25, dtype=np.float32))  # 128 MiB of zeros
    assert len(buffer.getvalue()) < 2**20
    (folder / "initial.npz").write_bytes(buffer.getvalue())
    with pytest.raises(PackageRefused, match="'max-array-bytes'.*inflates"):
        load_package(folder, "ada", 1, 3, max_weight_bytes=2**20)


def test_a_package_runs_end_to_end_with_its_own_strategy_and_weights(tmp_path):
    folder = make_package(tmp_path / "pkg")
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr-home")}
    done = subprocess.run([sys.executable, "-m", "server.cli", "submit", str(folder), "--contributor",
                           "ada", "workspace.num_rounds=3", f"output_dir={tmp_path}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    [run] = client.search_runs([client.get_experiment_by_name("cohortfl-leaderboard").experiment_id])
    assert run.data.params["strategy"] == "FedAvgWarmup" and run.data.params["contributor"] == "ada"
    assert run.data.params["strategy_source_sha256"] != "none"

    # the out-of-the-box score is the package's weights' score, not a fresh draw's
    from client.holdout import score_predictions
    from client.node import ResidentCohort
    from client.settings import NodeSettings
    from client.training import predict

    cohort = ResidentCohort(NodeSettings(data_path=str(tmp_path / "cohort.parquet"),
                                         tracking_uri="unused", state_dir=str(tmp_path / "s"),
                                         device="cpu"))
    model = build_model(ModelSpec("linear"), 255, 3, seed=42)
    expected = score_predictions(cohort.y_holdout.numpy(), predict(model, cohort.standard.x_holdout).numpy(),
                                 cohort.classes)
    assert run.data.metrics["holdout_out_of_the_box_macro_f1"] == pytest.approx(expected.macro_f1)


def test_the_simulation_engine_runs_contributor_code_only_against_the_synthetic_cohort(tmp_path):
    """The simulation engine hosts the ServerApp in the node's process tree: against a cohort
    file, a strategy.py is refused before any engine starts (and nothing of it runs)."""
    folder = make_package(tmp_path / "pkg")
    (folder / "strategy.py").write_text((folder / "strategy.py").read_text()
                                        + f"\nopen({str(tmp_path / 'ran')!r}, 'w').close()\n")
    from synthetic.disease import generate_cohort

    generate_cohort(0).to_parquet(tmp_path / "records.parquet", index=False)
    done = subprocess.run([sys.executable, "-m", "server.cli", "submit", str(folder), "--contributor",
                           "ada", "cohort=file", f"cohort.path={tmp_path / 'records.parquet'}",
                           f"output_dir={tmp_path}"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2 and "only against the synthetic cohort" in done.stderr
    assert not (tmp_path / "ran").exists()
