"""Shared fixtures: one small synthetic cohort on disk, and broken copies of it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.csv
import pyarrow.parquet
import pytest

from synthetic.disease import generate_cohort


@pytest.fixture(scope="session")
def cohort_frame() -> pd.DataFrame:
    """The synthetic cohort of seed 0 (640 records). Copy it before changing it."""
    return generate_cohort(seed=0)


@pytest.fixture(scope="session")
def cohort_parquet(tmp_path_factory, cohort_frame) -> Path:
    """The seed-0 cohort written once to a Parquet file (read-only for tests)."""
    path = tmp_path_factory.mktemp("cohort") / "cohort.parquet"
    cohort_frame.to_parquet(path, index=False)
    return path


@pytest.fixture
def write_broken(tmp_path, cohort_frame) -> Callable[..., Path]:
    """Write a changed copy of the cohort; returns its path.

    ``write_broken(change, suffix=".csv", name="broken")`` calls ``change(frame)``
    on a copy, which may edit it in place or return a new frame, and writes the
    result as CSV or (``suffix=".parquet"``) Parquet under the test's tmp_path.
    Each column must hold one type (Parquet and Arrow's CSV writer need it).
    """

    def write(change: Callable[[pd.DataFrame], pd.DataFrame | None] | None = None,
              suffix: str = ".csv", name: str = "broken") -> Path:
        frame = cohort_frame.copy()
        if change is not None:
            changed = change(frame)
            frame = frame if changed is None else changed
        path = tmp_path / f"{name}{suffix}"
        table = pa.Table.from_pandas(frame, preserve_index=False)
        if suffix == ".parquet":
            pa.parquet.write_table(table, path)
        else:  # pyarrow's writer: ten times faster than DataFrame.to_csv, same values
            pa.csv.write_csv(table, path)
        return path

    return write
