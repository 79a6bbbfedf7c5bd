"""Stopping the demo half-way leaves no process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from processes import engine_processes_after


def test_sigterm_during_the_demo_stops_its_runs_and_their_engines(tmp_path):
    left = engine_processes_after(10)
    assert left == "", f"another test left engine processes running: {left}"
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr-home")}
    demo = subprocess.Popen([sys.executable, "-m", "server.cli", "demo", f"output_dir={tmp_path}",
                             "++pretrain.epochs=1"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in demo.stdout:  # wait until both parallel runs are under way
            if "holdout out of the box recorded" in line:
                break
        demo.send_signal(signal.SIGTERM)
        demo.wait(timeout=60)
    finally:
        if demo.poll() is None:
            demo.kill()
    assert demo.returncode != 0
    assert engine_processes_after(30) == ""
