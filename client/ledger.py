"""The node's persistent ledger (SQLite, one file in the node's state directory).

Three tables, each written in its own transaction:

- ``submissions``: one row per run a contributor opened on this node;
- ``compute``: FLOPs and device seconds charged to a contributor, per round;
- ``exports``: every reply the node sent -- run, contributor, message type,
  record keys, array shapes, bytes -- so the foundation can show its ethics
  board exactly what left the node and for whom.

``BEGIN IMMEDIATE`` takes SQLite's write lock before reading, so processes
that check a limit and then write (two submissions at once) cannot both pass.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from client.errors import PolicyViolation

_SCHEMA = """
CREATE TABLE IF NOT EXISTS submissions (
    run_id TEXT PRIMARY KEY, contributor TEXT NOT NULL, opened_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS compute (
    contributor TEXT NOT NULL, run_id TEXT NOT NULL, flops INTEGER NOT NULL,
    device_seconds REAL NOT NULL, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS exports (
    at REAL NOT NULL, contributor TEXT NOT NULL, run_id TEXT NOT NULL,
    message_type TEXT NOT NULL, keys TEXT NOT NULL, shapes TEXT NOT NULL, bytes INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class Export:
    """One reply that left the node."""

    at: float
    contributor: str
    run_id: str
    message_type: str
    keys: list[str]
    shapes: dict[str, list[int]]
    bytes: int


@dataclass(frozen=True)
class Usage:
    """What a contributor has used on this node."""

    submissions: int
    flops: int
    device_seconds: float


class NodeLedger:
    """Budgets, submissions and exports of one node, kept across runs and processes.

    Parameters
    ----------
    path : str or Path
        The SQLite file; created with its tables on first use.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(sqlite3.connect(self.path, timeout=60)) as db:
            db.execute("PRAGMA journal_mode=WAL")  # persistent: readers never wait for writers
            db.executescript(_SCHEMA)  # idempotent; executescript manages its own transaction

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A connection inside one ``BEGIN IMMEDIATE`` transaction, committed on success."""
        with closing(sqlite3.connect(self.path, timeout=60, isolation_level=None)) as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def usage(self, contributor: str) -> Usage:
        """Submissions opened and compute charged so far."""
        with closing(sqlite3.connect(self.path, timeout=60)) as db:
            return self._usage(db, contributor)

    @staticmethod
    def _usage(db: sqlite3.Connection, contributor: str) -> Usage:
        (submissions,) = db.execute(
            "SELECT COUNT(*) FROM submissions WHERE contributor = ?", (contributor,)).fetchone()
        flops, seconds = db.execute(
            "SELECT COALESCE(SUM(flops), 0), COALESCE(SUM(device_seconds), 0) FROM compute "
            "WHERE contributor = ?", (contributor,)).fetchone()
        return Usage(int(submissions), int(flops), float(seconds))

    def open_submission(self, contributor: str, run_id: str, limit: int) -> Usage:
        """Count a new run against the contributor's submissions; refuse one too many.

        Opening the same run again is a no-op, so a retried message is not a new submission.

        Raises
        ------
        PolicyViolation
            ``submission-limit``, saying how many of the limit are used.
        """
        with self._write() as db:
            if db.execute("SELECT 1 FROM submissions WHERE run_id = ?", (run_id,)).fetchone():
                return self._usage(db, contributor)
            used = self._usage(db, contributor)
            if used.submissions >= limit:
                raise PolicyViolation("submission-limit",
                                      f"{used.submissions} of {limit} submissions used; none left")
            db.execute("INSERT INTO submissions VALUES (?, ?, ?)", (run_id, contributor, time.time()))
            return Usage(used.submissions + 1, used.flops, used.device_seconds)

    def require_budget(self, contributor: str, expected_flops: int, budget_flops: int) -> None:
        """Refuse work whose expected FLOPs would take the contributor over budget.

        Raises
        ------
        PolicyViolation
            ``compute-budget``, saying how much of the budget is left.
        """
        used = self.usage(contributor).flops
        if used + expected_flops > budget_flops:
            left = max(budget_flops - used, 0) / 1e15
            raise PolicyViolation("compute-budget",
                                  f"{left:.6g} PF of {budget_flops / 1e15:.6g} PF left; "
                                  f"this round needs about {expected_flops / 1e15:.6g} PF")

    def charge(self, contributor: str, run_id: str, flops: int, device_seconds: float) -> None:
        """Record compute spent for a contributor's run."""
        with self._write() as db:
            db.execute("INSERT INTO compute VALUES (?, ?, ?, ?, ?)",
                       (contributor, run_id, int(flops), float(device_seconds), time.time()))

    def record_export(self, contributor: str, run_id: str, message_type: str,
                      reply: RecordDict | None, error: str = "") -> None:
        """Record one reply leaving the node: its records or its error text."""
        if reply is None:
            keys, shapes, size = ["error"], {}, len(error.encode())
        else:
            keys, shapes, size = _describe(reply)
        with self._write() as db:
            db.execute("INSERT INTO exports VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (time.time(), contributor, run_id, message_type, json.dumps(keys),
                        json.dumps(shapes), size))

    def exports(self, contributor: str | None = None) -> list[Export]:
        """The export ledger, oldest first, for one contributor or all."""
        query = "SELECT * FROM exports" + (" WHERE contributor = ?" if contributor else "")
        with closing(sqlite3.connect(self.path, timeout=60)) as db:
            rows = db.execute(query + " ORDER BY at", (contributor,) if contributor else ()).fetchall()
        return [Export(at, who, run, kind, json.loads(keys), json.loads(shapes), size)
                for at, who, run, kind, keys, shapes, size in rows]


def _describe(reply: RecordDict) -> tuple[list[str], dict[str, list[int]], int]:
    """Record keys (``record/name``), array shapes and the payload's bytes."""
    keys: list[str] = []
    shapes: dict[str, list[int]] = {}
    size = 0
    for record_name, record in reply.items():
        for name, value in record.items():
            keys.append(f"{record_name}/{name}")
            if isinstance(record, ArrayRecord):
                shapes[f"{record_name}/{name}"] = list(value.shape)
                size += len(value.data)
            elif isinstance(record, MetricRecord | ConfigRecord):
                size += 8  # one scalar
    return keys, shapes, size
