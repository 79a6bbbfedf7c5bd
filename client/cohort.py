"""Loading, validating and splitting the cohort file (CSV or Parquet).

Validation runs over the whole file before anything else happens and reports
every broken rule at once, naming columns and rules but never cell values.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from client.errors import CohortValidationError
from contract.schema import SCHEMA, CohortSchema


@dataclass(frozen=True)
class Cohort:
    """A validated cohort.

    Attributes
    ----------
    frame : pandas.DataFrame
        Feature columns only, in schema order, shape (n_records, 252).
    labels : numpy.ndarray
        Class indices into ``schema.classes``, shape (n_records,).
    digest : str
        SHA-256 of the file's bytes: identifies the cohort version in the record.
    """

    frame: pd.DataFrame
    labels: np.ndarray
    digest: str
    schema: CohortSchema = SCHEMA
    ids: tuple[str, ...] = ()  # each record's id, in row order (a stable split hashes them)
    #: The numeric columns' float32 values, shape (n_numeric, n_records): ``frame``'s numeric
    #: columns are views of it (``arrange`` reorders its records in place).
    block: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Split:
    """Record positions of the training and holdout parts of a cohort."""

    train: np.ndarray
    holdout: np.ndarray


def load_cohort(path: str | Path, dictionary: str | Path | None = None) -> Cohort:
    """Read and validate a cohort file.

    Parameters
    ----------
    path : str or Path
        A ``.csv`` or ``.parquet`` file.
    dictionary : str or Path, optional
        The foundation's data dictionary (YAML) the file's columns are read with, or a schema it
        published (``.json``: a contributor's own file in the published columns); by default the
        demo's shape (``SCHEMA``).

    Raises
    ------
    CohortValidationError
        The file is missing, unreadable or breaks a schema rule.
    DictionaryError
        The dictionary is malformed or does not fit the file's columns.
    """
    path = Path(path)
    schema = SCHEMA if dictionary is None else schema_for(dictionary, _header(path)[0])
    frame, block = read_table(path, schema.numeric)
    validate_frame(frame, schema)
    labels = schema.label_indices(frame[schema.label_column])
    ids = tuple(map(str, frame[schema.id_column]))
    kept = set(schema.feature_columns)  # the numeric block is first, in schema order: a view
    frame = frame.drop(columns=[c for c in frame.columns if c not in kept])[list(schema.feature_columns)]
    return Cohort(frame.reset_index(drop=True), labels, _file_digest(path), schema, ids, block)


def arrange(cohort: Cohort, split: Split) -> Cohort:
    """The cohort with its training records first and its holdout's after (each in file order), so
    that both parts are row slices of one block, not copies of the table: the numeric block is
    reordered in place, a column at a time. ``cohort`` must not be used after."""
    order = np.concatenate([split.train, split.holdout])
    labels, ids = cohort.labels[order], tuple(cohort.ids[i] for i in order) if cohort.ids else ()
    if cohort.block is None:  # a table built another way: a copy
        return Cohort(cohort.frame.iloc[order].reset_index(drop=True), labels, cohort.digest,
                      cohort.schema, ids)
    for column in cohort.block:
        column[:] = column[order]
    in_schema = set(cohort.schema.numeric)
    numeric = [c for c in cohort.frame.columns if c in in_schema]
    rest = cohort.frame.drop(columns=numeric).iloc[order].reset_index(drop=True)
    frame = pd.concat([pd.DataFrame(cohort.block.T, columns=numeric, copy=False), rest], axis=1)
    return Cohort(frame, labels, cohort.digest, cohort.schema, ids, cohort.block)


def _file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(2**20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def published_schema(path: Path | None, dictionary: Path | None) -> tuple[CohortSchema, int | None]:
    """The schema a node publishes for its cohort, and the cohort's size: its dictionary resolved
    against the file's header (the demo's schema and no size when neither is given). Reads the
    column names and the row count, no cell.

    Raises
    ------
    CohortValidationError
        The file is missing or unreadable.
    DictionaryError
        The dictionary is malformed or does not fit the file's columns.
    """
    if path is None or dictionary is None:
        return SCHEMA, None
    columns, n_records = _header(Path(path))
    return schema_for(dictionary, columns), n_records


def schema_for(dictionary: str | Path, columns: list[str]) -> CohortSchema:
    """The schema a file with ``columns`` has under ``dictionary``: a data dictionary (YAML)
    resolved against the columns, or a published schema (``.json``, ``cohortfl schema --json``) as
    it is, which ``validate_frame`` then holds the file to.

    Raises
    ------
    DictionaryError
        The dictionary is malformed or does not fit the columns, or the JSON is not a published schema.
    """
    from contract.dictionary import DataDictionary, DictionaryError

    if str(dictionary).endswith(".json"):
        try:
            return CohortSchema.from_json(Path(dictionary).read_text())
        except ValueError as error:
            raise DictionaryError(f"{dictionary}: {error}") from None
    return DataDictionary.from_yaml(dictionary).resolve(columns)


def _header(path: Path) -> tuple[list[str], int]:
    """A cohort file's column names and number of records, without reading its cells (Parquet:
    its footer; CSV: one column)."""
    _check_file(path)
    try:
        if path.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            meta = pq.ParquetFile(path).metadata
            return [str(c) for c in meta.schema.names], meta.num_rows
        columns = [str(c) for c in pd.read_csv(path, nrows=0).columns]
        return columns, len(pd.read_csv(path, usecols=[0]))
    except Exception as ex:
        raise _unparsable(path, ex) from None


def read_table(path: Path, numeric: tuple[str, ...] = ()) -> tuple[pd.DataFrame, np.ndarray]:
    """A cohort file's table, unchecked, and the block its ``numeric`` columns share.

    The columns of ``numeric`` the file holds as numbers come first, in that order, as views of one
    float32 block of shape (n_columns, n_records) filled a few columns at a time (Parquet): the
    table's memory is that block, not the reader's buffers beside it. Every other column follows in
    the file's order, as read (a numeric column holding text stays text, for validation to name).

    Raises
    ------
    CohortValidationError
        The file is missing, of another type, or unreadable (never quoting its content).
    """
    _check_file(path)
    try:
        if path.suffix.lower() == ".parquet":
            return _read_parquet(path, numeric)
        return _numeric_first(pd.read_csv(path), numeric)
    except CohortValidationError:
        raise
    except Exception as ex:
        raise _unparsable(path, ex) from None


def float_columns(path: Path) -> tuple[str, ...]:
    """The columns a Parquet file stores as floating-point numbers (none for a CSV): what
    ``read_table`` can take into its float32 block when a draft of the dictionary reads a file
    whose numeric columns are not known yet.

    Raises
    ------
    CohortValidationError
        The file is missing, of another type, or unreadable.
    """
    _check_file(path)
    if path.suffix.lower() != ".parquet":
        return ()
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return tuple(f.name for f in pq.read_schema(path) if pa.types.is_floating(f.type))
    except Exception as ex:
        raise _unparsable(path, ex) from None


def _check_file(path: Path) -> None:
    if path.suffix.lower() not in (".csv", ".parquet"):
        raise CohortValidationError([f"unsupported file type '{path.suffix}': use .csv or .parquet"])
    if not path.is_file():
        raise CohortValidationError([f"no cohort file at {path}"])


def _unparsable(path: Path, error: Exception) -> CohortValidationError:
    """The reader's failure, by its type only: its message may quote the file's content."""
    return CohortValidationError([f"the file could not be parsed as {path.suffix} ({type(error).__name__})"])


#: Cells a part of the table holds when it is read or checked a few columns at a time (32 MB
#: of float64): the buffer beside the table.
PART_CELLS = 2**22


def _part_columns(n_records: int) -> int:
    """Columns in a part of ``PART_CELLS`` cells."""
    return max(1, PART_CELLS // max(n_records, 1))


def _read_parquet(path: Path, numeric: tuple[str, ...]) -> tuple[pd.DataFrame, np.ndarray]:
    """``read_table`` for Parquet: the numeric block filled about ``PART_CELLS`` cells at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    file = pq.ParquetFile(path)
    schema = file.schema_arrow
    types = {name: schema.field(name).type for name in schema.names}
    is_number = (pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean)
    in_block = [c for c in numeric if c in types and any(test(types[c]) for test in is_number)]
    block = np.empty((len(in_block), file.metadata.num_rows), np.float32)
    size = _part_columns(file.metadata.num_rows)
    for start in range(0, len(in_block), size):
        part = file.read(columns=in_block[start:start + size], use_threads=False)
        for i, column in enumerate(part.columns, start):
            block[i] = column.cast(pa.float32()).to_numpy()  # a missing cell: NaN
        del part
    placed = set(in_block)
    rest = file.read(columns=[c for c in schema.names if c not in placed]).to_pandas().reset_index(drop=True)
    numbers = pd.DataFrame(block.T, columns=in_block, copy=False)
    return pd.concat([numbers, rest], axis=1), block


