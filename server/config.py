"""Reading the Hydra configuration once, at the edge, into typed objects."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from client.settings import NodeSettings, policy_from_mapping
from contract.submission import Submission
from models import ModelSpec
from models.pipeline import FeatureSpec
from server.hydra_config import compose_config, output_dir, tracking_uri
from synthetic.pretraining import Pretraining

__all__ = ["compose_config", "output_dir", "tracking_uri"]  # read from here by the commands too

@dataclass(frozen=True)
class Entry:
    """One submission as configured, and the pretraining its contributor does first (if any).

    Pretraining is its own step (``synthetic.pretraining.with_pretrained_weights``), run by
    the command after the configuration is read, never while reading it.
    """

    submission: Submission
    pretraining: Pretraining | None = None


def _number(cfg: DictConfig, key: str, kind: type) -> float | int:
    """``cfg``'s value at ``key`` as a float or a whole number; a ValueError naming the key if not."""
    value = OmegaConf.select(cfg, key)
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if number != number or (kind is int and not number.is_integer()):
        raise ValueError(f"{key}={value!r}: {key} must be {'a whole number' if kind is int else 'a number'}")
    return kind(number)


def entry_from_config(cfg: DictConfig) -> Entry:
    """The submission a composed config describes, and its pretraining."""
    pretrain = OmegaConf.to_container(cfg.pretrain, resolve=True)
    enabled = pretrain.pop("enabled")
    submission = Submission(
        contributor=str(cfg.contributor),
        strategy=OmegaConf.to_container(cfg.strategy, resolve=True),
        model=ModelSpec(name=str(cfg.model.name),
                        params=OmegaConf.to_container(cfg.model.params, resolve=True)),
        features=FeatureSpec(**OmegaConf.to_container(cfg.features, resolve=True)),
        lr=_number(cfg, "lr", float),
        batch_size=_number(cfg, "batch_size", int),
        local_epochs=_number(cfg, "workspace.local_epochs", int),
        num_rounds=_number(cfg, "workspace.num_rounds", int),
        seed=_number(cfg, "seed", int),
    )
    return Entry(submission, Pretraining(**pretrain) if enabled else None)


def signing_key_path(cfg: DictConfig) -> Path:
    """The workspace's private signing key; the local node trusts its ``.pub`` beside it."""
    return output_dir(cfg) / "workspace" / "grant-key.pem"


def node_settings(cfg: DictConfig) -> NodeSettings:
    """The node operator's settings for a local (simulated) node."""
    return NodeSettings(
        data_path=str(Path(str(cfg.cohort.path)).expanduser().resolve()),
        tracking_uri=tracking_uri(cfg),
        holdout_size=int(cfg.cohort.holdout_size),
        split_seed=int(cfg.cohort.split_seed),
        state_dir=str(output_dir(cfg) / "node-state"),
        workspace_key=str(signing_key_path(cfg)) + ".pub",
        policy=policy_from_mapping(OmegaConf.to_container(cfg.policy, resolve=True)),
        dictionary=str(Path(str(cfg.cohort.dictionary)).expanduser().resolve()),
        holdout_fraction=(None if OmegaConf.select(cfg, "cohort.holdout_fraction") is None
                          else _number(cfg, "cohort.holdout_fraction", float)),
    )


@dataclass(frozen=True)
class WorkspaceSettings:
    """What the workspace itself takes from the configuration.

    Attributes
    ----------
    synthetic_seed : int or None
        Seed of the synthetic cohort to write at ``cohort_path``; None when the
        cohort is a file the node already has.
    synthetic_disease : {"demo", "myopathy"}
        Which synthetic disease that cohort is drawn from.
    """

    experiment: str
    parallel_runs: int
    cohort_path: Path
    synthetic_seed: int | None
    signing_key: Path
    synthetic_disease: str = "demo"


@dataclass(frozen=True)
class Job:
    """Everything one ``cohortfl demo`` or ``run`` needs, read from the config once."""

    workspace: WorkspaceSettings
    node: NodeSettings
    entries: list[Entry]
    output_dir: Path


def load_job(overrides: list[str], demo: bool) -> Job:
    """Compose the configuration (and, for the demo, each pilot submission's) into typed values.

    Command-line overrides apply to every submission, after the submission's own.
    """
    cfg = compose_config(overrides)
    each = ([[*entry.overrides, f"contributor={entry.contributor}", *overrides]
             for entry in cfg.demo.submissions] if demo else [overrides])
    return Job(
        workspace=WorkspaceSettings(
            experiment=str(cfg.tracking.experiment),
            parallel_runs=int(cfg.workspace.parallel_runs),
            cohort_path=Path(str(cfg.cohort.path)).expanduser(),
            synthetic_seed=int(cfg.cohort.seed) if cfg.cohort.kind == "synthetic" else None,
            signing_key=signing_key_path(cfg),
            synthetic_disease=str(OmegaConf.select(cfg, "cohort.disease", default="demo"))),
        node=node_settings(cfg),
        entries=[entry_from_config(compose_config(o)) for o in each],
        output_dir=output_dir(cfg),
    )


@dataclass(frozen=True)
class RunShape:
    """What the workspace, not the contributor, sets for every submission."""

    num_rounds: int
    local_epochs: int


def deployment_workspace(tracking_uri: str, experiment: str, signer,
                         overrides: tuple[str, ...] = ()) -> tuple:  # -> (Workspace, RunShape)
    """The workspace of a deployment: its MLflow server, its signer, the run shape of
    ``conf/workspace``, the node policy it publishes (``conf/policy``) to pre-check
    submissions (the node enforces its own) and the cohort schema the node published
    (``cohort.published_schema``: a file ``cohortfl schema --json`` wrote; by default the demo's).
    ``overrides`` are the operator's Hydra overrides."""
    from contract.schema import SCHEMA, CohortSchema
    from server.workspace import Workspace

    cfg = compose_config(overrides)
    published = NodeSettings(data_path="", tracking_uri=tracking_uri, state_dir="",
                             policy=policy_from_mapping(OmegaConf.to_container(cfg.policy, resolve=True)))
    shape = RunShape(int(cfg.workspace.num_rounds), int(cfg.workspace.local_epochs))
    schema_file = OmegaConf.select(cfg, "cohort.published_schema")
    schema = CohortSchema.from_json(Path(str(schema_file)).read_text()) if schema_file else SCHEMA
    return Workspace(published, experiment, signer, schema=schema), shape
