"""What a contributor does on their own machine before submitting: pretrain on their own cohort.

Contributors A and B of the pilot bring weights pretrained on an external cohort of their own
(here drawn by ``synthetic.disease.generate_external_cohort``: another site, another
population). They fit the same declarative feature pipeline on their data and train the same
registered model with the same training loop as the node; only the weights travel. The demo
does this step for them, once per distinct pretraining (the weights are cached in the output folder).
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from client.training import FlopMeter, TrainConfig, train_local
from contract.schema import SCHEMA
from contract.submission import Submission
from models import ModelSpec, build_for
from models.pipeline import FeatureSpec


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


def pretrained_weights(model: ModelSpec, features: FeatureSpec, pretraining: Pretraining, seed: int
                       ) -> dict[str, np.ndarray]:
    """Train ``model`` on the contributor's external cohort; return its weights.

    The feature pipeline is fitted on the external cohort (the contributor's own
    statistics): on the node it is refitted on the node's training split, which is
    part of the shift the out-of-the-box score shows.
    """
    from synthetic.disease import generate_external_cohort

    frame = generate_external_cohort(pretraining.cohort_seed, pretraining.n_records)
    pipeline = SCHEMA.pipeline(features).fit(frame)
    x = torch.from_numpy(pipeline.transform(frame))
    y = torch.from_numpy(SCHEMA.label_indices(frame[SCHEMA.label_column]))
    net = build_for(model, pipeline, len(SCHEMA.classes), seed)
    train_local(net, x, y, TrainConfig(lr=pretraining.lr, local_epochs=pretraining.epochs,
                                       batch_size=pretraining.batch_size, seed=seed), FlopMeter())
    return {name: value.detach().numpy() for name, value in net.state_dict().items()}


def with_pretrained_weights(submission: Submission, pretraining: Pretraining, cache_dir: Path
                            ) -> Submission:
    """The submission carrying weights pretrained as ``pretraining`` says (base64 ``.npz``),
    computed once per distinct pretraining into ``cache_dir``."""
    model, features, seed = submission.model, submission.features, submission.seed
    key = json.dumps([model.to_json(), features.to_json(), asdict(pretraining), seed, _code_digest()],
                     sort_keys=True)
    path = cache_dir / f"pretrained-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"
    if not path.is_file():
        print(f"pretraining {model.name} on an external cohort of {pretraining.n_records} records "
              f"({pretraining.epochs} epochs) -> {path}", flush=True)
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        np.savez(tmp.open("wb"), **pretrained_weights(model, features, pretraining, seed))
        tmp.replace(path)
    return replace(submission, initial_weights=base64.b64encode(path.read_bytes()).decode("ascii"))


def _code_digest() -> str:
    """Digest of the code pretraining runs (generator, training loop, models): cached weights of
    an older generator or model are not reused."""
    import client.training
    import models
    import synthetic.disease

    files = [Path(synthetic.disease.__file__), Path(client.training.__file__),
             *sorted(Path(models.__file__).parent.glob("*.py"))]
    return hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()
