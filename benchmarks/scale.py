"""The node at scale: load, validate, features, one training epoch, holdout scoring and group
importance, from 150 to 100,000 records and from 50 to 20,000 gene columns, on the registry
cohort of another shape (``synthetic/registry.py``, read with ``conf/dictionary/registry.yaml``).

Each size's file is written by one process and read by a fresh one, whose peak memory
(``ru_maxrss``) is the node's own; it is shown beside the size of the node's feature tensors. The
epoch is the node's own ``train_local`` (plain SGD, the node's batch partition and FLOP meter)
beside a plain torch loop over the same tensors and batch size (the faster of two, alternated):
what the node's rules cost.
Prints a table; asserts nothing. Usage::

    python benchmarks/scale.py [--sizes 150x50 6400x20000 ...] [--model linear|mlp]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DICTIONARY = ROOT / "conf" / "dictionary" / "registry.yaml"
SIZES = ("150x50", "150x20000", "6400x2000", "6400x20000", "100000x50", "100000x2000", "100000x20000")


def make(records: int, genes: int, path: Path) -> None:
    """Write the registry cohort of one size (a row group at a time)."""
    from synthetic.registry import write_registry

    write_registry(path, 0, n_records=records, n_genes=genes)


def measure(records: int, genes: int, model_name: str, path: Path) -> dict[str, float]:
    """One size, in this process: seconds per phase, peak memory and tensor sizes."""
    import torch

    from client.cohort import load_cohort, split_cohort
    from client.importance import column_groups, permutation_importance
    from client.node import ResidentCohort
    from client.policy import NodePolicy
    from client.settings import NodeSettings
    from client.training import FlopMeter, TrainConfig, predict, train_local
    from models import ModelSpec, build_for

    torch.set_num_threads(2)
    folder = path.parent
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    holdout = max(30, min(128, records // 5))
    settings = NodeSettings(data_path=str(path), tracking_uri="", state_dir=str(folder / "state"),
                            device="cpu", dictionary=str(DICTIONARY), holdout_size=holdout,
                            policy=NodePolicy(dp_enabled=False))
    started = time.perf_counter()
    cohort = load_cohort(path, DICTIONARY)
    split_cohort(cohort, holdout)
    load = time.perf_counter() - started
    del cohort
    started = time.perf_counter()
    resident = ResidentCohort(settings)  # load, validate, split, fit the standard features, tensors
    view = resident.standard
    resident_seconds = time.perf_counter() - started
    n_classes = len(resident.classes)
    spec = ModelSpec(model_name, {"hidden": [64]} if model_name == "mlp" else {})
    model = build_for(spec, view.pipeline, n_classes, 0)
    config = TrainConfig(lr=0.05, local_epochs=1, batch_size=32, seed=0)
    meter = FlopMeter()  # as the node's: each step shape counted once, on its first step
    train_local(model, view.x_train[:64], resident.y_train[:64], config, meter)  # warm-up, the count
    plain = build_for(spec, view.pipeline, n_classes, 0)
    optimizer = torch.optim.SGD(plain.parameters(), lr=0.05)
    loss = torch.nn.CrossEntropyLoss()

    def plain_epoch() -> None:
        order = torch.randperm(len(resident.y_train))
        for start in range(0, len(order), 32):
            batch = order[start:start + 32]
            optimizer.zero_grad()
            loss(plain(view.x_train[batch]), resident.y_train[batch]).backward()
            optimizer.step()

    node_epochs, plain_epochs = [], []
    for _ in range(2):  # alternated, the faster of two each: the machine is shared
        started = time.perf_counter()
        train_local(model, view.x_train, resident.y_train, config, meter)
        node_epochs.append(time.perf_counter() - started)
        started = time.perf_counter()
        plain_epoch()
        plain_epochs.append(time.perf_counter() - started)

    started = time.perf_counter()
    predict(model, view.x_holdout)
    score = time.perf_counter() - started
    groups = column_groups(list(resident.schema.feature_columns), groups=resident.schema.groups)
    started = time.perf_counter()
    permutation_importance(lambda frame: predict(model, resident.tensor(view.pipeline, frame)).numpy(),
                           resident.holdout_frame, resident.y_holdout.numpy(), n_classes, groups, seed=0)
    importance = time.perf_counter() - started
    tensors = (view.x_train.nbytes + view.x_holdout.nbytes) / 2**20
    return {"records": records, "genes": genes, "load_s": load, "resident_s": resident_seconds,
            "node_epoch_s": min(node_epochs), "plain_epoch_s": min(plain_epochs), "score_s": score,
            "importance_s": importance, "groups": len(groups), "tensors_mb": tensors,
            "file_mb": path.stat().st_size / 2**20, "before_mb": baseline,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), help="RECORDSxGENES")
    parser.add_argument("--model", default="linear", choices=("linear", "mlp"))
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--make", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        records, genes = map(int, args.one.split("x"))
        if args.make:
            make(records, genes, args.file)
        else:
            print(json.dumps(measure(records, genes, args.model, args.file)))
        return
    print(f"model {args.model}; seconds; memory in MB (peak RSS of the process that reads the file; "
          "'before': its imports, before the node read it)")
    header = ("records", "genes", "file", "load+check", "node ready", "node epoch", "plain epoch",
              "score", "importance (groups)", "tensors", "before", "peak")
    print(" | ".join(header))
    print(" | ".join("---" for _ in header))
    for size in args.sizes:
        path = Path(tempfile.mkdtemp(prefix="cohortfl-scale-")) / "registry.parquet"
        subprocess.run([sys.executable, __file__, "--one", size, "--make", "--file", str(path)], check=True)
        done = subprocess.run([sys.executable, __file__, "--one", size, "--model", args.model, "--file",
                               str(path)], capture_output=True, text=True)
        shutil.rmtree(path.parent, ignore_errors=True)
        if done.returncode != 0:
            why = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode
            print(f"{size}: failed ({why})")
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        print(" | ".join([f"{r['records']:,}", f"{r['genes']:,}", f"{r['file_mb']:.0f}", f"{r['load_s']:.2f}",
                          f"{r['resident_s']:.2f}", f"{r['node_epoch_s']:.3f}", f"{r['plain_epoch_s']:.3f}",
                          f"{r['score_s']:.4f}", f"{r['importance_s']:.2f} ({r['groups']})",
                          f"{r['tensors_mb']:.0f}", f"{r['before_mb']:.0f}", f"{r['peak_mb']:.0f}"]),
              flush=True)


if __name__ == "__main__":
    main()
