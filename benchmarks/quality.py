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
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier  # noqa: E402
from sklearn.linear_model import LogisticRegressionCV  # noqa: E402
from sklearn.metrics import f1_score, recall_score  # noqa: E402
from sklearn.model_selection import StratifiedKFold  # noqa: E402
from sklearn.neural_network import MLPClassifier  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from client.cohort import load_cohort, split_cohort  # noqa: E402
from client.privacy import PrivacyPolicy, train_local_dp  # noqa: E402
from client.training import FlopMeter, TrainConfig, predict, train_local  # noqa: E402
from contract.schema import SCHEMA, CohortSchema  # noqa: E402
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
    model, pipeline = node_trained(SCHEMA, GENE_SETS_SPEC, params, 0.05, epochs, train, y_train, seed)
    return {name: predict(model, torch.from_numpy(pipeline.transform(frame))).numpy()
            for name, frame in evaluations.items()}


def node_trained(schema: CohortSchema, features: FeatureSpec, params: dict, lr: float, epochs: int,
                 train: pd.DataFrame, y_train: np.ndarray, seed: int, privacy: PrivacyPolicy | None = None,
                 initial: dict[str, np.ndarray] | None = None) -> tuple[torch.nn.Module, object]:
    """A linear model with ``params`` (head, l1, l2) on ``features``, from ``initial`` weights or from
    scratch, trained as the node trains it (``train_local``, or ``train_local_dp`` under ``privacy``):
    ``epochs`` epochs of batch 32. FedAvg over one node is this loop (``tests/test_e2e.py``).
    Returns the model and its pipeline (fitted on ``train``)."""
    from models import ModelSpec, penalties

    spec = ModelSpec("linear", params)
    pipeline = schema.pipeline(features).fit(train)
    model = build_for(spec, pipeline, len(schema.classes), seed)
    if initial is not None:
        model.load_state_dict({k: torch.from_numpy(v) for k, v in initial.items()})
    config = TrainConfig(lr=lr, local_epochs=epochs, batch_size=32, seed=seed, **penalties(spec))
    x, y = torch.from_numpy(pipeline.transform(train)), torch.from_numpy(y_train)
    if privacy is None:
        train_local(model, x, y, config, FlopMeter())
    else:
        train_local_dp(model, x, y, config, FlopMeter(), privacy)
    return model, pipeline


# --- the declared study: what an expert can declare, on both diseases --------------------------


@dataclass(frozen=True)
class Disease:
    """A synthetic disease as the declared study sees it.

    ``candidates`` are the feature specs an expert can write from what they may know (the
    published dictionary, the public gene-set database, what the literature says modifies what);
    they choose among them, and the learning rate and penalties, on their own cohort only.
    """

    name: str
    dictionary: Path
    draw: Callable[[int], pd.DataFrame]       # the foundation's cohort of a seed (640 records)
    large: Callable[[], pd.DataFrame]         # an independent draw of 10,000 records
    own: Callable[[], pd.DataFrame]           # the contributor's own cohort, another centre
    posterior: Callable[[pd.DataFrame], np.ndarray]
    candidates: dict[str, FeatureSpec]


def diseases() -> list[Disease]:
    """The demo's disease (the references were designed on it) and the myopathy (not)."""
    from synthetic.diseases import synthetic_disease
    from synthetic.myopathy import generate_myopathy, myopathy_gene_sets

    demo, myopathy = synthetic_disease("demo"), synthetic_disease("myopathy")
    scale = LARGE / sum(CLASS_COUNTS.values())
    myo_sets = {k: tuple(v) for k, v in myopathy_gene_sets().items()}
    myo = FeatureSpec(gene_sets=myo_sets, raw=("clinical", "labs"), interaction_left="gene_sets",
                      transforms={"labs": ("log1p",), "prednisone_mg_day": ("log1p",)},
                      interactions=("age_years", "prednisone_mg_day", "sex=M", "antibody=anti-Jo1"))
    return [
        Disease("demo (progression)", demo.dictionary, demo.foundation,
                lambda: generate_cohort(seed=99_999, class_counts={c: round(n * scale)
                                                                   for c, n in CLASS_COUNTS.items()}),
                lambda: demo.external(707, 2000), demo.true_posterior,
                {"set means": GENE_SETS_SPEC, "set pc1": replace(GENE_SETS_SPEC, gene_set_score="pc1")}),
        Disease("myopathy (course)", myopathy.dictionary, myopathy.foundation,
                lambda: generate_myopathy(seed=99_999, n_records=LARGE),
                lambda: myopathy.external(707, 2000), myopathy.true_posterior,
                {"set means, log labs": myo, "set pc1, log labs": replace(myo, gene_set_score="pc1"),
                 "set means, raw labs": replace(myo, transforms={}),
                 "set pc1, raw labs": replace(myo, gene_set_score="pc1", transforms={})}),
    ]


