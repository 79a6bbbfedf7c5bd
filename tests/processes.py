"""The engine processes a test must not leave behind."""

from __future__ import annotations

import subprocess
import time


def engine_processes() -> str:
    """Live engine processes (zombies are dead: they only wait for this VM's init to reap them)."""
    pattern = "ray::|raylet|gcs_server|ClientAppActor|multiprocessing-fork|spawn_main"
    found = subprocess.run(["pgrep", "-a", "-f", pattern], capture_output=True, text=True)
    return "\n".join(line[:120] for line in found.stdout.splitlines()
                     if "pgrep" not in line and "<defunct>" not in line)


def engine_processes_after(seconds: float) -> str:
    """The engine processes still live after waiting up to ``seconds`` for them to exit."""
    deadline = time.monotonic() + seconds
    while (left := engine_processes()) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left
