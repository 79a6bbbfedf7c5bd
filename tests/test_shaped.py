"""A synthetic cohort in a published shape (synthetic/shaped.py, `cohortfl synthesize`): a
contributor who holds only the published schema gets a file the node reads with that schema, and the
published schema keeps the dictionary's column order, so weights trained against it fit the node's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from client.cohort import load_cohort, validate_frame
from contract.dictionary import DataDictionary
from contract.schema import SCHEMA, CohortSchema
from models.pipeline import FeatureSpec
from server.cli import main
from synthetic.registry import generate_registry
from synthetic.shaped import draw_shaped

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def registry_schema() -> CohortSchema:
    """The registry's schema as its node publishes it (another shape than the demo's)."""
    frame = generate_registry(0, n_records=60, n_genes=300)
    dictionary = DataDictionary.from_yaml(ROOT / "conf" / "dictionary" / "registry.yaml")
    return dictionary.resolve(list(frame.columns))


def test_the_published_schema_keeps_the_dictionarys_order(registry_schema):
    again = CohortSchema.from_json(registry_schema.to_json())
    order = ["site", "sex_at_birth", "onset_group"]  # the dictionary's, not alphabetical
    assert list(again.categorical) == list(registry_schema.categorical) == order
    spec = FeatureSpec(transforms={"labs": ("log1p",)}, missing_indicators=True)
    assert again.pipeline(spec).feature_names == registry_schema.pipeline(spec).feature_names
    assert again.fingerprint == registry_schema.fingerprint


def test_a_shaped_cohort_has_exactly_the_schemas_columns_levels_and_classes(registry_schema):
    table = draw_shaped(registry_schema, n_records=500, seed=3)
    validate_frame(table, registry_schema)
    assert list(table.columns) == list(registry_schema.all_columns)
    assert set(table[registry_schema.label_column]) == set(registry_schema.classes)
    missing = table.columns[table.isna().any()].tolist()
    assert missing and set(missing) <= set(registry_schema.may_be_missing)
    pd.testing.assert_frame_equal(draw_shaped(registry_schema, n_records=500, seed=3), table)
    validate_frame(draw_shaped(SCHEMA, n_records=50), SCHEMA)
    with pytest.raises(ValueError, match="one per class"):
        draw_shaped(SCHEMA, n_records=2)


def test_its_outcome_is_learnable_from_its_features(registry_schema):
    """Generic, but not noise: a package tried on it learns something."""
    from sklearn.linear_model import LogisticRegression

    table = draw_shaped(registry_schema, n_records=1500, seed=1)
    pipeline = registry_schema.pipeline(FeatureSpec(raw=("clinical", "labs"))).fit(table.iloc[:1000])
    y = registry_schema.label_indices(table[registry_schema.label_column])
    model = LogisticRegression(max_iter=2000).fit(pipeline.transform(table.iloc[:1000]), y[:1000])
    assert (model.predict(pipeline.transform(table.iloc[1000:])) == y[1000:]).mean() > 0.5  # chance 1/3


def test_cohortfl_synthesize_writes_a_file_the_node_reads_with_the_published_schema(tmp_path, capsys,
                                                                                    registry_schema):
    schema = tmp_path / "schema.json"
    schema.write_text(registry_schema.to_json())
    out = tmp_path / "fake.csv"
    assert main(["synthesize", "--schema", str(schema), "--out", str(out), "--records", "200"]) == 0
    assert f"cohort.dictionary={schema}" in capsys.readouterr().out
    cohort = load_cohort(out, schema)
    assert len(cohort.labels) == 200 and cohort.schema == registry_schema
    assert main(["synthesize", "--schema", str(schema), "--out", str(out)]) == 2  # never overwrites
    assert "exists" in capsys.readouterr().err
    schema.write_text("{}")
    assert main(["synthesize", "--schema", str(schema), "--out", str(tmp_path / "x.parquet")]) == 2
    assert "not a published cohort schema" in capsys.readouterr().err


@pytest.mark.slow
def test_a_package_runs_on_a_shaped_cohort_through_flower(tmp_path):
    """What the command prints is what a contributor runs: their package on Flower's engine, against a
    synthetic cohort in the registry's published shape."""
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr-home"), "COLUMNS": "200"}
    frame = generate_registry(0, n_records=60, n_genes=300)
    frame.to_parquet(tmp_path / "reg.parquet")

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "server.cli", *args], capture_output=True, text=True,
                              timeout=600, cwd=tmp_path, env=env)

    published = cli("schema", "--dictionary", str(ROOT / "conf" / "dictionary" / "registry.yaml"),
                    "--cohort", str(tmp_path / "reg.parquet"), "--json")
    assert published.returncode == 0, published.stderr
    (tmp_path / "schema.json").write_text(published.stdout)
    assert cli("synthesize", "--schema", "schema.json", "--out", "fake.parquet").returncode == 0
    package = tmp_path / "pkg"
    assert main(["new", str(package)]) == 0
    (package / "strategy.py").unlink()  # a contributor's strategy runs locally only on the built-in diseases
    text = (package / "submission.yaml").read_text()
    (package / "submission.yaml").write_text(text.replace("contributor.WarmRestartFedAvg",
                                                          "flwr.serverapp.strategy.FedAvg")
                                             .replace("  restart_every: 5\n", ""))
    done = cli("submit", str(package), "--contributor", "ada", "cohort=file",
               f"cohort.path={tmp_path / 'fake.parquet'}", f"cohort.dictionary={tmp_path / 'schema.json'}",
               f"output_dir={tmp_path / 'out'}", "workspace.num_rounds=2")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "rapid decline" in done.stdout
    assert np.isfinite(load_cohort(tmp_path / "fake.parquet", tmp_path / "schema.json").labels).all()
