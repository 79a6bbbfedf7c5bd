"""Seconds per round on the deployment engine (loopback) against the simulation engine.

Both engines run the same submission (FedAvg + linear, the pilot's DP policy) on the same
synthetic cohort: short and long runs, so that the per-round cost (the slope) and the fixed
cost per submission (the intercept) come apart. The deployment side is the real topology
of ``cohortfl loopback``: TLS, the fleet gate, the sandboxed ServerApp, the node's executor,
an MLflow server; its node reports where each message's time went. Prints a table; asserts
nothing. Needs root (the ServerApp sandbox). Usage::

    python benchmarks/deployment.py [--rounds 2 20] [--repeats 1]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import yaml  # noqa: E402

from client.settings import NodeSettings  # noqa: E402
from contract.submission import Submission  # noqa: E402
from models import ModelSpec  # noqa: E402
from server.intake_service import submit_to_workspace  # noqa: E402
from server.loopback import start_loopback  # noqa: E402
from server.signing import WorkspaceSigner  # noqa: E402
from server.workspace import Workspace, simulate  # noqa: E402
from synthetic.disease import generate_cohort  # noqa: E402

STRATEGY = {"_target_": "flwr.serverapp.strategy.FedAvg", "fraction_evaluate": 0.0}


def simulation_seconds(folder: Path, rounds: int, contributor: str) -> float:
    """Wall seconds of one submission on the simulation engine (engine start included)."""
    cohort = folder / "cohort.parquet"
    folder.mkdir(parents=True, exist_ok=True)
    if not cohort.is_file():
        generate_cohort(0).to_parquet(cohort, index=False)
    signer = WorkspaceSigner(folder / "workspace" / "grant-key.pem")
    node = NodeSettings(data_path=str(cohort), tracking_uri=f"sqlite:///{folder}/mlflow.db",
                        state_dir=str(folder / "node-state"), workspace_key=str(signer.public_key_path))
    workspace = Workspace(node, "deployment-benchmark", signer)
    opened = workspace.open_run(Submission(contributor=contributor, strategy=STRATEGY,
                                           model=ModelSpec("linear"), lr=0.1, batch_size=32,
                                           local_epochs=1, num_rounds=rounds))
    started = time.perf_counter()
    error = simulate(workspace.run_config(opened), node, verbose=False, progress=None)
    seconds = time.perf_counter() - started
    if not workspace.close_run(opened, error).ok:
        raise RuntimeError(error)
    return seconds


def deployment_seconds(loop, rounds: int, contributor: str) -> float:
    """Wall seconds of one submission through the intake, from upload to the workspace's answer."""
    folder = loop.root / f"package-{contributor}"
    folder.mkdir(exist_ok=True)
    (folder / "submission.yaml").write_text(yaml.safe_dump({
        "strategy": STRATEGY, "model": {"name": "linear"}, "lr": 0.1, "batch_size": 32}))
    loop.workspace.overrides = (f"workspace.num_rounds={rounds}",)  # read per submission
    started = time.perf_counter()
    answer = submit_to_workspace(folder, loop.intake_url, loop.workspace.layout.ca,
                                 loop.tokens[contributor].read_text().strip())
    seconds = time.perf_counter() - started
    if not answer.get("ok"):
        raise RuntimeError(answer)
    return seconds


def node_times(node_log: Path) -> dict[str, float]:
    """Mean seconds per train message on the node: pulling it, the node's work, pushing the reply."""
    found = re.findall(r"served train: pull ([\d.]+) s, node ([\d.]+) s, push ([\d.]+) s",
                       node_log.read_text(errors="replace"))
    return {name: statistics.mean(float(row[i]) for row in found)
            for i, name in enumerate(("pull", "node", "push"))} if found else {}


def fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares (fixed seconds, seconds per round)."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.mean(xs), statistics.mean(ys)
    slope = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x in xs)
    return my - slope * mx, slope


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, nargs="+", default=[2, 20])
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    runs = [(r, i) for r in args.rounds for i in range(args.repeats)]
    contributors = [f"c{i}" for i in range(len(runs))]
    results: dict[str, list[tuple[int, float]]] = {"simulation": [], "deployment": []}
    with tempfile.TemporaryDirectory(prefix="cohortfl-bench-") as tmp:
        for (rounds, _), who in zip(runs, contributors, strict=True):
            results["simulation"].append((rounds, simulation_seconds(Path(tmp) / "sim", rounds, who)))
        started = time.perf_counter()
        loop = start_loopback(Path(tmp) / "loopback", contributors=tuple(contributors), log=lambda *_: None)
        bring_up = time.perf_counter() - started
        try:
            for (rounds, _), who in zip(runs, contributors, strict=True):
                results["deployment"].append((rounds, deployment_seconds(loop, rounds, who)))
            per_message = node_times(loop.root / "node.log")
        finally:
            loop.stop()
    print(f"\nbring-up of the loopback topology (workspace + node, until the node is online): "
          f"{bring_up:.1f} s\n")
    print(f"{'engine':12} " + " ".join(f"{f'{r} rounds (s)':>15}" for r in args.rounds)
          + f" {'fixed (s)':>10} {'per round (s)':>14}")
    for engine, points in results.items():
        cells = [statistics.mean(s for r, s in points if r == rounds) for rounds in args.rounds]
        fixed, slope = fit(points) if len(set(args.rounds)) > 1 else (float("nan"), float("nan"))
        print(f"{engine:12} " + " ".join(f"{c:15.1f}" for c in cells) + f" {fixed:10.1f} {slope:14.2f}")
    if per_message:
        print(f"\nper train message on the deployed node: pulling it {per_message['pull']:.3f} s, "
              f"the node's work {per_message['node']:.3f} s, pushing the reply {per_message['push']:.3f} s;"
              "\nthe rest of a round is Flower's transport: the SuperNode polls the SuperLink every 3 s "
              "when it has no message.")


if __name__ == "__main__":
    main()
