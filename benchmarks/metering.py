"""What FLOP metering costs, and whether its counts are exact.

Each variant trains the same model for the same rounds in a fresh process (the
counter's first use in a process imports ``torch._dynamo``, so a shared process
would hide that cost):

- plain: the training loop with no metering at all;
- metered, cold: a node process that has never counted this step shape;
- metered, warm store: the node's FLOP store already holds the count.

Prints a table; asserts nothing. Usage: ``python benchmarks/metering.py [--rounds 20]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def analytic_flops(model: str, n: int, n_in: int, hidden: int, n_out: int) -> int:
    """Matmul FLOPs of one epoch: forward, weight gradients, input gradients past layer 1."""
    if model == "linear":
        return 2 * n * n_in * n_out * 2
    return 2 * n * (2 * n_in * hidden + 3 * hidden * n_out)


def run_variant(variant: str, model_name: str, rounds: int, store: str) -> dict[str, float]:
    """Train in this process; return seconds and FLOPs (called in a fresh process)."""
    import torch

    from client.training import FlopMeter, TrainConfig, train_local
    from models import ModelSpec, build_model

    class NoMeter(FlopMeter):
        def run(self, shape_key, step):  # the plain loop: no counting
            step()

    torch.set_num_threads(1)  # as in the node's engine actor (one CPU per node)
    torch.manual_seed(0)
    x, y = torch.randn(512, 255), torch.randint(0, 3, (512,))
    spec = ModelSpec(model_name, {"hidden": [64]} if model_name == "mlp" else {})
    model = build_model(spec, 255, 3)
    meter = NoMeter() if variant == "plain" else FlopMeter(store or None)
    times = []
    for server_round in range(1, rounds + 1):
        started = time.perf_counter()
        train_local(model, x, y, TrainConfig(lr=0.05, local_epochs=1, batch_size=32,
                                             server_round=server_round), meter)
        times.append(time.perf_counter() - started)
    return {"first": times[0], "rest": statistics.median(times[1:]), "flops": meter.total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--model", default="mlp", help=argparse.SUPPRESS)
    parser.add_argument("--store", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.model, args.rounds, args.store)))
        return

    def fresh(variant: str, model: str, store: str = "") -> dict[str, float]:
        out = subprocess.run([sys.executable, __file__, "--variant", variant, "--model", model,
                              "--rounds", str(args.rounds), "--store", store],
                             capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    print(f"{args.rounds} rounds x 1 epoch, 512 records, batch 32, one thread; each variant in a "
          f"fresh process, medians of {args.repeats} processes\n")
    print(f"{'model':7} {'variant':20} {'round 1 ms':>10} {'rounds 2.. ms':>14} {'vs plain':>9} "
          f"{'FLOPs counted':>14} {'analytic':>14}")
    for model in ("linear", "mlp"):
        expected = args.rounds * analytic_flops(model, 512, 255, 64, 3)
        runs: dict[str, list[dict[str, float]]] = {"plain": [], "metered, cold": [],
                                                   "metered, warm store": []}
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as tmp:
                store = str(Path(tmp) / "flops.sqlite")
                runs["plain"].append(fresh("plain", model))
                runs["metered, cold"].append(fresh("metered", model, store))
                runs["metered, warm store"].append(fresh("metered", model, store))
        plain_rest = statistics.median(r["rest"] for r in runs["plain"])
        for name, results in runs.items():
            first = statistics.median(r["first"] for r in results)
            rest = statistics.median(r["rest"] for r in results)
            counted = f"{results[0]['flops']:.0f}" if name != "plain" else "-"
            print(f"{model:7} {name:20} {1e3 * first:10.1f} {1e3 * rest:14.2f} "
                  f"{(rest / plain_rest - 1) * 100:+8.1f}% {counted:>14} {expected:>14}")


if __name__ == "__main__":
    main()