#: What the expert chooses on their own cohort: learning rate and penalties (the head is ordinal: the
#: dictionary says the outcome is). The workspace fixes 20 rounds of 1 epoch.
EXPERT_LRS = (0.05, 0.1, 0.2)
EXPERT_PENALTIES = ({}, {"l1": 0.002, "l2": 0.01})
ROUNDS = 20
PILOT_DP = PrivacyPolicy(noise_multiplier=1.0, max_grad_norm=2.0, delta=1e-5, epsilon_budget=float("inf"))
RIDGE_GRID = (0.001, 0.003, 0.01, 0.03, 0.1)


def expert_choice(disease: Disease, schema: CohortSchema) -> tuple[str, float, dict, float]:
    """The expert's declaration, chosen by 3-fold cross-validated macro-F1 on their own cohort only:
    (candidate spec, learning rate, head and penalties, its CV macro-F1)."""
    own = disease.own()
    y = schema.label_indices(own[schema.label_column])
    best = ("", 0.0, {}, -1.0)
    for name, spec in disease.candidates.items():
        for lr in EXPERT_LRS:
            for penalty in EXPERT_PENALTIES:
                params = {"head": "ordinal", **penalty}
                folds = []
                for fit, check in StratifiedKFold(3, shuffle=True, random_state=0).split(own, y):
                    model, pipeline = node_trained(schema, spec, params, lr, ROUNDS, own.iloc[fit], y[fit], 0)
                    predicted = predict(model, torch.from_numpy(pipeline.transform(own.iloc[check]))).numpy()
                    folds.append(f1_score(y[check], predicted, average="macro"))
                if np.mean(folds) > best[3]:
                    best = (name, lr, params, float(np.mean(folds)))
    return best


def fit_ordinal_ridge(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, ridge: float
                      ) -> torch.nn.Module:
    """Full-batch L-BFGS to convergence on the mean negative log-likelihood + ridge / 2 |W|^2."""
    optimizer = torch.optim.LBFGS(model.parameters(), max_iter=500, line_search_fn="strong_wolfe",
                                  tolerance_change=1e-10)
    weights = [p for p in model.parameters() if p.ndim >= 2]

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.nll_loss(model(x), y) + 0.5 * ridge * sum((w ** 2).sum() for w in weights)
        loss.backward()
        return loss

    optimizer.step(closure)
    return model


def central_ordinal(disease: Disease, schema: CohortSchema, train: pd.DataFrame, y_train: np.ndarray
                    ) -> tuple[str, float, torch.nn.Module, object]:
    """The best central model with the same knowledge: a proportional-odds model with a ridge penalty,
    fitted to convergence, its feature spec and ridge chosen by 5-fold cross-validated log-loss on the
    node's training split. Returns (spec name, ridge, model, pipeline)."""
    from models import ModelSpec

    spec = ModelSpec("linear", {"head": "ordinal"})
    y = torch.from_numpy(y_train)
    best = (np.inf, "", 0.0)
    for name, features in disease.candidates.items():
        for ridge in RIDGE_GRID:
            losses = []
            for fit, check in StratifiedKFold(5, shuffle=True, random_state=0).split(train, y_train):
                pipeline = schema.pipeline(features).fit(train.iloc[fit])
                x_fit = torch.from_numpy(pipeline.transform(train.iloc[fit]))
                model = build_for(spec, pipeline, len(schema.classes), 0)
                fit_ordinal_ridge(model, x_fit, y[fit], ridge)
                with torch.no_grad():
                    losses.append(float(torch.nn.functional.nll_loss(
                        model(torch.from_numpy(pipeline.transform(train.iloc[check]))), y[check])))
            if np.mean(losses) < best[0]:
                best = (float(np.mean(losses)), name, ridge)
    _, name, ridge = best
    pipeline = schema.pipeline(disease.candidates[name]).fit(train)
    model = fit_ordinal_ridge(build_for(spec, pipeline, len(schema.classes), 0),
                              torch.from_numpy(pipeline.transform(train)), y, ridge)
    return name, ridge, model, pipeline


