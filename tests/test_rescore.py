"""A cohort that grows: the node numbers each cohort file it serves, keeps each closed run's
weights, and ``cohortfl rescore`` scores them on the new version's holdout as a new run the board
shows with its version. A version whose holdout differs from an earlier one's in fewer than k
records is refused: the attacker below learns a new patient's outcome from the difference of one
model's two scores when the rule is off."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
from flwr.app import ArrayRecord, ConfigRecord, RecordDict
from mlflow.tracking import MlflowClient
from runs import node_run

from client.cohort import _unit_hash
from client.errors import PolicyViolation
from client.node import Node
from client.policy import NodePolicy
from client.rescore import rescore
from client.settings import NodeSettings
from contract.names import Tag
from models import ModelSpec
from server.leaderboard import format_leaderboard, read_leaderboard
from synthetic.disease import generate_cohort

FRACTION = 0.25


@pytest.fixture
def grown(tmp_path) -> tuple[NodeSettings, dict[str, Path], str]:
    """Version 1 (the first 440 records) and version 2 (all 640) of one cohort, a node settings
    for version 1, and a finished run on it."""
    full = generate_cohort(0)
    files = {"v1": tmp_path / "v1.parquet", "v2": tmp_path / "v2.parquet"}
    full.iloc[:440].to_parquet(files["v1"])
    full.to_parquet(files["v2"])
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    MlflowClient(uri).create_experiment("grow", artifact_location=str(tmp_path / "artifacts"))
    settings = NodeSettings(data_path=str(files["v1"]), tracking_uri=uri, device="cpu",
                            state_dir=str(tmp_path / "node-state"), holdout_fraction=FRACTION,
                            policy=NodePolicy(dp_enabled=False))
    return settings, files, _finished_run(Node(settings), "alice")


def _finished_run(node: Node, contributor: str) -> str:
    client = MlflowClient(node.settings.tracking_uri)
    experiment = client.get_experiment_by_name("grow").experiment_id
    run = node_run(contributor, client.create_run(experiment, run_name=f"{contributor}-FedAvg").info.run_id,
                   ModelSpec("linear"))
    initial = ArrayRecord({k: v.detach() for k, v in node.build(run)[0].state_dict().items()})
    node.score_out_of_the_box(RecordDict({"arrays": initial}), run)
    reply = node.train(RecordDict({"arrays": initial, "config": ConfigRecord(
        {"lr": 0.05, "local-epochs": 2, "batch-size": 32, "server-round": 1})}), run)
    node.score_fine_tuned(RecordDict({"arrays": reply["arrays"]}), run)
    client.set_terminated(run.submission_id, "FINISHED")  # what the workspace does after
    return run.submission_id


def test_a_new_version_is_numbered_and_past_runs_are_rescored_on_it(grown):
    settings, files, run_id = grown
    client = MlflowClient(settings.tracking_uri)
    assert client.get_run(run_id).data.params["cohort_version"] == "1"
    grown_node = Node(replace(settings, data_path=str(files["v2"])))
    assert grown_node.cohort_version == 2
    assert Node(settings).cohort_version == 1  # the same file keeps its number

    said: list[str] = []
    [result] = rescore(grown_node, say=said.append)
    assert not result.skipped and "v2" in said[-1]
    new = client.get_run(result.rescore_run_id)
    assert new.info.status == "FINISHED" and new.data.tags[Tag.RESCORE_OF] == run_id
    assert new.info.run_name == "alice-FedAvg@v2"
    assert new.data.params["cohort_version"] == "2"
    assert int(new.data.params["n_holdout"]) == len(grown_node.cohort.y_holdout) > 110
    # the score is the kept final weights' on the new holdout, whoever computes it
    _, model, view = grown_node.kept_model(run_id, "final")
    expected = grown_node.score(grown_node.predict_holdout(model, view), "x").macro_f1
    assert new.data.metrics["holdout_fine_tuned_macro_f1"] == pytest.approx(expected)
    assert new.data.metrics["compute_flops"] == client.get_run(run_id).data.metrics["compute_flops"]

    # once per run and version
    [again] = rescore(grown_node, say=said.append)
    assert again.skipped.startswith("rescored as") and again.rescore_run_id == result.rescore_run_id

    # the board: newest version first, the version in its own column
    rows = read_leaderboard(settings.tracking_uri, "grow")
    assert [(r.cohort_version, r.rescore_of) for r in rows] == [("2", run_id), ("1", "")]
    table = format_leaderboard(rows, width=250)
    assert "v2*" in table and "v1" in table and "cohort" in table.splitlines()[0]


def test_rescore_from_the_command_line_on_a_grown_demo_file(grown, tmp_path):
    settings, files, run_id = grown
    overrides = ["cohort=file", f"cohort.path={files['v2']}", f"cohort.holdout_fraction={FRACTION}",
                 f"output_dir={Path(settings.state_dir).parent}",
                 f"tracking.uri={settings.tracking_uri}"]
    done = subprocess.run([sys.executable, "-m", "server.cli", "rescore", *overrides],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "cohort version 2" in done.stdout and "1 run(s) rescored" in done.stdout
    unknown = subprocess.run([sys.executable, "-m", "server.cli", "rescore", "--run", "nope", *overrides],
                             capture_output=True, text=True, timeout=300)
    assert unknown.returncode == 2 and "keeps no final weights of run(s) ['nope']" in unknown.stderr


def _one_more_holdout_record(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` plus one new patient whose id puts it in the holdout."""
    newcomers = generate_cohort(1)
    for i in range(len(newcomers)):
        if _unit_hash(0, newcomers.loc[i, "patient_id"]) < FRACTION:
            return pd.concat([frame, newcomers.iloc[[i]]], ignore_index=True)
    raise AssertionError("no newcomer falls in the holdout")


