"""The project's Hydra configuration groups (YAML files)."""

from pathlib import Path

#: This folder: Hydra composes ``config.yaml`` from here.
CONF_DIR = Path(__file__).resolve().parent
