"""Loading, validating and splitting the cohort file (client/cohort.py)."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

from client.cohort import load_cohort, split_cohort, validate_frame
from client.errors import CohortValidationError
from contract.schema import SCHEMA


def _set(frame: pd.DataFrame, row: int, column: str, value: object) -> None:
    """Put ``value`` into one cell; text in a numeric column turns it into text."""
    if isinstance(value, str) and pd.api.types.is_numeric_dtype(frame[column]):
        frame[column] = frame[column].astype(str)
    frame.loc[row, column] = value


def _rejected(path) -> CohortValidationError:
    with pytest.raises(CohortValidationError) as info:
        load_cohort(path)
    return info.value


# --- one broken rule per file: the error names the column and the rule -------------


def test_missing_column_is_named(write_broken):
    error = _rejected(write_broken(lambda f: f.drop(columns=["gene_7"])))
    assert len(error.problems) == 1
    assert "missing column" in str(error) and "'gene_7'" in str(error)


def test_string_in_numeric_column_of_csv_is_named(write_broken):
    error = _rejected(write_broken(lambda f: _set(f, 5, "clinical_3", "abc")))
    assert len(error.problems) == 1
    assert "non-numeric" in str(error) and "'clinical_3'" in str(error)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
@pytest.mark.parametrize("column", ["signature_4", "sex", "progression"])
def test_missing_value_is_named(write_broken, suffix, column):
    error = _rejected(write_broken(lambda f: _set(f, 11, column, np.nan), suffix=suffix))
    assert "missing values" in str(error) and f"'{column}'" in str(error)


def test_infinite_value_is_refused(write_broken):
    error = _rejected(write_broken(lambda f: _set(f, 3, "gene_0", np.inf), suffix=".parquet"))
    assert len(error.problems) == 1
    assert "infinite values" in str(error)


def test_duplicate_record_with_a_new_id_is_refused(write_broken):
    def duplicate(frame):
        copy = frame.iloc[[17]].copy()
        copy["patient_id"] = "P999-9999"
        return pd.concat([frame, copy], ignore_index=True)

    error = _rejected(write_broken(duplicate))
    assert len(error.problems) == 1
    assert "duplicate records" in str(error) and "identical features" in str(error)


def test_duplicate_patient_id_is_refused(write_broken):
    def reuse_id(frame):
        frame.loc[1, "patient_id"] = frame.loc[0, "patient_id"]

    error = _rejected(write_broken(reuse_id))
    assert len(error.problems) == 1
    assert "duplicate values" in str(error) and "'patient_id'" in str(error)


def test_unknown_class_label_is_refused(write_broken):
    error = _rejected(write_broken(lambda f: _set(f, 2, "progression", "Stable")))
    assert len(error.problems) == 1
    assert "'progression'" in str(error) and "labels outside" in str(error)


@pytest.mark.parametrize("column", ["sex", "onset"])
def test_unknown_categorical_level_is_refused(write_broken, column):
    error = _rejected(write_broken(lambda f: _set(f, 4, column, "other")))
    assert len(error.problems) == 1
    assert f"column '{column}'" in str(error) and "outside its levels" in str(error)


def test_unexpected_column_is_named(write_broken):
    error = _rejected(write_broken(lambda f: f.assign(hospital="x")))
    assert len(error.problems) == 1
    assert "1 column(s) not in the schema" in str(error) and "'hospital'" not in str(error)


def test_every_broken_rule_is_reported_at_once(write_broken):
    def break_twice(frame):
        _set(frame, 0, "sex", "other")
        return frame.drop(columns=["clinical_0"])

    error = _rejected(write_broken(break_twice))
    assert len(error.problems) == 2
    assert "'clinical_0'" in str(error) and "column 'sex'" in str(error)


def test_csv_with_header_only_has_no_records(write_broken):
    error = _rejected(write_broken(lambda f: f.iloc[:0]))
    assert "no records" in str(error)


def test_zero_byte_file_is_refused(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_bytes(b"")
    error = _rejected(path)
    assert "could not be parsed as .csv" in str(error)


@pytest.mark.parametrize("suffix", [".xlsx", ".json", ""])
def test_unsupported_suffix_is_refused(write_broken, suffix):
    error = _rejected(write_broken(suffix=suffix))
    assert "unsupported file type" in str(error)


def test_missing_file_is_refused(tmp_path):
    error = _rejected(tmp_path / "nowhere.parquet")
    assert "no cohort file" in str(error)


def test_validate_frame_checks_an_in_memory_table(cohort_frame):
    validate_frame(cohort_frame)  # the generator's table is valid
    broken = cohort_frame.drop(columns=["onset"])
    with pytest.raises(CohortValidationError, match="missing column.*'onset'"):
        validate_frame(broken)


# --- no cell value ever reaches an error message -----------------------------------

SENTINEL_NUMBER = 987654.321
SENTINEL_TEXT = "ZQXSENTINEL"


def _plant_bad_label(frame):
    _set(frame, 0, "progression", f"{SENTINEL_TEXT}_label")


def _plant_bad_level(frame):
    _set(frame, 0, "onset", f"{SENTINEL_TEXT}_onset")


def _plant_text_in_numeric(frame):
    _set(frame, 0, "gene_3", f"{SENTINEL_TEXT}{SENTINEL_NUMBER}")


def _plant_duplicate_id(frame):
    frame.loc[[0, 1], "patient_id"] = f"{SENTINEL_TEXT}_id"


def _plant_duplicate_record(frame):
    frame.loc[[0, 1], "gene_5"] = SENTINEL_NUMBER
    frame.loc[1, frame.columns[1:-1]] = frame.loc[0, frame.columns[1:-1]]


def _plant_everything(frame):
    for plant in (_plant_bad_label, _plant_bad_level, _plant_text_in_numeric,
                  _plant_duplicate_id):
        plant(frame)
    frame.loc[5, "gene_9"] = SENTINEL_NUMBER
    frame.loc[6, "clinical_2"] = np.nan
    return frame.assign(extra=SENTINEL_NUMBER)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
@pytest.mark.parametrize("plant", [_plant_bad_label, _plant_bad_level, _plant_text_in_numeric,
                                   _plant_duplicate_id, _plant_duplicate_record,
                                   _plant_everything])
def test_error_messages_quote_no_cell_value(write_broken, suffix, plant):
    error = _rejected(write_broken(plant, suffix=suffix))
    text = "\n".join([str(error), repr(error), *error.problems])
    assert "987654" not in text
    assert SENTINEL_TEXT not in text


def test_unparseable_file_message_quotes_no_content(tmp_path):
    path = tmp_path / "cohort.parquet"  # not Parquet: CSV text with sentinels
    path.write_text(f"patient_id,gene_0\n{SENTINEL_TEXT},{SENTINEL_NUMBER}\n")
    error = _rejected(path)
    assert "could not be parsed as .parquet" in str(error)
    assert "987654" not in str(error) and SENTINEL_TEXT not in str(error)
    assert error.__cause__ is None and error.__suppress_context__


# --- valid files ------------------------------------------------------------------


@pytest.fixture(scope="module")
def cohort(cohort_parquet):
    return load_cohort(cohort_parquet)


def test_valid_parquet_loads(cohort, cohort_parquet, cohort_frame):
    assert len(cohort) == 640
    assert cohort.frame.shape == (640, 252)
    assert tuple(cohort.frame.columns) == SCHEMA.feature_columns
    assert set(np.unique(cohort.labels)) == {0, 1, 2}
    assert np.bincount(cohort.labels).tolist() == [223, 202, 215]
    expected = cohort_frame["progression"].map({"Slow": 0, "Medium": 1, "Fast": 2}).to_numpy()
    np.testing.assert_array_equal(cohort.labels, expected)
    assert cohort.digest == hashlib.sha256(cohort_parquet.read_bytes()).hexdigest()


def test_valid_csv_loads_like_parquet(write_broken, cohort):
    csv = load_cohort(write_broken(suffix=".csv", name="valid"))
    assert len(csv) == 640
    assert set(np.unique(csv.labels)) == {0, 1, 2}
    np.testing.assert_array_equal(csv.labels, cohort.labels)
    np.testing.assert_allclose(csv.frame[list(SCHEMA.numeric)].to_numpy(dtype=float),
                               cohort.frame[list(SCHEMA.numeric)].to_numpy(dtype=float))


# --- the split ----------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_split_is_stratified_and_disjoint(cohort, seed):
    split = split_cohort(cohort, holdout_size=128, seed=seed)
    assert len(split.holdout) == 128 and len(split.train) == 512
    assert not set(split.train) & set(split.holdout)
    assert sorted([*split.train, *split.holdout]) == list(range(640))
    # Each class's holdout count is its share of 128, rounded up or down: a plain
    # random split misses by several records for most seeds.
    expected = np.bincount(cohort.labels, minlength=3) * 128 / len(cohort)
    held = np.bincount(cohort.labels[split.holdout], minlength=3)
    assert np.all(np.abs(held - expected) < 1)


def test_split_is_reproducible_for_a_seed_and_differs_across_seeds(cohort):
    first = split_cohort(cohort, 128, seed=0)
    again = split_cohort(cohort, 128, seed=0)
    other = split_cohort(cohort, 128, seed=1)
    np.testing.assert_array_equal(first.holdout, again.holdout)
    np.testing.assert_array_equal(first.train, again.train)
    assert set(first.holdout) != set(other.holdout)


@pytest.mark.parametrize("size", [0, 640, 1000])
def test_split_refuses_impossible_holdout_sizes(cohort, size):
    with pytest.raises(CohortValidationError, match="holdout_size"):
        split_cohort(cohort, holdout_size=size)


def test_a_cohort_missing_a_class_is_refused_naming_it(write_broken):
    """Macro-F1 would average in the absent class at 0: the node refuses, before any run."""
    path = write_broken(lambda f: f[f["progression"] != "Medium"].reset_index(drop=True))
    with pytest.raises(CohortValidationError, match="class 'Medium' has 0 record"):
        split_cohort(load_cohort(path), 128, 0)


def test_a_class_too_small_for_the_holdout_is_refused(write_broken):
    def nearly_no_fast(frame):
        fast = frame.index[frame["progression"] == "Fast"]
        return frame.drop(fast[6:]).reset_index(drop=True)

    with pytest.raises(CohortValidationError, match="class 'Fast' has [0-4] record.* in the holdout"):
        split_cohort(load_cohort(write_broken(nearly_no_fast)), 128, 0)


def test_a_split_by_fraction_keeps_every_records_side_as_the_cohort_grows(tmp_path):
    """Version 2 holds version 1's records (reordered) and 640 new ones: every old record is on
    the same side; each class's share of the holdout is near the fraction."""
    from synthetic.disease import generate_cohort

    first = generate_cohort(seed=0)
    grown = pd.concat([generate_cohort(seed=1), first]).sample(frac=1.0, random_state=3)
    sides = []
    for name, table in (("v1", first), ("v2", grown)):
        path = tmp_path / f"{name}.parquet"
        table.to_parquet(path)
        cohort = load_cohort(path)
        split = split_cohort(cohort, seed=7, holdout_fraction=0.2)
        ids = np.array(cohort.ids)
        sides.append((set(ids[split.train]), set(ids[split.holdout]), cohort, split))
    (train_1, holdout_1, cohort_1, split_1), (train_2, holdout_2, _, _) = sides
    assert train_1 <= train_2 and holdout_1 <= holdout_2
    assert 0.15 < len(holdout_1) / len(cohort_1) < 0.25
    for k in range(3):
        assert 0.12 < np.sum(cohort_1.labels[split_1.holdout] == k) / np.sum(cohort_1.labels == k) < 0.28
    other_seed = split_cohort(cohort_1, seed=8, holdout_fraction=0.2)
    assert set(other_seed.holdout) != set(split_1.holdout)  # the seed draws another holdout
    with pytest.raises(CohortValidationError, match="holdout_fraction"):
        split_cohort(cohort_1, holdout_fraction=1.0)


