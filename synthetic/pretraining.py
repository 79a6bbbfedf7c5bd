"""What a contributor does on their own machine before submitting: pretrain on their own cohort.

Contributors A and B of the pilot bring weights pretrained on an external cohort of their own: a
file they hold in the node's published columns (``cohort_file``), or, in the demo, a synthetic
cohort of another centre of either synthetic disease. They fit the same declarative feature
pipeline on their data and train the same registered model with the same training loop as the
node; only the weights travel. The demo does this step for them, once per distinct pretraining
(the weights are cached in the output folder); ``cohortfl pretrain`` does it for a package.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from client.training import FlopMeter, TrainConfig, train_local
from contract.schema import CohortSchema
from contract.submission import Submission
from models import ModelSpec, build_for, penalties
from models.pipeline import FeatureSpec


@dataclass(frozen=True)
class Pretraining:
    """A contributor's pretraining on a cohort of their own.

    Attributes
    ----------
    cohort_file : str or None
        Their own cohort file (``.csv`` or ``.parquet``) in the node's published columns; None: a
        synthetic cohort of another centre, drawn from ``disease``.
    dictionary : str or None
        What ``cohort_file`` follows: the foundation's data dictionary (``.yaml``) or the schema it
        publishes (``cohortfl schema --json``, a ``.json``); None: the demo's shape.
    disease : {"demo", "myopathy"}
        Without a file: the synthetic disease whose external centre is drawn
        (``synthetic.disease.generate_external_cohort``, ``synthetic.myopathy.generate_myopathy``).
    cohort_seed, n_records : int
        Seed and size of that synthetic cohort.
    epochs, lr, batch_size : int, float, int
        Plain SGD over it, as the node trains.
    """

    cohort_seed: int = 1
    n_records: int = 2000
    epochs: int = 30
    lr: float = 0.05
    batch_size: int = 32
    cohort_file: str | None = None
    dictionary: str | None = None
    disease: str = "demo"


def own_cohort(pretraining: Pretraining) -> tuple[pd.DataFrame, np.ndarray, CohortSchema]:
    """The contributor's cohort: its feature table, class indices and schema.

    Raises
    ------
    CohortValidationError, DictionaryError
        Their file does not fit the dictionary (the node's published columns).
    ValueError
        An unknown synthetic disease.
    """
    from client.cohort import load_cohort
    from contract.dictionary import DataDictionary
    from synthetic.diseases import synthetic_disease

    if pretraining.cohort_file is not None:
        cohort = load_cohort(pretraining.cohort_file, pretraining.dictionary)
        return cohort.frame, cohort.labels, cohort.schema
    disease = synthetic_disease(pretraining.disease, "pretrain.disease")
    frame = disease.external(pretraining.cohort_seed, pretraining.n_records)
    schema = DataDictionary.from_yaml(disease.dictionary).resolve(list(frame.columns))
    return frame, schema.label_indices(frame[schema.label_column]), schema


def pretrained_weights(model: ModelSpec, features: FeatureSpec, pretraining: Pretraining, seed: int
                       ) -> dict[str, np.ndarray]:
    """Train ``model`` on the contributor's own cohort (``own_cohort``); return its weights.

    The feature pipeline is fitted on that cohort (the contributor's own statistics): on the node
    it is refitted on the node's training split, which is part of the shift the out-of-the-box
    score shows. The elastic-net penalties the model declares apply here too.
    """
    frame, labels, schema = own_cohort(pretraining)
    pipeline = schema.pipeline(features).fit(frame)
    net = build_for(model, pipeline, len(schema.classes), seed)
    train_local(net, torch.from_numpy(pipeline.transform(frame)), torch.from_numpy(labels),
                TrainConfig(lr=pretraining.lr, local_epochs=pretraining.epochs,
                            batch_size=pretraining.batch_size, seed=seed, **penalties(model)), FlopMeter())
    return {name: value.detach().numpy() for name, value in net.state_dict().items()}


def with_pretrained_weights(submission: Submission, pretraining: Pretraining, cache_dir: Path
                            ) -> Submission:
    """The submission carrying weights pretrained as ``pretraining`` says (base64 ``.npz``),
    computed once per distinct pretraining into ``cache_dir``."""
    model, features, seed = submission.model, submission.features, submission.seed
    own = (hashlib.sha256(Path(pretraining.cohort_file).read_bytes()).hexdigest()
           if pretraining.cohort_file else None)
    key = json.dumps([model.to_json(), features.to_json(), asdict(pretraining), own, seed, _code_digest()],
                     sort_keys=True)
    path = cache_dir / f"pretrained-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"
    if not path.is_file():
        where = pretraining.cohort_file or (f"an external {pretraining.disease} cohort of "
                                            f"{pretraining.n_records} records")
        print(f"pretraining {model.name} on {where} ({pretraining.epochs} epochs) -> {path}", flush=True)
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        np.savez(tmp.open("wb"), **pretrained_weights(model, features, pretraining, seed))
        tmp.replace(path)
    return replace(submission, initial_weights=base64.b64encode(path.read_bytes()).decode("ascii"))


def _code_digest() -> str:
    """Digest of the code pretraining runs (generators, training loop, models): cached weights of
    an older generator or model are not reused."""
    import client.training
    import models

    files = [*sorted(Path(__file__).parent.glob("*.py")), Path(client.training.__file__),
             *sorted(Path(models.__file__).parent.glob("*.py"))]
    return hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()

