"""Secrets created once: processes starting at the same moment agree on one, never a half."""

from __future__ import annotations

import multiprocessing
import os
import stat

from contract.files import create_once


def _race(path: str, start, results) -> None:
    start.wait()
    try:
        results.put(create_once(path, os.urandom(32)))
    except OSError as ex:
        results.put(repr(ex).encode())


def test_processes_racing_to_create_a_secret_all_read_the_same_whole_one(tmp_path):
    context = multiprocessing.get_context("fork")
    for attempt in range(5):
        path = tmp_path / f"state{attempt}" / "secret"
        start, results = context.Barrier(8), context.Queue()
        racers = [context.Process(target=_race, args=(str(path), start, results)) for _ in range(8)]
        for racer in racers:
            racer.start()
        seen = [results.get(timeout=30) for _ in racers]
        for racer in racers:
            racer.join()
        assert len(set(seen)) == 1 and len(seen[0]) == 32, seen
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert [p.name for p in path.parent.iterdir()] == ["secret"]  # no staging file left
