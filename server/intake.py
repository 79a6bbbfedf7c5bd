"""Submission intake: a contributor's package, checked before any of it runs.

A package is a folder with exactly these files:

- ``submission.yaml`` (required): ``strategy`` (``_target_`` and its arguments),
  ``model`` (``name``, ``params``: gene-set priors inline), ``lr``, ``batch_size``,
  ``seed``, optional ``features`` (a feature spec: ``gene_sets``, ``gene_set_score``,
  ``raw``, ``interactions``, ``interaction_left``);
- ``strategy.py`` (optional): the contributor's Strategy class, named in
  ``_target_`` as ``contributor.ClassName``. It travels to the ServerApp as
  text in the run config and runs only there, never on the node;
- ``initial.npz`` (optional): starting weights (e.g. pretrained elsewhere),
  one array per parameter of the chosen model.

Who the contributor is comes from the workspace (the command line), never from
the package. A package that carries anything else -- client code above all --
is refused, naming the file or the rule, before any of its code is imported.
"""

from __future__ import annotations

import ast
import base64
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import yaml

from contract.submission import Submission
from models import ModelSpec
from models.pipeline import FeatureSpec, FeatureSpecError
from server.app import check_strategy_targets
from server.errors import PackageRefused, SubmissionFailed

ALLOWED_FILES = frozenset({"submission.yaml", "strategy.py", "initial.npz"})
#: The largest each file may be, checked before it is read.
FILE_LIMITS = {"submission.yaml": 64 * 2**10, "strategy.py": 256 * 2**10, "initial.npz": 16 * 2**20}
SUBMISSION_KEYS = frozenset({"strategy", "model", "lr", "batch_size", "seed", "features"})
#: Where a ``_target_`` may point: Flower's strategies, ours, or the package's own module.
TARGET_PREFIXES = ("flwr.serverapp.strategy.", "strategies.", "contributor.")
#: Modules whose import means client-side code: refused in ``strategy.py``.
CLIENT_MODULES = ("client", "flwr.clientapp", "flwr.client", "flwr.supernode", "flwr.simulation")


def load_package(folder: Path, contributor: str, local_epochs: int, num_rounds: int,
                 max_weight_bytes: int) -> Submission:
    """Check a package and turn it into a submission; nothing in it runs here.

    Parameters
    ----------
    folder : Path
        The package folder.
    contributor : str
        Who submits, as the workspace knows them.
    local_epochs, num_rounds : int
        The run's shape, which the workspace sets.
    max_weight_bytes : int
        The largest ``initial.npz`` accepted.

    Raises
    ------
    PackageRefused
        Naming the file or the rule that was broken.
    """
    if not folder.is_dir():
        raise PackageRefused("package-folder", f"{folder} is not a folder")
    extra = sorted(p.name for p in folder.iterdir() if p.name not in ALLOWED_FILES or not p.is_file())
    if extra:
        raise PackageRefused("package-files", f"only {sorted(ALLOWED_FILES)} may be submitted; "
                             f"found {extra} (client-side code is the foundation's)")
    for name in ALLOWED_FILES:
        path = folder / name
        limit = min(FILE_LIMITS[name], max_weight_bytes) if name == "initial.npz" else FILE_LIMITS[name]
        if path.is_file() and path.stat().st_size > limit:
            raise PackageRefused("max-array-bytes" if name == "initial.npz" else "package-size",
                                 f"{name} is larger than {limit} bytes")
    config = _read_submission(folder / "submission.yaml")
    source = _read_strategy(folder / "strategy.py")
    target = str(config["strategy"].get("_target_", ""))
    if not target.startswith(TARGET_PREFIXES) or (target.startswith("contributor.") and not source):
        raise PackageRefused("strategy-target", f"_target_ must start with one of {TARGET_PREFIXES}"
                             " (contributor.* needs strategy.py)")
    try:
        check_strategy_targets(config["strategy"])
    except SubmissionFailed as ex:
        raise PackageRefused("strategy-target", str(ex)) from None
    return Submission(
        contributor=contributor, strategy=dict(config["strategy"]),
        model=ModelSpec(str(config["model"]["name"]), dict(config["model"].get("params") or {})),
        lr=float(config["lr"]), batch_size=int(config["batch_size"]),
        local_epochs=local_epochs, num_rounds=num_rounds, seed=int(config.get("seed", 0)),
        strategy_source=source, features=_read_features(config.get("features") or {}),
        initial_weights=_read_weights(folder / "initial.npz", max_weight_bytes))


def _read_features(declared: object) -> FeatureSpec:
    """The package's feature spec (the node checks it against the cohort again)."""
    if not isinstance(declared, dict):
        raise PackageRefused("feature-spec", "features is a mapping of feature-spec keys")
    try:
        return FeatureSpec.from_json(json.dumps(declared))
    except FeatureSpecError as ex:
        raise PackageRefused("feature-spec", str(ex)) from None


def _read_submission(path: Path) -> dict:
    """The declarative part: known keys only."""
    if not path.is_file():
        raise PackageRefused("package-files", "submission.yaml is required")
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError:
        raise PackageRefused("submission-yaml", "submission.yaml is not valid YAML") from None
    if not isinstance(config, dict):
        raise PackageRefused("submission-yaml", "submission.yaml must be a mapping")
    unknown = sorted(set(config) - SUBMISSION_KEYS)
    missing = sorted({"strategy", "model", "lr", "batch_size"} - set(config))
    if unknown or missing:
        raise PackageRefused("submission-keys", f"unknown {unknown}, missing {missing}; "
                             f"allowed: {sorted(SUBMISSION_KEYS)}")
    if not isinstance(config["strategy"], dict) or not isinstance(config["model"], dict):
        raise PackageRefused("submission-keys", "strategy and model are mappings")
    return config


def _read_strategy(path: Path) -> str:
    """The strategy's source, refused if it parses badly or reaches for client-side code."""
    if not path.is_file():
        return ""
    source = path.read_text(encoding="utf-8")
    try:
        tree = ast.parse(source, filename="strategy.py")
    except SyntaxError as ex:
        raise PackageRefused("strategy-source", f"strategy.py does not parse (line {ex.lineno})"
                             ) from None
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        elif isinstance(node, ast.Name | ast.Attribute):
            if (node.id if isinstance(node, ast.Name) else node.attr) == "ClientApp":
                raise PackageRefused("no-client-code", "strategy.py may not use ClientApp")
        for name in names:
            if any(name == m or name.startswith(m + ".") for m in CLIENT_MODULES):
                raise PackageRefused("no-client-code", f"strategy.py may not import {name}")
    return source


def _read_weights(path: Path, max_bytes: int) -> str:
    """Starting weights as base64 of the npz file (the node checks their shapes)."""
    if not path.is_file():
        return ""
    data = path.read_bytes()
    if len(data) > max_bytes:
        raise PackageRefused("max-array-bytes", f"initial.npz is larger than {max_bytes} bytes")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            inflated = sum(member.file_size for member in archive.infolist())
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            arrays.files  # noqa: B018 (opening it is the check)
    except Exception:
        raise PackageRefused("initial-weights", "initial.npz is not a numpy .npz archive") from None
    if inflated > max_bytes:  # a small archive of zeros can inflate to gigabytes where it is read
        raise PackageRefused("max-array-bytes", f"initial.npz inflates to {inflated} bytes; at most "
                             f"{max_bytes}")
    return base64.b64encode(data).decode("ascii")
