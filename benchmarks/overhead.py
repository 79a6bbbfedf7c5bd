"""Per-round overhead of a run through Flower against the same training in a plain loop.

Both sides train the same model on the same resident cohort with the same
``train_local``; the difference per round is what Flower's simulation engine,
message serialisation, the node's checks and the strategy cost. Prints a table;
asserts nothing. Usage::

    python benchmarks/overhead.py [--rounds 30] [--model mlp]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from itertools import pairwise
from pathlib import Path

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from client.node import ResidentCohort  # noqa: E402
from client.settings import NodeSettings  # noqa: E402
from client.training import FlopMeter, TrainConfig, train_local  # noqa: E402
from contract.submission import Submission  # noqa: E402
from models import ModelSpec, build_model  # noqa: E402
from server.signing import WorkspaceSigner  # noqa: E402
from server.workspace import Workspace, simulate  # noqa: E402
from synthetic.disease import generate_cohort  # noqa: E402


def federated(node: NodeSettings, signer: WorkspaceSigner, submission: Submission
              ) -> dict[str, float | list[float]]:
    """Timestamps of one Flower run's phases and rounds."""
    stamps: dict[str, list[float]] = {"out_of_the_box": [], "round": [], "fine_tuned": []}
    workspace = Workspace(node, "overhead-benchmark", signer)
    opened = workspace.open_run(submission, batch="benchmark")
    started = time.perf_counter()
    error = simulate(workspace.run_config(opened), node, verbose=False,
                     progress=lambda phase, done, total: stamps[phase].append(time.perf_counter()))
    finished = time.perf_counter()
    workspace.close_run(opened, error)
    if error:
        raise RuntimeError(error)
    rounds = stamps["round"]  # round 0 (start) then one stamp after each round
    return {"startup": stamps["out_of_the_box"][0] - started,
            "per_round": [b - a for a, b in pairwise(rounds)],
            "final": stamps["fine_tuned"][0] - rounds[-1], "after_final": finished - stamps["fine_tuned"][0],
            "total": finished - started}


def local(node: NodeSettings, submission: Submission) -> list[float]:
    """Seconds per round of the same training in a plain loop."""
    cohort = ResidentCohort(node)
    model = build_model(submission.model, cohort.standard.pipeline.n_features, len(cohort.classes),
                        submission.seed)
    meter, times = FlopMeter(), []
    for server_round in range(1, submission.num_rounds + 1):
        started = time.perf_counter()
        train_local(model, cohort.standard.x_train, cohort.y_train,
                    TrainConfig(lr=submission.lr, local_epochs=submission.local_epochs,
                                batch_size=submission.batch_size, server_round=server_round), meter)
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--model", default="mlp", choices=["linear", "mlp"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cohort.parquet"
        generate_cohort(0).to_parquet(path, index=False)
        signer = WorkspaceSigner(Path(tmp) / "workspace" / "grant-key.pem")
        node = NodeSettings(data_path=str(path), tracking_uri=f"sqlite:///{tmp}/mlflow.db",
                            state_dir=f"{tmp}/node-state", workspace_key=str(signer.public_key_path))
        submission = Submission(
            contributor="bench", strategy={"_target_": "flwr.serverapp.strategy.FedAvg",
                                           "fraction_evaluate": 0.0},
            model=ModelSpec(args.model, {"hidden": [64]} if args.model == "mlp" else {}),
            lr=0.05, batch_size=32, local_epochs=1, num_rounds=args.rounds)
        fed = federated(node, signer, submission)
        loop = local(node, submission)
    # round 1 also pays first-use costs (torch's optimizer imports torch._dynamo): shown apart
    fed_rounds, loop_rounds = fed["per_round"][1:], loop[1:]
    rows = [
        ("Flower simulation, per round (rounds 2..N)", statistics.median(fed_rounds),
         statistics.mean(fed_rounds), max(fed_rounds)),
        ("plain local loop, per round (rounds 2..N)", statistics.median(loop_rounds),
         statistics.mean(loop_rounds), max(loop_rounds)),
        ("overhead per round (Flower - plain)",
         statistics.median(fed_rounds) - statistics.median(loop_rounds),
         statistics.mean(fed_rounds) - statistics.mean(loop_rounds), float("nan")),
    ]
    print(f"{args.rounds} rounds, model {args.model}, 512 records, batch 32, 1 local epoch\n")
    print(f"{'':45} {'median ms':>10} {'mean ms':>10} {'max ms':>10}")
    for name, med, mean, worst in rows:
        print(f"{name:45} {1e3 * med:10.1f} {1e3 * mean:10.1f} {1e3 * worst:10.1f}")
    print(f"\nFlower run phases: start to out-of-the-box recorded {fed['startup']:.2f} s, "
          f"round 1 {1e3 * fed['per_round'][0]:.0f} ms (plain loop: {1e3 * loop[0]:.0f} ms), "
          f"final holdout {fed['final']:.2f} s, "
          f"engine shutdown {fed['after_final']:.2f} s, total {fed['total']:.2f} s")


if __name__ == "__main__":
    main()