def _numeric_first(frame: pd.DataFrame, numeric: tuple[str, ...]) -> tuple[pd.DataFrame, np.ndarray]:
    """``read_table``'s layout for a table already read whole (CSV)."""
    dtypes = frame.dtypes
    in_block = [c for c in numeric if c in frame.columns and pd.api.types.is_numeric_dtype(dtypes[c])]
    block = np.empty((len(in_block), len(frame)), np.float32)
    for i, column in enumerate(in_block):
        block[i] = frame[column].to_numpy(np.float32)
    numbers = pd.DataFrame(block.T, columns=in_block, copy=False)
    return pd.concat([numbers, frame.drop(columns=in_block)], axis=1), block


#: Records of each class the training split and the holdout need, so that every class's recall and
#: F1 (and so macro-F1) is a measurement, not an average with an empty class.
MIN_RECORDS_PER_CLASS = 5


def validate_frame(frame: pd.DataFrame, schema: CohortSchema = SCHEMA) -> None:
    """Check every schema rule on a loaded table; raise with all problems found."""
    problems: list[str] = []
    if len(frame) == 0:
        raise CohortValidationError(["the file has no records"])
    expected, found = set(schema.all_columns), set(frame.columns)
    missing = [c for c in schema.all_columns if c not in found]
    if missing:
        problems.append(f"missing column(s): {_names(missing)}")
    unexpected = [c for c in frame.columns if c not in expected]
    if unexpected:  # counted, not named: a file without a header row would name its first record
        problems.append(f"{len(unexpected)} column(s) not in the schema: the header must be "
                        "the schema's column names")
    present = [c for c in schema.all_columns if c in found]
    allowed = set(schema.may_be_missing)
    nan_columns = {c for part in _parts(frame, list(frame.columns)) for c in part.columns[part.isna().any()]}
    with_nan = [c for c in present if c not in allowed and c in nan_columns]
    if with_nan:
        problems.append(f"missing values in column(s): {_names(with_nan)} (the data dictionary's "
                        "may_be_missing lists the columns that may have them)")
    dtypes = frame.dtypes
    not_numeric = [c for c in schema.numeric if c in found and not pd.api.types.is_numeric_dtype(dtypes[c])]
    if not_numeric:
        problems.append(f"non-numeric values in numeric column(s): {_names(not_numeric)}")
    numeric_ok = [c for c in schema.numeric if c in found and c not in set(not_numeric)]
    if any(np.isinf(part.to_numpy(np.float64)).any() for part in _parts(frame, numeric_ok)):
        problems.append("infinite values in numeric column(s)")
    for column, levels in schema.categorical.items():
        if column in frame.columns and not frame[column].dropna().isin(levels).all():
            problems.append(f"column '{column}' has values outside its levels {levels}")
    label = schema.label_column
    if label in frame.columns and not frame[label].dropna().isin(schema.classes).all():
        problems.append(f"column '{label}' has labels outside {schema.classes}")
    if schema.id_column in frame.columns and frame[schema.id_column].duplicated().any():
        problems.append(f"duplicate values in '{schema.id_column}': each record needs its own id")
    features = [c for c in schema.feature_columns if c in frame.columns]
    if features and _has_duplicate_rows(frame, features):
        problems.append("duplicate records: two or more rows have identical features")
    if problems:
        raise CohortValidationError(problems)


