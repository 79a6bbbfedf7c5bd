"""Reading the Hydra configuration once, at the edge, into typed objects."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from client.settings import CONF_DIR, NodeSettings, policy_from_mapping
from models import ModelSpec
from server.submission import Submission


def compose_config(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Compose ``conf/config.yaml`` with Hydra overrides (no ``@hydra.main``)."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return compose("config", overrides=list(overrides))


def submission_from_config(cfg: DictConfig) -> Submission:
    """The submission a composed config describes."""
    return Submission(
        contributor=str(cfg.contributor),
        strategy=OmegaConf.to_container(cfg.strategy, resolve=True),
        model=ModelSpec(name=str(cfg.model.name),
                        params=OmegaConf.to_container(cfg.model.params, resolve=True)),
        lr=float(cfg.lr),
        batch_size=int(cfg.batch_size),
        local_epochs=int(cfg.workspace.local_epochs),
        num_rounds=int(cfg.workspace.num_rounds),
        seed=int(cfg.seed),
    )


def tracking_uri(cfg: DictConfig) -> str:
    """The MLflow store: the configured URI, or a SQLite file in ``output_dir``."""
    if cfg.tracking.uri:
        return str(cfg.tracking.uri)
    return f"sqlite:///{output_dir(cfg) / 'mlflow.db'}"


def output_dir(cfg: DictConfig) -> Path:
    """The absolute output directory (relative paths are taken from the working directory)."""
    return Path(str(cfg.output_dir)).expanduser().resolve()


def node_settings(cfg: DictConfig) -> NodeSettings:
    """The node operator's settings for a local (simulated) node."""
    return NodeSettings(
        data_path=str(Path(str(cfg.cohort.path)).expanduser().resolve()),
        tracking_uri=tracking_uri(cfg),
        holdout_size=int(cfg.cohort.holdout_size),
        split_seed=int(cfg.cohort.split_seed),
        state_dir=str(output_dir(cfg) / "node-state"),
        policy=policy_from_mapping(OmegaConf.to_container(cfg.workspace.limits, resolve=True)),
    )