@pytest.mark.parametrize("defended", [True, False])
def test_one_new_holdout_record_cannot_be_read_off_two_scores(grown, tmp_path, defended):
    """The attacker: a model scored on version 2 and again on version 3, whose holdout has one
    more patient; accuracy x holdout size counts the records it gets right, so the difference
    says whether it got the newcomer right, a fact about one patient (with a model built to
    threshold one feature, that feature's side)."""
    settings, files, run_id = grown
    v2 = replace(settings, data_path=str(files["v2"]))
    if not defended:
        settings = replace(settings, policy=replace(settings.policy, eda_min_cell=1))
        v2 = replace(v2, policy=settings.policy)
    v3_path = tmp_path / "v3.parquet"
    _one_more_holdout_record(pd.read_parquet(files["v2"])).to_parquet(v3_path)
    v3 = replace(v2, data_path=str(v3_path))
    node_v2 = Node(v2)
    [on_v2] = rescore(node_v2, say=lambda _: None)
    if defended:
        with pytest.raises(PolicyViolation, match="cohort-version-change.*in 1 record"):
            Node(v3)
        return
    node_v3 = Node(v3)
    runs_v3 = rescore(node_v3, say=lambda _: None)
    client = MlflowClient(settings.tracking_uri)

    def right(run: str) -> int:
        data = client.get_run(run).data
        return round(data.metrics["holdout_fine_tuned_accuracy"] * int(data.params["n_holdout"]))

    [on_v3] = [r for r in runs_v3 if not r.skipped]
    learned = right(on_v3.rescore_run_id) - right(on_v2.rescore_run_id)
    # the truth, computed on the node: did the kept model predict the newcomer right?
    [newcomer] = set(node_v3.cohort.holdout_ids) - set(node_v2.cohort.holdout_ids)
    at = node_v3.cohort.holdout_ids.index(newcomer)
    _, model, view = node_v3.kept_model(run_id, "final")
    right_on_newcomer = node_v3.predict_holdout(model, view)[at] == node_v3.cohort.y_holdout[at].item()
    assert learned == int(right_on_newcomer)  # the attack wins: one patient's fact, read off the board


def test_a_run_is_not_rescored_on_records_it_trained_on(grown):
    """A holdout by size is drawn again for each version: records version 1 trained on land in
    version 2's holdout, and the old model would be scored on what it learned."""
    settings, files, run_id = grown
    redrawn = Node(replace(settings, data_path=str(files["v2"]), holdout_fraction=None, holdout_size=160))
    [result] = rescore(redrawn, say=lambda _: None)
    assert "were in the training split the run trained on (cohort version 1)" in result.skipped
    assert not result.rescore_run_id