#: The rows of the declared study, in order.
BAYES = "Bayes-optimal (true posterior)"
CENTRAL = "central: ordinal ridge, spec and ridge by CV on the training split"
CENTRAL_LR = "central: multinomial logistic (tuned C), same spec"
DECLARED_ROW = "declared, as the node trains it (DP off)"
DECLARED_DP = "declared, as the node trains it (pilot DP: noise 1.0, clip 2)"
PRETRAINED_DP = "declared + pretrained on the expert's own cohort (pilot DP)"
STANDARD = "standard: logistic regression (tuned C) on the raw columns"


@dataclass(frozen=True)
class Declaration:
    """What the expert submits: a candidate spec, learning rate, head and penalties, and the weights
    they pretrained on their own cohort with it."""

    spec: str
    lr: float
    params: dict
    cv_f1: float
    pretrained: dict


def declare(disease: Disease, schema: CohortSchema) -> Declaration:
    """The expert's choice by 3-fold CV on their own cohort, then pretraining on all of it."""
    from models import ModelSpec
    from synthetic.pretraining import Pretraining, pretrained_weights

    name, lr, params, cv = expert_choice(disease, schema)
    own = Path(tempfile.mkdtemp(prefix="cohortfl-own-")) / "own.parquet"
    disease.own().to_parquet(own, index=False)
    weights = pretrained_weights(ModelSpec("linear", params), disease.candidates[name],
                                 Pretraining(epochs=ROUNDS, lr=lr, cohort_file=str(own),
                                             dictionary=str(disease.dictionary)), 0)
    return Declaration(name, lr, params, cv, weights)


def score_seed(disease: Disease, schema: CohortSchema, declaration: Declaration, seed: int,
               large: pd.DataFrame, folder: Path) -> tuple[dict[str, dict], str]:
    """Every row's (macro-F1, reported-class recall) on the holdout and the 10k draw for cohort
    ``seed``, split by the node's own split; and the spec the central fit chose."""
    path = folder / f"cohort{seed}.parquet"
    disease.draw(seed).to_parquet(path, index=False)
    cohort = load_cohort(path, disease.dictionary)
    split = split_cohort(cohort, 128, 0)
    train, y_train = cohort.frame.iloc[split.train].reset_index(drop=True), cohort.labels[split.train]
    frames = {"holdout": cohort.frame.iloc[split.holdout].reset_index(drop=True), "large": large}
    truth = {"holdout": cohort.labels[split.holdout],
             "large": schema.label_indices(large[schema.label_column])}
    reported = schema.classes.index(schema.reported_class)
    predictions: dict[str, dict[str, np.ndarray]] = {}

    def by(model: object, pipeline: object) -> dict[str, np.ndarray]:
        if isinstance(model, torch.nn.Module):
            return {k: predict(model, torch.from_numpy(pipeline.transform(f))).numpy()
                    for k, f in frames.items()}
        return {k: model.predict(pipeline.transform(f)) for k, f in frames.items()}

    predictions[BAYES] = {k: disease.posterior(f).argmax(1) for k, f in frames.items()}
    chosen, ridge, model, pipeline = central_ordinal(disease, schema, train, y_train)
    predictions[CENTRAL] = by(model, pipeline)
    tuned = LogisticRegressionCV(Cs=np.logspace(-3, 1, 9), cv=5, max_iter=3000)
    predictions[CENTRAL_LR] = by(tuned.fit(pipeline.transform(train), y_train), pipeline)
    spec = disease.candidates[declaration.spec]
    for row, privacy in ((DECLARED_ROW, None), (DECLARED_DP, PILOT_DP)):
        predictions[row] = by(*node_trained(schema, spec, declaration.params, declaration.lr, ROUNDS, train,
                                            y_train, seed, privacy))
    predictions[PRETRAINED_DP] = by(*node_trained(schema, spec, declaration.params, declaration.lr, ROUNDS,
                                                  train, y_train, seed, PILOT_DP, declaration.pretrained))
    raw = schema.pipeline(FeatureSpec()).fit(train)
    standard = LogisticRegressionCV(Cs=np.logspace(-3, 1, 9), cv=5, max_iter=3000)
    predictions[STANDARD] = by(standard.fit(raw.transform(train), y_train), raw)
    scores = {row: {k: (f1_score(truth[k], p[k], average="macro"),
                        recall_score(truth[k], p[k], labels=[reported], average=None)[0]) for k in truth}
              for row, p in predictions.items()}
    return scores, f"'{chosen}', ridge {ridge}"