# --- memory: one float32 block, read a part at a time, arranged in place -------------------------


def test_a_parquet_file_read_a_few_columns_at_a_time_is_the_table_pandas_reads(tmp_path, monkeypatch):
    """Integers, booleans, missing cells and float64 land in the float32 block (in schema order)
    exactly as pandas reads them; text in a numeric column stays text for validation to name."""
    import client.cohort as module
    from client.cohort import read_table

    rng = np.random.default_rng(0)
    table = pd.DataFrame({"id": ["a", "b", "c", "d", "e"], "f64": rng.normal(size=5),
                          "ints": np.arange(5), "flags": [True, False, True, True, False],
                          "holes": [1.0, np.nan, 3.0, np.nan, 5.0], "text": list("vwxyz"),
                          "words": ["1", "2", "x", "4", "5"]})
    path = tmp_path / "t.parquet"
    table.to_parquet(path, row_group_size=2)  # three row groups: each column comes in chunks
    monkeypatch.setattr(module, "PART_CELLS", 10)  # two columns a part
    frame, block = read_table(path, ("holes", "ints", "f64", "flags", "words"))
    assert list(frame.columns) == ["holes", "ints", "f64", "flags", "id", "text", "words"]
    assert block.dtype == np.float32 and block.shape == (4, 5)
    expected = table[["holes", "ints", "f64", "flags"]].to_numpy(np.float32)
    np.testing.assert_array_equal(frame[["holes", "ints", "f64", "flags"]].to_numpy(), expected)
    for column in ("holes", "ints", "f64", "flags"):
        assert np.shares_memory(frame[column].to_numpy(), block)
    assert frame["words"].tolist() == table["words"].tolist() and frame["text"].tolist() == list("vwxyz")


def test_the_cohorts_features_are_views_of_its_block_and_arranging_moves_no_copy(cohort_parquet):
    from client.cohort import arrange

    cohort = load_cohort(cohort_parquet)
    before = cohort.frame.copy()
    assert cohort.block.shape == (len(SCHEMA.numeric), 640)
    assert all(np.shares_memory(cohort.frame[c].to_numpy(), cohort.block) for c in SCHEMA.numeric[::50])
    split = split_cohort(cohort, 128, seed=3)
    labels, ids = cohort.labels.copy(), cohort.ids
    arranged = arrange(cohort, split)
    order = np.concatenate([split.train, split.holdout])
    pd.testing.assert_frame_equal(arranged.frame, before.iloc[order].reset_index(drop=True),
                                  check_dtype=False)
    np.testing.assert_array_equal(arranged.labels, labels[order])
    assert arranged.ids == tuple(ids[i] for i in order)
    assert arranged.block is cohort.block  # the same memory, reordered in place
    train, holdout = arranged.frame.iloc[:512], arranged.frame.iloc[512:]
    assert np.shares_memory(train["gene_0"].to_numpy(), arranged.block)
    assert np.shares_memory(holdout["gene_0"].to_numpy(), arranged.block)
