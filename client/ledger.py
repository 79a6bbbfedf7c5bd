"""The node's persistent ledger (SQLite, one file in the node's state directory).

Five tables, each written in its own transaction:

- ``submissions``: one row per run a contributor opened on this node, with the
  run's phase (new, scored-out-of-the-box, training, closed): phases survive a restarted
  node, a retried message or a second Flower run naming the same submission;
- ``rounds``: each training round of a run (once per round number), with the
  FLOPs and device seconds charged to the contributor, failed rounds included,
  and its DP-SGD accounting entry when the workspace uses differential privacy;
- ``exports``: every reply the node sent -- run, contributor, message type,
  record keys, array shapes, bytes -- so the foundation can show its ethics
  board exactly what left the node and for whom;
- ``holdout_predictions``: each closed run's holdout predictions, kept on the node
  (they never leave it) so that later runs can be compared with it record by record
  (a paired bootstrap);
- ``outbox``: writes to the official record that its store could not take (it was
  down when a run was scored), kept in order until the node delivers them;
- ``cohort_versions``: each version of the cohort file the node served (its digest, schema, a
  hash of each holdout record and the training split's ids), numbered from 1 in the order first
  served;
- ``finals``: each closed run whose weights (initial and final) the node keeps, and the cohort
  version its final score was on; ``rescores``: each re-scoring of a kept run on a later version.

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

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from client.errors import PhaseViolation, PolicyViolation
from client.privacy import Entry, epsilon

#: Phases of a submission, in order.
NEW, SCORED_OUT_OF_THE_BOX, TRAINING, CLOSED = "new", "scored-out-of-the-box", "training", "closed"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS submissions (
    run_id TEXT PRIMARY KEY, contributor TEXT NOT NULL, opened_at REAL NOT NULL,
    phase TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rounds (
    run_id TEXT NOT NULL, contributor TEXT NOT NULL, server_round INTEGER NOT NULL,
    loss REAL, flops INTEGER NOT NULL, device_seconds REAL NOT NULL, at REAL NOT NULL,
    dp_noise REAL, dp_sample_rate REAL, dp_steps INTEGER,
    PRIMARY KEY (run_id, server_round));
CREATE TABLE IF NOT EXISTS exports (
    at REAL NOT NULL, contributor TEXT NOT NULL, run_id TEXT NOT NULL,
    message_type TEXT NOT NULL, keys TEXT NOT NULL, shapes TEXT NOT NULL, bytes INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS holdout_predictions (
    run_id TEXT PRIMARY KEY, holdout TEXT NOT NULL, predictions BLOB NOT NULL, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS cohort_versions (
    version INTEGER PRIMARY KEY AUTOINCREMENT, digest TEXT UNIQUE NOT NULL, schema TEXT NOT NULL,
    n_train INTEGER NOT NULL, n_holdout INTEGER NOT NULL, holdout_rows TEXT NOT NULL,
    train_ids TEXT NOT NULL, first_served REAL NOT NULL);
CREATE TABLE IF NOT EXISTS finals (
    run_id TEXT PRIMARY KEY, contributor TEXT NOT NULL, version INTEGER NOT NULL, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS rescores (
    run_id TEXT NOT NULL, version INTEGER NOT NULL, rescore_run_id TEXT NOT NULL, at REAL NOT NULL,
    PRIMARY KEY (run_id, version));
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, tracking_uri TEXT NOT NULL,
    write TEXT NOT NULL, at REAL NOT NULL);
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


@dataclass(frozen=True)
class Charge:
    """What one submission cost its contributor: a submission slot once its out-of-the-box score
    was recorded (that score is information released), and the rounds that really ran."""

    run_id: str
    contributor: str
    phase: str  # closed: scored to the end; otherwise where it stopped
    rounds: int
    flops: int
    device_seconds: float


@dataclass(frozen=True)
class Kept:
    """A closed run whose weights the node keeps, and the cohort version of its final score."""

    run_id: str
    contributor: str
    version: int


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
            "SELECT COALESCE(SUM(flops), 0), COALESCE(SUM(device_seconds), 0) FROM rounds "
            "WHERE contributor = ?", (contributor,)).fetchone()
        return Usage(int(submissions), int(flops), float(seconds))

    def phase(self, run_id: str) -> str:
        """The submission's phase; ``new`` for a run the node has not seen."""
        with closing(sqlite3.connect(self.path, timeout=60)) as db:
            return self._phase(db, run_id)

    @staticmethod
    def _phase(db: sqlite3.Connection, run_id: str) -> str:
        row = db.execute("SELECT phase FROM submissions WHERE run_id = ?", (run_id,)).fetchone()
        return row[0] if row else NEW

    @staticmethod
    def _require(phase: str, allowed: tuple[str, ...], action: str) -> None:
        if phase not in allowed:
            raise PhaseViolation(
                "submission-phases",
                f"'{action}' is not allowed once the submission is '{phase}' "
                "(order: holdout out of the box, training rounds, final holdout)")

    def open_submission(self, contributor: str, run_id: str, limit: int) -> Usage:
        """Claim a run's out-of-the-box moment, counting it against the contributor's
        submissions; a run gets that moment once, whatever happens after the claim.

        Raises
        ------
        PolicyViolation
            ``submission-limit``, saying how many of the limit are used, or
            ``submission-phases`` for a run that already had its moment.
        """
        with self._write() as db:
            self._require(self._phase(db, run_id), (NEW,), "holdout out of the box")
            used = self._usage(db, contributor)
            if used.submissions >= limit:
                raise PolicyViolation("submission-limit",
                                      f"{used.submissions} of {limit} submissions used; none left")
            db.execute("INSERT INTO submissions VALUES (?, ?, ?, ?)",
                       (run_id, contributor, time.time(), SCORED_OUT_OF_THE_BOX))
            return Usage(used.submissions + 1, used.flops, used.device_seconds)

    def advance(self, run_id: str, allowed: tuple[str, ...], to: str, action: str) -> None:
        """Move a submission to phase ``to``, refusing unless it is in ``allowed``."""
        with self._write() as db:
            self._require(self._phase(db, run_id), allowed, action)
            db.execute("UPDATE submissions SET phase = ? WHERE run_id = ?", (to, run_id))

    def begin_round(self, contributor: str, run_id: str, server_round: int, max_rounds: int,
                    expected_flops: int, budget_flops: int,
                    privacy: tuple[Entry, float, float] | None = None,
                    budget_device_seconds: float = float("inf")) -> None:
        """Reserve a training round before it runs, in one transaction.

        Raises
        ------
        PolicyViolation
            ``submission-phases`` (not after the out-of-the-box score, or after the
            final one), ``round-once`` (that round number already ran),
            ``rounds-range`` (the run's rounds are used up), ``compute-budget``
            (the round would go over the contributor's budget), ``privacy-budget``
            (with ``privacy`` = (this round's accounting entry, delta, epsilon budget):
            the round would take the contributor's epsilon over budget), ``device-time-budget``
            (the contributor's device seconds are used up).
        """
        with self._write() as db:
            self._require(self._phase(db, run_id), (SCORED_OUT_OF_THE_BOX, TRAINING), "train")
            if db.execute("SELECT 1 FROM rounds WHERE run_id = ? AND server_round = ?",
                          (run_id, server_round)).fetchone():
                raise PolicyViolation("round-once", "each round number trains once per submission")
            (done,) = db.execute("SELECT COUNT(*) FROM rounds WHERE run_id = ?", (run_id,)).fetchone()
            if done >= max_rounds:
                raise PolicyViolation("rounds-range", f"the submission's {max_rounds} rounds are used")
            usage = self._usage(db, contributor)
            if usage.device_seconds >= budget_device_seconds:
                raise PolicyViolation("device-time-budget", f"the {budget_device_seconds:g} device "
                                      "seconds of the contributor's budget are used")
            used = usage.flops
            if used + expected_flops > budget_flops:
                left = max(budget_flops - used, 0) / 1e15
                raise PolicyViolation("compute-budget",
                                      f"{left:.6g} PF of {budget_flops / 1e15:.6g} PF left; "
                                      f"this round needs about {expected_flops / 1e15:.6g} PF")
            entry = None
            if privacy is not None:
                entry, delta, epsilon_budget = privacy
                spent = epsilon([*self._privacy_history(db, contributor), entry], delta)
                if spent > epsilon_budget:
                    raise PolicyViolation(
                        "privacy-budget", f"this round would spend epsilon {spent:.3g} at delta "
                        f"{delta:g}, over the budget of {epsilon_budget:g}")
            db.execute("INSERT INTO rounds VALUES (?, ?, ?, NULL, 0, 0, ?, ?, ?, ?)",
                       (run_id, contributor, server_round, time.time(), *(entry or (None,) * 3)))
            db.execute("UPDATE submissions SET phase = ? WHERE run_id = ?", (TRAINING, run_id))

    def finish_round(self, run_id: str, server_round: int, loss: float | None, flops: int,
                     device_seconds: float) -> None:
        """Charge a reserved round with what it cost (``loss`` None: the round failed)."""
        with self._write() as db:
            db.execute("UPDATE rounds SET loss = ?, flops = ?, device_seconds = ? "
                       "WHERE run_id = ? AND server_round = ?",
                       (loss, int(flops), float(device_seconds), run_id, server_round))

    def privacy_spent(self, contributor: str, delta: float) -> float:
        """Epsilon at ``delta`` spent by all the contributor's DP rounds on this node."""
        with closing(sqlite3.connect(self.path, timeout=60)) as db:
            return epsilon(self._privacy_history(db, contributor), delta)

    @staticmethod
    def _privacy_history(db: sqlite3.Connection, contributor: str) -> list[Entry]:
        return [(float(a), float(b), int(c)) for a, b, c in db.execute(
            "SELECT dp_noise, dp_sample_rate, dp_steps FROM rounds WHERE contributor = ? "
            "AND dp_noise IS NOT NULL", (contributor,))]

    def rounds(self, run_id: str) -> list[tuple[int, float | None, int, float]]:
        """A run's rounds: (round, loss, FLOPs, device seconds), in round order."""
        with closing(sqlite3.connect(self.path, timeout=60)) as db:
            return db.execute("SELECT server_round, loss, flops, device_seconds FROM rounds "
                              "WHERE run_id = ? ORDER BY server_round", (run_id,)).fetchall()

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

    def keep_predictions(self, run_id: str, holdout: str, predictions: np.ndarray) -> dict[str, np.ndarray]:
        """Keep a closed run's holdout predictions (class indices) under the holdout's key; return
        those of the other runs kept for the same holdout, oldest first. One transaction: of two
        runs closing at once, the later one always sees the earlier."""
        with self._write() as db:
            rows = db.execute("SELECT run_id, predictions FROM holdout_predictions WHERE holdout = ? "
                              "AND run_id != ? ORDER BY at", (holdout, run_id)).fetchall()
            db.execute("INSERT OR REPLACE INTO holdout_predictions VALUES (?, ?, ?, ?)",
                       (run_id, holdout, predictions.astype(np.int8).tobytes(), time.time()))
        return {other: np.frombuffer(blob, dtype=np.int8).astype(np.int64) for other, blob in rows}

    def export_totals(self, run_id: str) -> tuple[int, int]:
        """Replies sent and their bytes, for one run."""
        with closing(sqlite3.connect(self.path, timeout=60)) as db:
            count, size = db.execute("SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM exports "
                                     "WHERE run_id = ?", (run_id,)).fetchone()
        return int(count), int(size)

    def queue_write(self, run_id: str, tracking_uri: str, write: dict) -> None:
        """Keep one write to the official record until its store takes it."""
        with self._write() as db:
            db.execute("INSERT INTO outbox (run_id, tracking_uri, write, at) VALUES (?, ?, ?, ?)",
                       (run_id, tracking_uri, json.dumps(write), time.time()))

    def queued_writes(self, run_id: str | None = None) -> list[tuple[int, str, str, dict]]:
        """``(seq, run_id, tracking_uri, write)`` not yet delivered, oldest first."""
        query = "SELECT seq, run_id, tracking_uri, write FROM outbox" + (
            " WHERE run_id = ?" if run_id else "") + " ORDER BY seq"
        with closing(sqlite3.connect(self.path, timeout=60)) as db:
            rows = db.execute(query, (run_id,) if run_id else ()).fetchall()
        return [(seq, run, uri, json.loads(write)) for seq, run, uri, write in rows]

    def delivered(self, seq: int) -> None:
        """One queued write reached the official record."""
        with self._write() as db:
            db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))

    def charges(self, contributor: str | None = None) -> list[Charge]:
        """Each submission the node opened, oldest first, with what it charged."""
        query = ("SELECT s.run_id, s.contributor, s.phase, COUNT(r.server_round), "
                 "COALESCE(SUM(r.flops), 0), COALESCE(SUM(r.device_seconds), 0) FROM submissions s "
                 "LEFT JOIN rounds r ON r.run_id = s.run_id"
                 + (" WHERE s.contributor = ?" if contributor else "")
                 + " GROUP BY s.run_id ORDER BY s.opened_at")
        with closing(sqlite3.connect(self.path, timeout=60)) as db:
            rows = db.execute(query, (contributor,) if contributor else ()).fetchall()
        return [Charge(*row) for row in rows]

    def cohort_version(self, digest: str, schema: str, train_ids: set[str], holdout_rows: set[str],
                       min_change: int) -> int:
        """The version number of the cohort file with ``digest``, numbering it if it is new.

        ``holdout_rows`` hashes each holdout record (id, label and values). A new version's holdout
        must equal each earlier version's or differ from it in at least ``min_change`` records:
        the difference of one model's scores on two holdouts is a count over the records that
        differ, and over fewer than ``min_change`` of them it is a fact about a few patients.

        Raises
        ------
        PolicyViolation
            ``cohort-version-change``, naming the version and the number of records.
        """
        with self._write() as db:
            row = db.execute("SELECT version FROM cohort_versions WHERE digest = ?", (digest,)).fetchone()
            if row:
                return int(row[0])
            for version, rows in db.execute("SELECT version, holdout_rows FROM cohort_versions"):
                differ = len(holdout_rows.symmetric_difference(json.loads(rows)))
                if 0 < differ < min_change:
                    raise PolicyViolation(
                        "cohort-version-change",
                        f"the holdout differs from cohort version {version}'s in {differ} record(s); "
                        f"the node serves a new version only when none or at least {min_change} differ "
                        "(policy eda_min_cell): a score's change between versions would otherwise be "
                        "a fact about fewer patients")
            cursor = db.execute("INSERT INTO cohort_versions (digest, schema, n_train, n_holdout, "
                                "holdout_rows, train_ids, first_served) VALUES (?, ?, ?, ?, ?, ?, ?)",
                                (digest, schema, len(train_ids), len(holdout_rows),
                                 json.dumps(sorted(holdout_rows)), json.dumps(sorted(train_ids)),
                                 time.time()))
            return int(cursor.lastrowid)

    def training_ids(self, version: int) -> set[str]:
        """The record ids of a cohort version's training split."""
        with closing(sqlite3.connect(self.path, timeout=60)) as db:
            row = db.execute("SELECT train_ids FROM cohort_versions WHERE version = ?", (version,)).fetchone()
        return set(json.loads(row[0])) if row else set()

    def keep_final(self, run_id: str, contributor: str, version: int) -> None:
        """A closed run's weights are kept on the node; its final score was on ``version``."""
        with self._write() as db:
            db.execute("INSERT OR REPLACE INTO finals VALUES (?, ?, ?, ?)",
                       (run_id, contributor, version, time.time()))

    def finals(self) -> list[Kept]:
        """Every closed run whose weights the node keeps, oldest first."""
        with closing(sqlite3.connect(self.path, timeout=60)) as db:
            return [Kept(*row) for row in db.execute(
                "SELECT run_id, contributor, version FROM finals ORDER BY at")]

    def claim_rescore(self, run_id: str, version: int) -> bool:
        """Claim the re-scoring of ``run_id`` on ``version``; False (nothing written) when another
        has it. ``rescored_as`` names its run once made; ``release_rescore`` drops a failed claim."""
        with self._write() as db:
            if db.execute("SELECT 1 FROM rescores WHERE run_id = ? AND version = ?",
                          (run_id, version)).fetchone():
                return False
            db.execute("INSERT INTO rescores VALUES (?, ?, '', ?)", (run_id, version, time.time()))
            return True

    def rescored_as(self, run_id: str, version: int, rescore_run_id: str) -> None:
        """The claimed re-scoring's run."""
        with self._write() as db:
            db.execute("UPDATE rescores SET rescore_run_id = ? WHERE run_id = ? AND version = ?",
                       (rescore_run_id, run_id, version))

    def release_rescore(self, run_id: str, version: int) -> None:
        """Drop a claim whose re-scoring failed, so that it can be tried again."""
        with self._write() as db:
            db.execute("DELETE FROM rescores WHERE run_id = ? AND version = ?", (run_id, version))

    def rescored(self, run_id: str, version: int) -> str | None:
        """The run that re-scored ``run_id`` on ``version``, if any."""
        with closing(sqlite3.connect(self.path, timeout=60)) as db:
            row = db.execute("SELECT rescore_run_id FROM rescores WHERE run_id = ? AND version = ?",
                             (run_id, version)).fetchone()
        return row[0] if row else None

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