def split_cohort(
    cohort: Cohort, holdout_size: int = 128, seed: int = 0, holdout_fraction: float | None = None
) -> Split:
    """Split into training and holdout parts, reproducibly.

    By size (``holdout_size`` records, stratified by class exactly): the same file and seed
    always give the same split, but a new version of the cohort gives another. By fraction
    (``holdout_fraction``): each record's side follows from its id and the seed alone (a hash),
    so a record keeps its side in every later version of the cohort, whatever was added or
    reordered; each class's share of the holdout is the fraction, up to sampling.

    Raises
    ------
    CohortValidationError
        A class of the dictionary has fewer than ``MIN_RECORDS_PER_CLASS`` records in the
        training split or the holdout: macro-F1 would average in a class it cannot score.
    """
    positions = np.arange(len(cohort))
    if holdout_fraction is not None:
        if not 0 < holdout_fraction < 1:
            raise CohortValidationError(["holdout_fraction must lie strictly between 0 and 1"])
        side = np.array([_unit_hash(seed, record) for record in cohort.ids]) < holdout_fraction
        train, holdout = positions[~side], positions[side]
    elif not 0 < holdout_size < len(cohort):
        raise CohortValidationError(
            [f"holdout_size must be between 1 and {len(cohort) - 1} records"]
        )
    else:
        try:
            train, holdout = train_test_split(
                positions, test_size=holdout_size, stratify=cohort.labels, random_state=seed
            )
        except ValueError:  # a class too small to stratify; say which below
            train, holdout = positions[holdout_size:], positions[:holdout_size]
    problems = [f"class '{name}' has {int(np.sum(cohort.labels[part] == index))} record(s) in the "
                f"{where}; every class needs at least {MIN_RECORDS_PER_CLASS} there"
                for where, part in (("training split", train), ("holdout", holdout))
                for index, name in enumerate(cohort.schema.classes)
                if np.sum(cohort.labels[part] == index) < MIN_RECORDS_PER_CLASS]
    if problems:
        raise CohortValidationError(problems)
    return Split(train=np.sort(train), holdout=np.sort(holdout))


