"""Quality of the reference submissions, the standard approaches and the Bayes ceiling.

For each cohort seed, the synthetic cohort is drawn, split 512/128 by the node's own split,
and scored:

- **federated**: the demo's four reference submissions through Flower's simulation engine
  (``cohortfl demo cohort.seed=S``), as the node records them;
- **central**: the same references (same pipeline, model, initial weights, rounds, epochs,
  batch size, proximal term and learning-rate schedule) trained in a plain local loop.
  For FedAvg with one node this is the same computation (the node's shuffles differ: they
  come from its secret); FedAdam's server-side optimiser is not reproduced;
- **standard approaches** on the raw features (scikit-learn: tuned logistic regression,
  gradient boosting, random forest, MLP) and **gene sets + interactions** from scratch
  (logistic regression on public gene-set means, clinical columns and set x clinical
  products): what a contributor gets without pretraining;
- **declared heads and penalties**: the gene-set features with a linear model and a multinomial
  head, an ordinal (proportional-odds) head, and an ordinal head with an elastic net, trained as
  the node trains them;
- the **Bayes-optimal classifier** (the generator's true posterior): the ceiling.

Every model is also scored on a large independent draw (10,000 records) of the same disease,
which removes the holdout's sampling noise; the noise floor itself is the sd of a fixed
classifier's macro-F1 over many random 128-record holdouts. Prints markdown tables; asserts
nothing. Usage::

    python benchmarks/quality.py [--seeds 5] [--no-federated]
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier  # noqa: E402
from sklearn.linear_model import LogisticRegressionCV  # noqa: E402
from sklearn.metrics import f1_score, recall_score  # noqa: E402
from sklearn.neural_network import MLPClassifier  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from client.cohort import load_cohort, split_cohort  # noqa: E402
from client.training import FlopMeter, TrainConfig, predict, train_local  # noqa: E402
from contract.schema import SCHEMA  # noqa: E402
from contract.submission import Submission  # noqa: E402
from models import build_for  # noqa: E402
from models.pipeline import FeatureSpec  # noqa: E402
from server.config import load_job  # noqa: E402
from server.leaderboard import read_leaderboard  # noqa: E402
from synthetic.disease import CLASS_COUNTS, generate_cohort, public_gene_sets, true_posterior  # noqa: E402
from synthetic.pretraining import with_pretrained_weights  # noqa: E402

FAST = SCHEMA.classes.index("Fast")
LARGE = 10_000
#: Clinical columns a contributor reads as stage, functional score and treatment lines.
INTERACTING = ("clinical_0", "clinical_1", "clinical_3")


def scores(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[float, float]:
    """Macro-F1 and Fast recall."""
    return (float(f1_score(y_true, y_pred, average="macro")),
            float(recall_score(y_true, y_pred, labels=[FAST], average=None)[0]))


def raw_matrix(frame: pd.DataFrame) -> np.ndarray:
    """The 250 numeric columns and the one-hot categoricals, unscaled."""
    one_hot = [pd.get_dummies(pd.Categorical(frame[c], categories=levels)).to_numpy(float)
               for c, levels in SCHEMA.categorical.items()]
    return np.hstack([frame[list(SCHEMA.numeric)].to_numpy(float), *one_hot])


def standard_approaches() -> dict[str, object]:
    """scikit-learn models on the raw features, tuned by cross-validation on the training split only."""
    return {
        "logistic regression (tuned C)": make_pipeline(
            StandardScaler(), LogisticRegressionCV(Cs=np.logspace(-3, 1, 9), cv=5, max_iter=3000)),
        "gradient boosting": HistGradientBoostingClassifier(learning_rate=0.05, max_iter=300,
                                                            early_stopping=True, random_state=0),
        "random forest": RandomForestClassifier(n_estimators=500, random_state=0, n_jobs=2),
        "MLP (sklearn, 64 units)": make_pipeline(
            StandardScaler(), MLPClassifier((64,), alpha=1.0, max_iter=2000, random_state=0)),
    }


GENE_SETS_SPEC = FeatureSpec(gene_sets={k: tuple(v) for k, v in public_gene_sets().items()},
                             raw=("clinical", "signature"), interactions=INTERACTING,
                             interaction_left="gene_sets")


def gene_sets_approach() -> object:
    """Logistic regression on public gene-set means, clinical, signatures and set x clinical terms."""
    return LogisticRegressionCV(Cs=np.logspace(-3, 1, 9), cv=5, max_iter=3000)


def central(sub: Submission, train: pd.DataFrame, y_train: np.ndarray, evaluations: dict[str, pd.DataFrame],
            seed: int) -> dict[str, np.ndarray]:
    """A reference trained in a plain loop, with the federated run's pipeline, weights and schedule;
    returns predictions per evaluation frame, and out of the box under ``out_of_the_box:<name>``."""
    pipeline = SCHEMA.pipeline(sub.features).fit(train)
    model = build_for(sub.model, pipeline, len(SCHEMA.classes), sub.seed)
    if sub.initial_weights:
        with np.load(io.BytesIO(base64.b64decode(sub.initial_weights))) as npz:
            model.load_state_dict({k: torch.from_numpy(npz[k]) for k in npz.files})
    x = {name: torch.from_numpy(pipeline.transform(frame)) for name, frame in evaluations.items()}
    out = {f"out_of_the_box:{name}": predict(model, xs).numpy() for name, xs in x.items()}
    x_train, y = torch.from_numpy(pipeline.transform(train)), torch.from_numpy(y_train)
    lr, decay = sub.lr, float(sub.strategy.get("lr_decay", 1.0))
    for server_round in range(1, sub.num_rounds + 1):
        config = TrainConfig(lr=lr * decay ** (server_round - 1), local_epochs=sub.local_epochs,
                             batch_size=sub.batch_size, proximal_mu=float(sub.strategy.get("proximal_mu", 0)),
                             server_round=server_round, seed=seed * 1000 + server_round)
        train_local(model, x_train, y, config, FlopMeter())
    out.update({name: predict(model, xs).numpy() for name, xs in x.items()})
    return out


#: Declared outcome heads and penalties (issue 14) on the gene-set features, trained as the node
#: trains (``train_local``): what a contributor can now say beyond the references.
DECLARED = {
    "gene sets + interactions, linear, multinomial head": {},
    "gene sets + interactions, linear, ordinal head": {"head": "ordinal"},
    "gene sets + interactions, linear, ordinal head + elastic net": {"head": "ordinal", "l1": 0.002,
                                                                     "l2": 0.01},
}


def declared(params: dict, train: pd.DataFrame, y_train: np.ndarray, evaluations: dict[str, pd.DataFrame],
             seed: int, epochs: int = 60) -> dict[str, np.ndarray]:
    """A linear model with ``params`` (head, l1, l2) on ``GENE_SETS_SPEC``, trained ``epochs`` epochs
    (batch 32, lr 0.05) as the node trains; its predictions per evaluation frame."""
    from models import ModelSpec, penalties

    spec = ModelSpec("linear", params)
    pipeline = SCHEMA.pipeline(GENE_SETS_SPEC).fit(train)
    model = build_for(spec, pipeline, len(SCHEMA.classes), seed)
    config = TrainConfig(lr=0.05, local_epochs=epochs, batch_size=32, seed=seed, **penalties(spec))
    train_local(model, torch.from_numpy(pipeline.transform(train)), torch.from_numpy(y_train), config,
                FlopMeter())
    return {name: predict(model, torch.from_numpy(pipeline.transform(frame))).numpy()
            for name, frame in evaluations.items()}


def federated(seed: int, folder: Path) -> dict[str, tuple[float, float, float]]:
    """The demo's references through Flower on cohort ``seed``.

    Returns contributor -> (out of the box, macro-F1, Fast recall), as the node recorded them.
    """
    done = subprocess.run([sys.executable, "-m", "server.cli", "demo", f"cohort.seed={seed}",
                           f"output_dir={folder}"], capture_output=True, text=True,
                          env={**os.environ, "FLWR_HOME": str(folder / "flwr-home")})
    if done.returncode != 0:
        raise RuntimeError(f"demo on seed {seed} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    rows = read_leaderboard(f"sqlite:///{folder}/mlflow.db", "cohortfl-leaderboard")
    return {r.contributor: (r.out_of_the_box, r.fine_tuned, r.reported_recall) for r in rows}


def noise_floor(y_large: np.ndarray, y_pred: np.ndarray, draws: int = 500) -> float:
    """sd of a fixed classifier's macro-F1 over random stratified 128-record holdouts of ``large``."""
    rng = np.random.default_rng(0)
    by_class = [np.flatnonzero(y_large == k) for k in range(len(SCHEMA.classes))]
    per_class = [round(128 * CLASS_COUNTS[c] / 640) for c in SCHEMA.classes]
    values = []
    for _ in range(draws):
        picks = np.concatenate([rng.choice(idx, n, replace=False) for idx, n in zip(by_class, per_class,
                                                                                    strict=True)])
        values.append(f1_score(y_large[picks], y_pred[picks], average="macro"))
    return float(np.std(values, ddof=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5, help="cohort seeds (default 5)")
    parser.add_argument("--no-federated", action="store_true", help="skip the Flower runs")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    started = time.perf_counter()
    scale = LARGE / sum(CLASS_COUNTS.values())
    large = generate_cohort(seed=99_999, class_counts={c: round(n * scale) for c, n in CLASS_COUNTS.items()})
    y_large = SCHEMA.label_indices(large[SCHEMA.label_column])
    # rows: method -> list over seeds of {"holdout": (f1, fast), "large": (f1, fast), "out_of_the_box": f1}
    results: dict[str, list[dict]] = defaultdict(list)
    gaps: dict[str, list[float]] = defaultdict(list)
    on_large: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory(prefix="cohortfl-quality-") as tmp:
        for seed in range(args.seeds):
            folder = Path(tmp) / f"seed{seed}"
            folder.mkdir()
            frame = generate_cohort(seed=seed)
            frame.to_parquet(folder / "cohort.parquet", index=False)
            cohort = load_cohort(folder / "cohort.parquet")  # the node's reading and split
            split = split_cohort(cohort, 128, 0)
            train = cohort.frame.iloc[split.train].reset_index(drop=True)
            holdout = cohort.frame.iloc[split.holdout].reset_index(drop=True)
            y_train, y_holdout = cohort.labels[split.train], cohort.labels[split.holdout]
            frames = {"holdout": holdout, "large": large}
            truth = {"holdout": y_holdout, "large": y_large}

            def record(name: str, predictions: dict[str, np.ndarray], out_of_the_box: float | None = None,
                       truth: dict[str, np.ndarray] = truth) -> None:
                results[name].append({k: scores(truth[k], predictions[k]) for k in truth}
                                     | {"out_of_the_box": out_of_the_box})
                on_large.setdefault(name, predictions["large"])  # the first seed's model

            record("Bayes-optimal (true posterior)", {
                "holdout": true_posterior(cohort.frame.iloc[split.holdout]).argmax(1),
                "large": true_posterior(large).argmax(1)})
            for name, model in standard_approaches().items():
                model.fit(raw_matrix(train), y_train)
                record(name, {k: model.predict(raw_matrix(f)) for k, f in frames.items()})
            pipeline = SCHEMA.pipeline(GENE_SETS_SPEC).fit(train)
            model = gene_sets_approach().fit(pipeline.transform(train), y_train)
            record("gene sets + interactions (LR, no pretraining)",
                   {k: model.predict(pipeline.transform(f)) for k, f in frames.items()})
            for name, params in DECLARED.items():
                record(name, declared(params, train, y_train, frames, seed))

            job = load_job([f"cohort.seed={seed}", f"output_dir={folder}"], demo=True)
            submissions = [with_pretrained_weights(e.submission, e.pretraining, folder / "pretrained")
                           if e.pretraining else e.submission for e in job.entries]
            for sub in submissions:
                out = central(sub, train, y_train, frames, seed)
                name = f"{sub.contributor} central ({sub.model.name})"
                record(name, out, out_of_the_box=scores(y_holdout, out["out_of_the_box:holdout"])[0])
            if not args.no_federated:
                for contributor, (out_of_the_box, f1, fast) in federated(seed, folder).items():
                    results[f"{contributor} federated"].append(
                        {"holdout": (f1, fast), "large": (np.nan, np.nan), "out_of_the_box": out_of_the_box})
                    central_f1 = results[f"{contributor} central " + next(
                        f"({s.model.name})" for s in submissions if s.contributor == contributor)][-1]
                    gaps[contributor].append(f1 - central_f1["holdout"][0])
            print(f"seed {seed} done at {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)

    print_tables(results, gaps, args.seeds)
    print("\n| fixed classifier (seed 0's) | sd of macro-F1 over 500 random 128-record holdouts of the "
          "10k draw: the noise floor |\n|---|---|")
    for name, predictions in on_large.items():
        print(f"| {name} | {noise_floor(y_large, predictions):.3f} |")
    print(f"({args.seeds} cohort seeds, {time.perf_counter() - started:.0f} s)")


def print_tables(results: dict[str, list[dict]], gaps: dict[str, list[float]], n_seeds: int) -> None:
    """Markdown: mean and sd over seeds of every method's scores; federated minus central."""
    def cell(values: list[float]) -> str:
        values = [v for v in values if v is not None and not np.isnan(v)]
        if not values:
            return "-"
        if len(values) == 1:
            return f"{values[0]:.3f}"
        return f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"

    print(f"\n| method | out of the box | holdout macro-F1 | holdout Fast recall | "
          f"10k-draw macro-F1 | 10k-draw Fast recall |  (mean ± sd over {n_seeds} cohort seeds)")
    print("|---|---|---|---|---|---|")
    for name, rows in results.items():
        print(f"| {name} | {cell([r['out_of_the_box'] for r in rows])} | "
              f"{cell([r['holdout'][0] for r in rows])} | "
              f"{cell([r['holdout'][1] for r in rows])} | {cell([r['large'][0] for r in rows])} | "
              f"{cell([r['large'][1] for r in rows])} |")
    if gaps:
        print("\n| reference | federated minus central, holdout macro-F1 (mean ± sd) |")
        print("|---|---|")
        for contributor, values in gaps.items():
            print(f"| {contributor} | {cell(values)} |")


if __name__ == "__main__":
    main()
