"""A second, differently shaped cohort (synthetic/registry.py: Ensembl gene ids, other clinical
names, no signatures, other categoricals and classes, missing cells) runs from its own data
dictionary (conf/dictionary/registry.yaml): at the node directly, and (slow) end to end through
``cohortfl run`` on Flower's engine at full scale, 6,400 records and 20,000 genes, with the pilot's
reference methods rewritten against the dictionary."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, RecordDict
from mlflow.tracking import MlflowClient
from runs import node_run

from client.errors import PolicyViolation
from client.node import Node, check_cohort
from client.policy import NodePolicy
from client.settings import NodeSettings
from contract.names import Tag
from contract.schema import SCHEMA
from models import ModelSpec
from models.pipeline import FeatureSpec
from synthetic.registry import registry_gene_sets

ROOT = Path(__file__).parents[1]
DICTIONARY = ROOT / "conf" / "dictionary" / "registry.yaml"
INTERACTIONS = ["disease_stage", "functional_score", "treatment_lines"]  # the demo's clinical_0, 1, 3


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> tuple[NodeSettings, Path]:
    from synthetic.registry import generate_registry

    root = tmp_path_factory.mktemp("registry")
    path = root / "registry.parquet"
    generate_registry(0, n_records=1280, n_genes=1000).to_parquet(path)
    uri = f"sqlite:///{root}/mlflow.db"
    MlflowClient(uri).create_experiment("registry", artifact_location=str(root / "artifacts"))
    return NodeSettings(data_path=str(path), tracking_uri=uri, state_dir=str(root / "node-state"),
                        device="cpu", dictionary=str(DICTIONARY), policy=NodePolicy(dp_enabled=False)), root


def _content(arrays: ArrayRecord) -> RecordDict:
    return RecordDict({"arrays": arrays, "config": ConfigRecord(
        {"lr": 0.05, "local-epochs": 1, "batch-size": 32, "server-round": 1})})


def test_the_node_serves_the_registry_from_its_dictionary(registry):
    settings, _ = registry
    schema = check_cohort(settings)
    assert schema.classes == ("stable", "slow decline", "rapid decline")
    assert schema.groups.names == ("transcripts", "clinical", "labs") and schema.groups.genes == "transcripts"
    assert schema.groups.signatures is None and "onset_group" in schema.may_be_missing
    node = Node(settings)
    client = MlflowClient(settings.tracking_uri)
    experiment = client.get_experiment_by_name("registry").experiment_id
    sets = {k: v for k, v in registry_gene_sets(1000).items() if len(v) >= 5}
    model = ModelSpec("pathway", {"gene_sets": sets, "interaction_columns": INTERACTIONS})
    features = FeatureSpec(missing_indicators=True, transforms={"labs": ("log1p",)})
    run = node_run(contributor="B", submission_id=client.create_run(experiment).info.run_id, model=model,
                   num_rounds=1, features=features, cohort_schema=schema.to_json())
    initial = ArrayRecord({k: v.detach() for k, v in node.build(run)[0].state_dict().items()})
    node.score_out_of_the_box(RecordDict({"arrays": initial}), run)
    reply = node.train(_content(initial), run)
    assert np.isfinite(np.concatenate([a.numpy().ravel() for a in reply["arrays"].values()])).all()
    node.score_fine_tuned(RecordDict({"arrays": reply["arrays"]}), run)
    recorded = client.get_run(run.submission_id).data
    assert recorded.tags[Tag.REPORTED_CLASS] == "rapid decline"
    assert 0.0 <= recorded.metrics["holdout_fine_tuned_recall_rapid_decline"] <= 1.0
    assert recorded.params["cohort_schema"] == schema.fingerprint
    assert recorded.tags[Tag.TOP_GROUP] in {"clinical", "labs", "transcripts", "site", "sex_at_birth",
                                            "onset_group", *(f"set:{s}" for s in sets)}

    # a run the workspace built for another cohort's schema (the demo's) is refused before any model
    demo = node_run(contributor="B", submission_id=client.create_run(experiment).info.run_id,
                    model=ModelSpec("linear"), num_rounds=1)
    assert demo.schema == SCHEMA
    with pytest.raises(PolicyViolation, match="'cohort-schema'.*this node serves " + schema.fingerprint):
        node.score_out_of_the_box(RecordDict({"arrays": initial}), demo)


@pytest.mark.slow
def test_the_registry_runs_end_to_end_at_full_scale_with_the_references_rewritten(tmp_path):
    """6,400 records x 20,000 genes through ``cohortfl run`` (Flower's simulation engine, a real
    SQLite MLflow store): the foundation's standard model and contributor B's pathway model with
    the public gene sets in the panel's ids, each on the registry's own dictionary."""
    from synthetic.registry import generate_registry

    path = tmp_path / "registry.parquet"
    generate_registry(0).to_parquet(path)
    sets = tmp_path / "sets.json"
    sets.write_text(json.dumps(registry_gene_sets()))
    common = ["cohort=file", f"cohort.path={path}", f"cohort.dictionary={DICTIONARY}",
              f"output_dir={tmp_path / 'out'}", "workspace.num_rounds=3"]
    references = {"internal": ["model=linear"],
                  "B": ["model=pathway", f"model.params.interaction_columns=[{','.join(INTERACTIONS)}]",
                        f"priors.gene_sets={sets}"]}
    env = {**os.environ, "COLUMNS": "200"}
    for contributor, overrides in references.items():
        done = subprocess.run([sys.executable, "-m", "server.cli", "run", *common, *overrides,
                               f"contributor={contributor}"], capture_output=True, text=True,
                              timeout=1500, cwd=tmp_path, env=env)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    board = subprocess.run([sys.executable, "-m", "server.cli", "leaderboard", "--tracking-uri",
                            f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}", "--format", "json"],
                           capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    rows = json.loads(board.stdout)
    assert {r["contributor"] for r in rows} == {"internal", "B"}
    for row in rows:
        assert 0.0 < row["fine_tuned_macro_f1"] <= 1.0 and "rapid decline_recall" in row
