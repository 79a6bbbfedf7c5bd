"""The second synthetic disease (synthetic/myopathy.py): its table fits its own data dictionary, its
laboratory values are lognormal, and its posterior is exact: calibrated overall and inside every
group of the modifiers it claims to account for."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import skew

from client.cohort import load_cohort, validate_frame
from contract.dictionary import DataDictionary
from synthetic.myopathy import (
    ANTIBODIES,
    CLASS_SHARES,
    CLASSES,
    LABEL,
    LABS,
    generate_myopathy,
    myopathy,
    myopathy_gene_sets,
    true_posterior,
)

DICTIONARY = Path(__file__).parents[1] / "conf" / "dictionary" / "myopathy.yaml"


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return generate_myopathy(seed=0)


@pytest.fixture(scope="module")
def large() -> pd.DataFrame:
    return generate_myopathy(seed=12_345, n_records=20_000)


def test_the_table_fits_its_own_dictionary_and_loads_as_a_cohort(frame, tmp_path):
    schema = DataDictionary.from_yaml(DICTIONARY).resolve(list(frame.columns))
    validate_frame(frame, schema)
    assert schema.classes == CLASSES and schema.reported_class == "refractory"
    assert len(schema.groups.gene_columns()) == 300 and not schema.groups.columns(schema.groups.signatures)
    frame.to_csv(tmp_path / "myopathy.csv", index=False)
    cohort = load_cohort(tmp_path / "myopathy.csv", DICTIONARY)
    assert len(cohort.frame) == 640 and cohort.schema == schema


def test_class_counts_are_exact_and_the_same_seed_gives_the_same_table(frame):
    expected = np.floor(np.array(CLASS_SHARES) * 640).astype(int)
    expected[0] += 640 - expected.sum()
    assert frame[LABEL].value_counts().reindex(CLASSES).tolist() == expected.tolist()
    pd.testing.assert_frame_equal(generate_myopathy(seed=0), frame)
    assert not generate_myopathy(seed=1)[list(LABS)].equals(frame[list(LABS)])


def test_laboratory_values_are_lognormal(frame):
    for column in ("ck_u_l", "crp_mg_l", "myoglobin_ng_ml"):
        values = frame[column].to_numpy()
        assert (values > 0).all()
        assert skew(values) > 2 and abs(skew(np.log(values))) < 0.3


def test_public_gene_sets_are_partial_views_of_the_programmes():
    truth = myopathy()
    modules = [{truth.genes[g] for g in m} for m in truth.modules]
    sets = myopathy_gene_sets()
    best = [max(len(set(genes) & m) / len(genes) for m in modules) for genes in sets.values()]
    assert len(sets) == 36 and sum(b > 0.6 for b in best) == 16   # two views of each of 8 programmes
    assert max(best) < 1.0                                         # none is a true module


def test_the_posterior_is_calibrated_overall_and_in_every_modifier_group(large):
    """Mean predicted probability = observed frequency, in the whole draw and within each sex and
    antibody group (where the score's weights and noise differ): a posterior that left out a modifier
    would miss in its groups."""
    posterior = true_posterior(large)
    np.testing.assert_allclose(posterior.sum(axis=1), 1.0, atol=1e-9)
    observed = pd.get_dummies(pd.Categorical(large[LABEL], categories=CLASSES)).to_numpy(float)
    groups = {"all": np.ones(len(large), bool)}
    groups |= {f"sex={s}": (large["sex"] == s).to_numpy() for s in ("F", "M")}
    groups |= {f"antibody={a}": (large["antibody"] == a).to_numpy() for a in ANTIBODIES}
    for name, rows in groups.items():
        predicted, seen = posterior[rows].mean(axis=0), observed[rows].mean(axis=0)
        tolerance = 4 * np.sqrt(seen * (1 - seen) / rows.sum()) + 0.005
        assert (np.abs(predicted - seen) < tolerance).all(), (name, predicted.round(3), seen.round(3))
    top = posterior.max(axis=1) > 0.9                       # confident predictions are right that often
    assert (posterior.argmax(axis=1) == observed.argmax(axis=1))[top].mean() > 0.9


def test_the_external_centre_is_another_population(frame):
    external = generate_myopathy(seed=3, n_records=3_000, external=True)
    assert list(external.columns) == list(frame.columns)
    shares = external[LABEL].value_counts(normalize=True).reindex(CLASSES).to_numpy()
    assert np.abs(shares - np.array(CLASS_SHARES)).max() > 0.03
    assert (external["antibody"] == "anti-Jo1").mean() > 0.4 > (frame["antibody"] == "anti-Jo1").mean()


def test_an_experts_declaration_runs_on_the_node_under_its_pilot_rules(tmp_path):
    """The second disease at the node, from its dictionary, under the pilot policy (DP on, metering,
    reply whitelist): an ordinal linear model on pc1 gene-set scores, log labs and a categorical
    modifier trains a round whose reply is its own weights and whitelisted metrics, and the board's
    reported class is the dictionary's."""
    from flwr.app import ArrayRecord, ConfigRecord, RecordDict
    from mlflow.tracking import MlflowClient
    from runs import node_run

    from client.node import Node, check_cohort
    from client.settings import CONF_DIR, NodeSettings, load_policy
    from contract.names import TRAIN_REPLY_KEYS, Tag
    from models import ModelSpec
    from models.pipeline import FeatureSpec

    path = tmp_path / "myopathy.parquet"
    generate_myopathy(seed=0).to_parquet(path, index=False)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    experiment = MlflowClient(uri).create_experiment("m", artifact_location=str(tmp_path / "artifacts"))
    settings = NodeSettings(data_path=str(path), tracking_uri=uri, state_dir=str(tmp_path / "state"),
                            device="cpu", dictionary=str(DICTIONARY),
                            policy=load_policy(CONF_DIR / "policy" / "pilot.yaml"))
    assert settings.policy.dp_enabled
    schema = check_cohort(settings)
    node = Node(settings)
    features = FeatureSpec(gene_sets={k: tuple(v) for k, v in myopathy_gene_sets().items()},
                           gene_set_score="pc1", raw=("clinical", "labs"), transforms={"labs": ("log1p",)},
                           interactions=("age_years", "sex=M", "antibody=anti-Jo1"),
                           interaction_left="gene_sets")
    run = node_run(contributor="D", submission_id=MlflowClient(uri).create_run(experiment).info.run_id,
                   model=ModelSpec("linear", {"head": "ordinal", "l1": 0.002}), num_rounds=1,
                   features=features, cohort_schema=schema.to_json())
    initial = ArrayRecord({k: v.detach() for k, v in node.build(run)[0].state_dict().items()})
    node.score_out_of_the_box(RecordDict({"arrays": initial}), run)
    reply = node.train(RecordDict({"arrays": initial, "config": ConfigRecord(
        {"lr": 0.1, "local-epochs": 1, "batch-size": 32, "server-round": 1})}), run)
    assert set(reply["arrays"].keys()) == set(initial.keys())
    assert set(reply["metrics"].keys()) <= TRAIN_REPLY_KEYS
    node.score_fine_tuned(RecordDict({"arrays": reply["arrays"]}), run)
    recorded = MlflowClient(uri).get_run(run.submission_id).data
    assert recorded.tags[Tag.REPORTED_CLASS] == "refractory"
    assert 0.0 <= recorded.metrics["holdout_fine_tuned_recall_refractory"] <= 1.0
    assert recorded.metrics["holdout_fine_tuned_macro_f1"] > 0.25   # above chance for four classes


def test_the_second_diseases_demo_composes_its_own_references(tmp_path):
    from server.config import load_job

    job = load_job(["cohort=myopathy", "demo=myopathy", f"output_dir={tmp_path}"], demo=True)
    assert job.workspace.synthetic_disease == "myopathy" and Path(job.node.dictionary) == DICTIONARY
    entries = {e.submission.contributor: e for e in job.entries}
    assert set(entries) == {"internal", "D", "E"}
    for name in ("D", "E"):
        submission = entries[name].submission
        assert submission.model.params["head"] == "ordinal" and "sex=M" in submission.features.interactions
    assert entries["E"].pretraining.disease == "myopathy" and entries["D"].pretraining is None


@pytest.mark.slow
def test_the_second_disease_runs_end_to_end_through_flower(tmp_path):
    """``cohortfl demo cohort=myopathy demo=myopathy`` on Flower's simulation engine, a real SQLite
    MLflow store and the pilot policy (DP on): every reference finishes and the board reports the
    dictionary's class."""
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr-home"), "COLUMNS": "200"}
    done = subprocess.run([sys.executable, "-m", "server.cli", "demo", "cohort=myopathy", "demo=myopathy",
                           f"output_dir={tmp_path / 'out'}", "workspace.num_rounds=3"],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    board = subprocess.run([sys.executable, "-m", "server.cli", "leaderboard", "--tracking-uri",
                            f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}", "--format", "json"],
                           capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    rows = {r["contributor"]: r for r in json.loads(board.stdout)}
    assert set(rows) == {"internal", "D", "E"}
    for row in rows.values():
        assert 0.0 < row["fine_tuned_macro_f1"] <= 1.0 and "refractory_recall" in row
