"""The foundation's data dictionary: the demo's own agrees with the schema the node uses; a cohort
of another shape (other names, other classes, missing cells) is drafted, reviewed and checked;
what the draft writes holds names and levels, never a record's value."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from client.cohort import check_with_dictionary
from client.errors import CohortValidationError
from contract.dictionary import DataDictionary, DictionaryError, draft
from contract.schema import SCHEMA

DEMO = Path(__file__).parents[1] / "conf" / "dictionary" / "synthetic.yaml"


def test_the_demo_dictionary_gives_exactly_the_schema_the_node_uses():
    assert DataDictionary.from_yaml(DEMO).resolve(SCHEMA.all_columns) == SCHEMA


def test_the_demo_cohort_fits_its_dictionary(cohort_parquet):
    summary = check_with_dictionary(cohort_parquet, DEMO, holdout_size=32)
    assert "numeric columns by group: gene 200, clinical 29, signature 21" in summary
    assert any(line.startswith("classes (ordinal): Slow ") for line in summary)


def other_cohort(n: int = 300, seed: int = 1) -> pd.DataFrame:
    """Another registry's shape: gene symbols and probe ids, clinical names with units, a site,
    two classes of its own, and missing cells in one laboratory value."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"subject_id": [f"S{i:05d}" for i in range(n)]})
    for symbol in ("DMD", "SMN1", "SOD1"):
        frame[symbol] = rng.normal(size=n)
    for i in range(40):
        frame[f"probe_{i}"] = rng.normal(size=n)
    frame["age_years"] = rng.uniform(2, 70, n).round(1)
    frame["nfl_pg_ml"] = np.where(rng.random(n) < 0.1, np.nan, rng.lognormal(3, 0.5, n))
    frame["site"] = rng.choice(["north", "south", "east"], n)
    frame["outcome"] = rng.choice(["stable", "decline"], n)
    return frame


def test_a_draft_finds_id_label_groups_levels_and_missing_columns_and_holds_no_value(tmp_path):
    frame = other_cohort()
    drafted = draft(frame)
    assert (drafted.id_column, drafted.label_column) == ("subject_id", "outcome")
    assert drafted.classes == ("decline", "stable")
    groups = {g.name: g.columns for g in drafted.groups}
    assert groups["probe"] == ("probe_*",)
    assert set(groups["other"]) == {"DMD", "SMN1", "SOD1", "age_years", "nfl_pg_ml"}
    assert drafted.categorical == {"site": ("east", "north", "south")}
    assert drafted.may_be_missing == ("nfl_pg_ml",)
    text = drafted.to_yaml()
    numbers = frame.select_dtypes("number").to_numpy().ravel()
    assert not [v for v in numbers[~np.isnan(numbers)][:500] if repr(float(v)) in text or f"{v:.6g}" in text]
    assert "S00001" not in text  # no id
    assert DataDictionary.from_mapping(__import__("yaml").safe_load(text)) == drafted  # round trip


def test_a_draft_puts_named_gene_symbols_and_ensembl_ids_in_the_genes_group():
    frame = other_cohort()
    with_symbols = {g.name: g for g in draft(frame, gene_symbols=["DMD", "SMN1", "SOD1", "TTN"]).groups}
    assert with_symbols["gene"].columns == ("DMD", "SMN1", "SOD1") and with_symbols["gene"].role == "genes"
    assert set(with_symbols["other"].columns) == {"age_years", "nfl_pg_ml"}
    from synthetic.registry import generate_registry

    registry = generate_registry(0, n_records=150, n_genes=300)
    groups = {g.name: g for g in draft(registry).groups}
    assert groups["gene"].columns == ("ENS*G*",) and groups["gene"].role == "genes"
    schema = draft(registry).resolve(list(registry.columns))
    assert len(schema.groups.gene_columns()) == 300 and schema.groups.genes == "gene"


def test_a_reviewed_dictionary_resolves_another_shape_and_the_check_reports_it(tmp_path):
    frame = other_cohort().dropna()
    path = tmp_path / "registry.csv"
    frame.to_csv(path, index=False)
    dictionary = tmp_path / "dictionary.yaml"
    dictionary.write_text("""
id: subject_id
label: {column: outcome, classes: [stable, decline], ordinal: true, reported: decline}
groups:
  genes: {columns: [DMD, SMN1, SOD1, "probe_*"], unit: log2 TPM}
  clinical: {columns: [age_years, nfl_pg_ml], units: {age_years: years, nfl_pg_ml: pg/mL}}
categorical: {site: [north, south, east]}
may_be_missing: [nfl_pg_ml]
""")
    schema = DataDictionary.from_yaml(dictionary).resolve(list(frame.columns))
    assert schema.numeric[:4] == ("DMD", "SMN1", "SOD1", "probe_0") and len(schema.numeric) == 45
    assert schema.classes == ("stable", "decline") and schema.reported_class == "decline"
    summary = check_with_dictionary(path, dictionary, holdout_size=60)
    assert f"{len(frame)} records: {len(frame) - 60} training, 60 holdout" in summary
    assert "numeric columns by group: genes 43, clinical 2" in summary


