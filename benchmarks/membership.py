"""Membership inference on the released weights, with DP-SGD off and on.

A standard loss-threshold attack (Yeom et al., 2018): the attacker holds the
weights the node released and scores each record by its loss; members (the
512 training records) tend to have lower loss than non-members (the 128
holdout records). AUC 0.5 means the weights tell nothing about membership.
Both arms train the same model with the node's own training functions on the
same resident cohort; the table gives means and standard deviations over
cohort seeds. Prints a table; asserts nothing. Usage::

    python benchmarks/membership.py [--seeds 3] [--rounds 60] [--hidden 256]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch
from sklearn.metrics import roc_auc_score

from client.holdout import score_predictions
from client.node import ResidentCohort
from client.privacy import PrivacyPolicy, epsilon, round_entry, train_local_dp
from client.settings import NodeSettings
from client.training import FlopMeter, TrainConfig, predict, train_local
from models import ModelSpec, build_model
from synthetic.disease import generate_cohort


@torch.no_grad()
def attack_auc(model: torch.nn.Module, cohort: ResidentCohort) -> float:
    """AUC of telling training records from holdout records by their loss."""
    model.eval()
    losses = [torch.nn.functional.cross_entropy(model(x), y, reduction="none")
              for x, y in ((cohort.standard.x_train, cohort.y_train),
                           (cohort.standard.x_holdout, cohort.y_holdout))]
    members = [1] * len(losses[0]) + [0] * len(losses[1])
    return float(roc_auc_score(members, -torch.cat(losses).numpy()))


def run_arm(cohort: ResidentCohort, seed: int, rounds: int, hidden: int,
            privacy: PrivacyPolicy | None) -> dict[str, float]:
    """Train for ``rounds`` rounds of one epoch; return F1, attack AUC and epsilon."""
    model = build_model(ModelSpec("mlp", {"hidden": [hidden]}), cohort.standard.pipeline.n_features, 3, seed)
    meter, history = FlopMeter(), []
    for server_round in range(1, rounds + 1):
        config = TrainConfig(lr=0.1, local_epochs=1, batch_size=32, server_round=server_round,
                             seed=seed * 10_000 + server_round)
        if privacy:
            train_local_dp(model, cohort.standard.x_train, cohort.y_train, config, meter, privacy)
            history.append(round_entry(len(cohort.y_train), config, privacy))
        else:
            train_local(model, cohort.standard.x_train, cohort.y_train, config, meter)
    scores = score_predictions(cohort.y_holdout.numpy(), predict(model, cohort.standard.x_holdout).numpy(),
                               cohort.classes)
    return {"f1": scores.macro_f1, "auc": attack_auc(model, cohort),
            "epsilon": epsilon(history, privacy.delta) if privacy else float("inf")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--noise", type=float, nargs="+", default=[1.0, 3.0],
                        help="noise multipliers of the DP arms")
    parser.add_argument("--clip", type=float, default=1.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    privacies = [None] + [PrivacyPolicy(sigma, args.clip, delta=1e-5, epsilon_budget=float("inf"))
                          for sigma in args.noise]
    arms: dict[str, list[dict[str, float]]] = {"DP off": []}
    arms.update({f"DP on (sigma {sigma}, C {args.clip})": [] for sigma in args.noise})
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            path = Path(tmp) / f"cohort-{seed}.parquet"
            generate_cohort(seed).to_parquet(path, index=False)
            cohort = ResidentCohort(NodeSettings(data_path=str(path), tracking_uri="unused",
                                                 state_dir=tmp, device="cpu"))
            for results, arm_privacy in zip(arms.values(), privacies, strict=True):
                results.append(run_arm(cohort, seed, args.rounds, args.hidden, arm_privacy))

    def spread(values: list[float]) -> str:
        sd = statistics.stdev(values) if len(values) > 1 else float("nan")
        return f"{statistics.mean(values):.3f} +- {sd:.3f}"

    print(f"MLP 255-{args.hidden}-3, {args.rounds} rounds x 1 epoch, batch 32, lr 0.1; "
          f"{args.seeds} cohort seeds (mean +- sd); members: 512 training, non-members: 128 holdout\n")
    print(f"{'arm':28} {'holdout macro-F1':>18} {'attack AUC':>16} {'epsilon (delta 1e-5)':>22}")
    for name, results in arms.items():
        eps = [r["epsilon"] for r in results]
        print(f"{name:28} {spread([r['f1'] for r in results]):>18} "
              f"{spread([r['auc'] for r in results]):>16} {eps[0]:>22.3g}")


if __name__ == "__main__":
    main()
