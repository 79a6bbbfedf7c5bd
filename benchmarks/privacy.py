"""What differential privacy costs the references, and what it buys against the attacks.

For each cohort seed and each privacy arm (DP off, and DP-SGD at each noise multiplier given),
every reference submission of the demo (``conf/demo/pilot.yaml``: pipeline, model, pretrained
initial weights, rounds, batch size, learning-rate schedule, proximal term) is fine-tuned with the
node's own training functions (``train_local``, ``train_local_dp``) in a plain loop, then:

- **holdout macro-F1** of the fine-tuned model (the node's split and standard pipeline);
- **epsilon** spent by the submission at delta 1e-5 (the node's RDP accountant);
- **membership AUC**: telling the 512 training records from the 128 holdout records by the
  fine-tuned model's loss on each (0.5 is chance);
- **imprint** and **remainder** attacks (``tests/attacks/reconstruction.py``): one malicious
  round each against the same training function; training records recovered (correlation > 0.9
  with a reconstruction; an independent cohort of the same disease recovers none at that bar).

FedAvg with one node is exactly this loop (``tests/test_e2e.py``); FedAdam's server optimiser is
not reproduced, so A is fine-tuned as with FedAvg here. Prints one table; asserts nothing::

    python benchmarks/privacy.py [--seeds 3] [--noise 0.5 1.0] [--clip 2.0]

docs/privacy.md holds the sweep over noise and clipping that chose the pilot's defaults.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import statistics
import sys
import tempfile
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from client.holdout import score_predictions  # noqa: E402
from client.node import ResidentCohort  # noqa: E402
from client.privacy import PrivacyPolicy, epsilon, round_entry, train_local_dp  # noqa: E402
from client.settings import CONF_DIR, NodeSettings, load_policy  # noqa: E402
from client.training import FlopMeter, TrainConfig, predict, train_local  # noqa: E402
from contract.submission import Submission  # noqa: E402
from models import ModelSpec, build_for  # noqa: E402
from server.config import load_job  # noqa: E402
from synthetic.disease import generate_cohort  # noqa: E402
from synthetic.pretraining import with_pretrained_weights  # noqa: E402
from tests.attacks.reconstruction import (  # noqa: E402
    imprint_weights,
    reconstruct_difference,
    reconstruct_imprint,
    recovered_records,
)

BAR = 0.9


def train(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, config: TrainConfig,
          privacy: PrivacyPolicy | None) -> None:
    """One round, as the node trains it under ``privacy`` (None: plain SGD)."""
    if privacy:
        train_local_dp(model, x, y, config, FlopMeter(), privacy)
    else:
        train_local(model, x, y, config, FlopMeter())


def fine_tune(sub: Submission, cohort: ResidentCohort, seed: int, privacy: PrivacyPolicy | None
              ) -> dict[str, float]:
    """Fine-tune one reference; its holdout macro-F1, epsilon and membership AUC."""
    view = cohort.view(sub.features)
    model = build_for(sub.model, view.pipeline, len(cohort.classes), sub.seed)
    if sub.initial_weights:
        with np.load(io.BytesIO(base64.b64decode(sub.initial_weights))) as npz:
            model.load_state_dict({k: torch.from_numpy(npz[k]) for k in npz.files})
    decay, mu = float(sub.strategy.get("lr_decay", 1.0)), float(sub.strategy.get("proximal_mu", 0.0))
    history = []
    for server_round in range(1, sub.num_rounds + 1):
        config = TrainConfig(lr=sub.lr * decay ** (server_round - 1), local_epochs=sub.local_epochs,
                             batch_size=sub.batch_size, proximal_mu=mu, server_round=server_round,
                             seed=seed * 10_000 + server_round)
        train(model, view.x_train, cohort.y_train, config, privacy)
        if privacy:
            history.append(round_entry(len(cohort.y_train), config, privacy))
    scores = score_predictions(cohort.y_holdout.numpy(), predict(model, view.x_holdout).numpy(),
                               cohort.classes)
    return {"f1": scores.macro_f1, "auc": membership_auc(model, view, cohort),
            "epsilon": epsilon(history, privacy.delta) if privacy else float("inf")}


@torch.no_grad()
def membership_auc(model: torch.nn.Module, view, cohort: ResidentCohort) -> float:
    """AUC of telling training records from holdout records by their loss."""
    model.eval()
    losses = [torch.nn.functional.cross_entropy(model(x), y, reduction="none")
              for x, y in ((view.x_train, cohort.y_train), (view.x_holdout, cohort.y_holdout))]
    members = [1] * len(losses[0]) + [0] * len(losses[1])
    return float(roc_auc_score(members, -torch.cat(losses).numpy()))


def _weights(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().astype(np.float64) for k, v in model.state_dict().items()}


def attacks(cohort: ResidentCohort, seed: int, privacy: PrivacyPolicy | None) -> dict[str, float]:
    """Records the imprint and the remainder attack recover from one malicious round each."""
    x, y = cohort.standard.x_train, cohort.y_train
    n, width = x.shape
    truth = x.numpy().astype(np.float64)
    units = 1024  # the pilot policy's widest layer
    imprint = build_for(ModelSpec("mlp", {"hidden": [units]}), cohort.standard.pipeline, 3)
    before = imprint_weights(width, units, 3, seed)
    imprint.load_state_dict({k: torch.from_numpy(v) for k, v in before.items()})
    train(imprint, x, y, TrainConfig(lr=0.05, local_epochs=1, batch_size=n, seed=seed), privacy)
    candidates = reconstruct_imprint(before, _weights(imprint), lr=0.05)
    updates = []
    for batch in (n, n - 1):
        linear = build_for(ModelSpec("linear"), cohort.standard.pipeline, 3)
        with torch.no_grad():
            for p in linear.parameters():
                p.zero_()
        train(linear, x, y, TrainConfig(lr=1.0, local_epochs=1, batch_size=batch, seed=seed + batch),
              privacy)
        updates.append(_weights(linear))
    record, _ = reconstruct_difference(updates[0], updates[1], n, n - 1, lr=1.0)
    return {"imprint": recovered_records(truth, candidates, corr_bar=BAR, share=1.1),
            "remainder": recovered_records(truth, record[None, :], corr_bar=BAR, share=1.1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    pilot = load_policy(CONF_DIR / "policy" / "pilot.yaml")
    parser.add_argument("--noise", type=float, nargs="+", default=[pilot.dp_noise_multiplier],
                        help="DP noise multipliers (default: the pilot policy's)")
    parser.add_argument("--clip", type=float, default=pilot.dp_max_grad_norm,
                        help="DP per-example clipping norm (default: the pilot policy's)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    arms = {"DP off": None} | {f"DP sigma {s:g} C {args.clip:g}":
                               PrivacyPolicy(s, args.clip, 1e-5, float("inf")) for s in args.noise}
    rows: dict[tuple[str, str], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            folder = Path(tmp) / f"seed-{seed}"
            path = folder / "cohort.parquet"
            folder.mkdir()
            generate_cohort(seed).to_parquet(path, index=False)
            cohort = ResidentCohort(NodeSettings(data_path=str(path), tracking_uri="unused",
                                                 state_dir=str(folder), device="cpu"))
            job = load_job([f"cohort.seed={seed}", f"output_dir={folder}"], demo=True)
            subs = [with_pretrained_weights(e.submission, e.pretraining, Path(tmp) / "pretrained")
                    if e.pretraining else e.submission for e in job.entries]
            for arm, privacy in arms.items():
                attacked = attacks(cohort, seed, privacy)
                for sub in subs:
                    rows.setdefault((arm, sub.contributor), []).append(
                        fine_tune(sub, cohort, seed, privacy) | attacked)
            print(f"seed {seed} done", file=sys.stderr, flush=True)

    def spread(values: list[float]) -> str:
        sd = statistics.stdev(values) if len(values) > 1 else float("nan")
        return f"{statistics.mean(values):.3f} ± {sd:.3f}"

    print(f"{args.seeds} cohort seeds (mean ± sd); 20 rounds of the demo's references; attacks: "
          "records of 512 recovered in one malicious round (imprint: 1024 units; "
          "remainder: 512 vs 511)\n")
    print("| arm | reference | holdout macro-F1 | epsilon (delta 1e-5) | membership AUC | imprint "
          "| remainder |")
    print("|---|---|---|---|---|---|---|")
    for (arm, contributor), results in rows.items():
        eps = results[0]["epsilon"]
        print(f"| {arm} | {contributor} | {spread([r['f1'] for r in results])} | "
              f"{'-' if eps == float('inf') else f'{eps:.2f}'} | {spread([r['auc'] for r in results])} | "
              f"{max(r['imprint'] for r in results)} | {max(r['remainder'] for r in results)} |")


if __name__ == "__main__":
    main()