def test_missing_cells_are_accepted_where_the_dictionary_declares_them_and_refused_elsewhere(tmp_path):
    frame = other_cohort()
    path = tmp_path / "registry.parquet"
    frame.to_parquet(path)
    dictionary = tmp_path / "dictionary.yaml"
    dictionary.write_text(draft(frame).to_yaml())  # the draft declares nfl_pg_ml, which has gaps
    summary = check_with_dictionary(path, dictionary, holdout_size=60)
    missing = int(frame["nfl_pg_ml"].isna().sum())
    assert f"missing cells: {missing} in 1 of the 1 column(s) that may have them" in summary
    undeclared = tmp_path / "undeclared.yaml"
    text = dictionary.read_text()
    undeclared.write_text(text.replace("may_be_missing:\n- nfl_pg_ml", "may_be_missing: []"))
    with pytest.raises(CohortValidationError, match="may_be_missing lists") as refused:
        check_with_dictionary(path, undeclared, holdout_size=60)
    assert "'nfl_pg_ml'" in str(refused.value)


@pytest.mark.parametrize(("change", "message"), [
    ({"groups": {"genes": {"columns": "gene_*"}}}, "'gene_\\*' matches no column"),
    ({"label": {"column": "outcome", "classes": ["stable"]}}, "two or more distinct class names"),
    ({"label": {"column": "outcome", "classes": ["stable", "decline"], "reported": "fast"}},
     "label.reported"),
    ({"categorical": {"site": [], "age_years": ["a"]}}, "categorical"),
])
def test_a_dictionary_that_does_not_fit_is_refused_naming_what(change, message):
    frame = other_cohort()
    raw = __import__("yaml").safe_load(draft(frame).to_yaml())
    raw.update(change)
    with pytest.raises(DictionaryError, match=message):
        DataDictionary.from_mapping(raw).resolve(list(frame.columns))


def test_a_column_in_two_places_is_refused():
    frame = other_cohort()
    raw = __import__("yaml").safe_load(draft(frame).to_yaml())
    raw["categorical"]["age_years"] = ["young", "old"]
    with pytest.raises(DictionaryError, match="'age_years' is in group 'other' and declared again"):
        DataDictionary.from_mapping(raw).resolve(list(frame.columns))


def test_the_commands_draft_once_and_check(tmp_path):
    path = tmp_path / "registry.csv"
    other_cohort().dropna().to_csv(path, index=False)

    def cohortfl(*args):
        return subprocess.run([sys.executable, "-m", "server.cli", "cohort", *args], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)

    made = cohortfl("init", str(path), "--out", "d.yaml")
    assert made.returncode == 0, made.stderr
    assert "label outcome (2 classes)" in made.stdout and (tmp_path / "d.yaml").is_file()
    again = cohortfl("init", str(path), "--out", "d.yaml")
    assert again.returncode == 2 and "exists" in again.stderr  # a reviewed dictionary is never overwritten
    checked = cohortfl("check", str(path), "--dictionary", "d.yaml", "--holdout-size", "60")
    assert checked.returncode == 0, checked.stderr
    assert "fits d.yaml" in checked.stdout
    wrong = cohortfl("check", str(path), "--dictionary", str(DEMO))
    assert wrong.returncode == 2 and "matches no column" in wrong.stderr


def test_a_draft_from_parquet_reads_its_floats_into_one_block_and_drafts_as_from_the_whole_table(tmp_path):
    """`cohort init` on Parquet takes the floating-point columns into the float32 block (a 20,000-gene
    panel is not read whole by pandas); integers, flags and text are read as they are, so the draft
    is the one pandas' own table gives."""
    from client.cohort import float_columns, read_table

    frame = other_cohort()
    frame["visits"] = np.arange(len(frame)) % 4
    frame["smoker"] = np.arange(len(frame)) % 3 == 0
    path = tmp_path / "registry.parquet"
    frame.to_parquet(path, index=False)
    floats = float_columns(path)
    assert "DMD" in floats and "visits" not in floats and "smoker" not in floats
    table, block = read_table(path, floats)
    assert block.shape == (len(floats), len(frame))
    assert draft(table) == draft(pd.read_parquet(path))