def _has_duplicate_rows(frame: pd.DataFrame, columns: list[str]) -> bool:
    """Two rows with identical values in ``columns``: rows are hashed a part of the columns at a
    time (the memory of one part), and only rows whose hashes collide are compared whole."""
    hashes = np.zeros(len(frame), np.uint64)
    for part in _parts(frame, columns):
        hashes = hashes * np.uint64(1_000_003) ^ pd.util.hash_pandas_object(part, index=False).to_numpy()
    candidates = pd.Series(hashes).duplicated(keep=False).to_numpy()
    return bool(candidates.any() and frame.loc[candidates, columns].duplicated().any())


def _parts(frame: pd.DataFrame, columns: list[str]) -> Iterator[pd.DataFrame]:
    """``frame``'s ``columns``, about ``PART_CELLS`` values at a time: a check over all of them holds
    one part's temporaries (a boolean mask, a float64 copy), not the whole table's."""
    size = _part_columns(len(frame))
    for start in range(0, len(columns), size):
        yield frame[columns[start:start + size]]


def _unit_hash(seed: int, record_id: str) -> float:
    """A number in [0, 1) fixed by the split seed and the record's id alone."""
    digest = hashlib.sha256(f"{seed}:{record_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _names(columns: list[str], limit: int = 8) -> str:
    """Join column names, eliding beyond ``limit``."""
    shown = ", ".join(f"'{c}'" for c in columns[:limit])
    return shown + (f" and {len(columns) - limit} more" if len(columns) > limit else "")


def check_with_dictionary(path: Path, dictionary_path: Path, holdout_size: int = 128,
                          split_seed: int = 0, holdout_fraction: float | None = None) -> list[str]:
    """``cohortfl cohort check``: a cohort file against the foundation's data dictionary, with the
    node's own validation and split; a summary (names, groups, counts; never a value).

    Raises
    ------
    DictionaryError
        The dictionary is malformed or does not fit the file's columns.
    CohortValidationError
        Every broken rule of the file.
    """
    from contract.dictionary import DataDictionary

    dictionary = DataDictionary.from_yaml(dictionary_path)
    cohort = load_cohort(path, dictionary_path)
    schema, frame = cohort.schema, cohort.frame
    split = split_cohort(cohort, holdout_size, split_seed, holdout_fraction)
    counts = np.bincount(cohort.labels, minlength=len(schema.classes))
    owner = list(dictionary.groups_of(list(schema.numeric)).values())
    groups = ", ".join(f"{g.name} {owner.count(g.name)}" for g in dictionary.groups)
    return [f"{path}: fits {dictionary_path}",
            f"{len(cohort)} records: {len(split.train)} training, {len(split.holdout)} holdout",
            f"classes ({'ordinal' if dictionary.ordinal else 'nominal'}): "
            + ", ".join(f"{c} {n}" for c, n in zip(schema.classes, counts, strict=True)),
            f"numeric columns by group: {groups}",
            f"categorical columns: {', '.join(schema.categorical) or 'none'}",
            f"missing cells: {int(frame[list(schema.may_be_missing)].isna().sum().sum())} in "
            f"{int(frame[list(schema.may_be_missing)].isna().any().sum())} of the "
            f"{len(schema.may_be_missing)} column(s) that may have them",
            f"digest: {cohort.digest}"]