def declared_study(n_seeds: int) -> None:
    """Per disease, over cohort seeds: the Bayes ceiling, the best central model with the expert's
    knowledge, the expert's declared submission trained as the node trains it (DP off, under the
    pilot's DP, and pretrained on their own cohort under DP), and tuned logistic regression on the
    raw columns. Prints markdown tables."""
    from contract.dictionary import DataDictionary

    for disease in diseases():
        started = time.perf_counter()
        large = disease.large()
        schema = DataDictionary.from_yaml(disease.dictionary).resolve([str(c) for c in large.columns])
        declaration = declare(disease, schema)
        print(f"\n### {disease.name}: the expert declares '{declaration.spec}', lr {declaration.lr}, "
              f"{declaration.params} (3-fold CV macro-F1 {declaration.cv_f1:.3f} on their own cohort "
              "of 2,000)")
        rows: dict[str, list[dict]] = defaultdict(list)
        with tempfile.TemporaryDirectory(prefix="cohortfl-declared-") as tmp:
            for seed in range(n_seeds):
                scores, chosen = score_seed(disease, schema, declaration, seed, large, Path(tmp))
                for row, value in scores.items():
                    rows[row].append(value)
                print(f"  seed {seed}: the central fit chose {chosen} "
                      f"({time.perf_counter() - started:.0f} s)",
                      file=sys.stderr, flush=True)
        reported = schema.reported_class
        print(f"\n| method | holdout macro-F1 | holdout {reported} recall | 10k-draw macro-F1 | 10k-draw "
              f"{reported} recall |  (mean ± sd over {n_seeds} cohort seeds)\n|---|---|---|---|---|")
        for row, values in rows.items():
            print(f"| {row} | " + " | ".join(cell([v[k][i] for v in values])
                                             for k in ("holdout", "large") for i in (0, 1)) + " |")
        large_f1 = {row: np.array([v["large"][0] for v in values]) for row, values in rows.items()}
        print("\n| gap on the 10k draw (paired by seed) | mean ± sd |\n|---|---|")
        for label, a, b in (("declared minus central", DECLARED_ROW, CENTRAL),
                            ("ceiling minus declared", BAYES, DECLARED_ROW),
                            ("DP cost: declared under DP minus DP off", DECLARED_DP, DECLARED_ROW),
                            ("pretraining under DP: pretrained minus from scratch", PRETRAINED_DP,
                             DECLARED_DP)):
            print(f"| {label} | {cell(list(large_f1[a] - large_f1[b]))} |")
        print(f"({disease.name}: {time.perf_counter() - started:.0f} s)", flush=True)


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
    parser.add_argument("--study", choices=("all", "references", "declared"), default="all",
                        help="the demo's references, the declared study on both diseases, or both")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    if args.study in ("all", "declared"):
        declared_study(args.seeds)
    if args.study in ("all", "references"):
        references_study(args)


def references_study(args: argparse.Namespace) -> None:
    """The demo's references (federated and central), the standard approaches, declared heads."""
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


def cell(values: list[float]) -> str:
    """``mean ± sd`` of the values that are numbers (one: itself; none: ``-``)."""
    values = [v for v in values if v is not None and not np.isnan(v)]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"


def print_tables(results: dict[str, list[dict]], gaps: dict[str, list[float]], n_seeds: int) -> None:
    """Markdown: mean and sd over seeds of every method's scores; federated minus central."""
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
