"""``cohortfl pretrain``: a contributor's tool. It pretrains a submission package's model on the
contributor's own cohort (``synthetic.pretraining``) and writes the package's ``initial.npz``."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from server.errors import PackageRefused
from server.intake import FILE_LIMITS, load_package
from synthetic.pretraining import Pretraining, pretrained_weights


def pretrain_package(folder: Path, cohort_file: Path, schema: Path | None, epochs: int,
                     lr: float | None = None) -> Path:
    """``cohortfl pretrain``: pretrain a submission package's model and features on the contributor's
    own cohort and write its ``initial.npz``, which the package then carries to the node.

    The package is read as the workspace reads it (nothing in it runs); the weights are those of
    ``pretrained_weights`` with the package's seed and batch size, its learning rate unless ``lr``
    is given, for ``epochs`` epochs. ``schema`` is what the file follows (``Pretraining.dictionary``).

    Raises
    ------
    PackageRefused
        The package breaks an intake rule, or the weights exceed ``initial.npz``'s size limit.
    CohortValidationError, DictionaryError
        The contributor's file does not fit the published columns.
    ValueError
        Bad epochs or learning rate, or a published schema that is not one.
    """
    submission = load_package(folder, "pretraining", 1, 1, FILE_LIMITS["initial.npz"])
    if epochs < 1 or (lr is not None and not 0 < lr < float("inf")):
        raise ValueError("epochs must be at least 1 and lr a positive number")
    pretraining = Pretraining(epochs=epochs, lr=submission.lr if lr is None else lr,
                              batch_size=submission.batch_size, cohort_file=str(cohort_file),
                              dictionary=None if schema is None else str(schema))
    print(f"pretraining {submission.model.name} on {cohort_file} ({epochs} epochs, lr {pretraining.lr}, "
          f"batch {pretraining.batch_size})", flush=True)
    weights = pretrained_weights(submission.model, submission.features, pretraining, submission.seed)
    buffer = io.BytesIO()
    np.savez(buffer, **weights)
    if buffer.tell() > FILE_LIMITS["initial.npz"]:
        raise PackageRefused("max-array-bytes", f"the pretrained weights take {buffer.tell()} bytes; "
                             f"initial.npz may hold {FILE_LIMITS['initial.npz']}")
    path = folder / "initial.npz"
    staging = folder / ".initial.npz.tmp"
    staging.write_bytes(buffer.getvalue())
    staging.replace(path)
    return path
