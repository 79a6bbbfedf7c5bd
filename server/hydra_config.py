"""Composing ``conf/`` with Hydra: the light part every command needs (no torch, no Flower), so
that commands which read a store and print answer in about a second."""

from __future__ import annotations

import json
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from conf import CONF_DIR

# ``${json_file:path}`` reads a contributor's prior (e.g. gene sets) when a config names it;
# ``${conf_dir:}`` is this project's conf/ folder.
for _name, _resolver in (("json_file", lambda path: json.loads(Path(path).read_text())),
                         ("conf_dir", lambda: str(CONF_DIR))):
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _resolver)


def compose_config(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Compose ``conf/config.yaml`` with Hydra overrides (no ``@hydra.main``)."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return compose("config", overrides=list(overrides))


def output_dir(cfg: DictConfig) -> Path:
    """The absolute output directory (relative paths are taken from the working directory)."""
    return Path(str(cfg.output_dir)).expanduser().resolve()


def tracking_uri(cfg: DictConfig) -> str:
    """The MLflow store: the configured URI, or a SQLite file in ``output_dir``."""
    if cfg.tracking.uri:
        return str(cfg.tracking.uri)
    return f"sqlite:///{output_dir(cfg) / 'mlflow.db'}"
