"""What a contributor does on their own machine before submitting: pretrain on their own cohort.

Contributors A and B of the pilot bring weights pretrained on an external cohort of their own
(here drawn by ``client.synthetic.generate_external_cohort``: another site, another
population). They fit the same declarative feature pipeline on their data and train the same
registered model with the same training loop as the node; only the weights travel. The demo
does this step for them, once per distinct plan (the weights are cached in the output folder).
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from client.schema import SCHEMA
from client.training import FlopMeter, TrainConfig, train_local
from models import ModelSpec, build_model
from models.pipeline import FeaturePipeline, FeatureSpec


@dataclass(frozen=True)
class Pretraining:
    """A contributor's pretraining on their external cohort.

    Attributes
    ----------
    cohort_seed : int
        Seeds the external cohort the contributor holds.
    n_records : int
        Its size.
    epochs, lr, batch_size : int, float, int
        Plain SGD over it, as the node trains.
    """

    cohort_seed: int = 1
    n_records: int = 2000
    epochs: int = 30
    lr: float = 0.05
    batch_size: int = 32


def pretrained_weights(model: ModelSpec, features: FeatureSpec, plan: Pretraining, seed: int
                       ) -> dict[str, np.ndarray]:
    """Train ``model`` on the contributor's external cohort; return its weights.

    The feature pipeline is fitted on the external cohort (the contributor's own
    statistics): on the node it is refitted on the node's training split, which is
    part of the shift the out-of-the-box score shows.
    """
    from client.synthetic import generate_external_cohort

    frame = generate_external_cohort(plan.cohort_seed, plan.n_records)
    pipeline = FeaturePipeline(features, SCHEMA.numeric, SCHEMA.categorical).fit(frame)
    x = torch.from_numpy(pipeline.transform(frame))
    y = torch.from_numpy(SCHEMA.label_indices(frame[SCHEMA.label_column]))
    inputs = pipeline.feature_names
    net = build_model(model, len(inputs), len(SCHEMA.classes), seed, feature_names=inputs)
    train_local(net, x, y, TrainConfig(lr=plan.lr, local_epochs=plan.epochs,
                                       batch_size=plan.batch_size, seed=seed), FlopMeter())
    return {name: value.detach().numpy() for name, value in net.state_dict().items()}


def cached_pretrained(model: ModelSpec, features: FeatureSpec, plan: Pretraining, seed: int,
                      cache_dir: Path) -> str:
    """``pretrained_weights`` as the base64 ``.npz`` a submission carries, computed once per
    plan into ``cache_dir``."""
    key = json.dumps([model.to_json(), features.to_json(), asdict(plan), seed, _code_digest()],
                     sort_keys=True)
    path = cache_dir / f"pretrained-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"
    if not path.is_file():
        print(f"pretraining {model.name} on an external cohort of {plan.n_records} records "
              f"({plan.epochs} epochs) -> {path}", flush=True)
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        np.savez(tmp.open("wb"), **pretrained_weights(model, features, plan, seed))
        tmp.replace(path)
    return base64.b64encode(path.read_bytes()).decode("ascii")


def _code_digest() -> str:
    """Digest of the code pretraining runs (generator, training loop, models): cached weights of
    an older generator or model are not reused."""
    import client.synthetic
    import client.training
    import models

    files = [Path(client.synthetic.__file__), Path(client.training.__file__),
             *sorted(Path(models.__file__).parent.glob("*.py"))]
    return hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()
