"""Every Hydra config group composes, and every option builds its object."""

from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from client.schema import SCHEMA
from client.settings import CONF_DIR, load_policy
from models import ModelSpec, build_model
from server.app import build_strategy
from server.config import compose_config, node_settings, submission_from_config


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("name", options("strategy"))
def test_every_strategy_instantiates_with_real_node_minimums(name):
    cfg = compose_config([f"strategy={name}"])
    strategy = build_strategy(OmegaConf.to_container(cfg.strategy), n_nodes=1)
    assert strategy.min_train_nodes == 1 and strategy.min_available_nodes == 1
    assert type(strategy).__name__ == cfg.strategy._target_.rsplit(".", 1)[-1]


@pytest.mark.parametrize("name", options("model"))
def test_every_model_builds(name):
    cfg = compose_config([f"model={name}"])
    spec = ModelSpec(cfg.model.name, OmegaConf.to_container(cfg.model.params))
    model = build_model(spec, n_features=255, n_classes=len(SCHEMA.classes))
    assert sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.parametrize("name", options("workspace"))
def test_every_workspace_policy_loads(name):
    policy = load_policy(CONF_DIR / "workspace" / f"{name}.yaml")
    assert policy.lr_min < policy.lr_max and policy.batch_size_min >= 1


@pytest.mark.parametrize("name", options("cohort"))
def test_every_cohort_option_gives_node_settings(name, tmp_path):
    cfg = compose_config([f"cohort={name}", f"cohort.path={tmp_path}/c.csv", f"output_dir={tmp_path}"])
    settings = node_settings(cfg)
    assert Path(settings.data_path) == tmp_path / "c.csv"
    assert settings.tracking_uri == f"sqlite:///{tmp_path}/mlflow.db"


def test_demo_submissions_compose_and_command_line_overrides_apply_to_all():
    cfg = compose_config()
    assert len(cfg.demo.submissions) >= 4
    contributors = set()
    for entry in cfg.demo.submissions:
        sub = submission_from_config(compose_config([*entry.overrides, "workspace.num_rounds=3"]))
        contributors.add(entry.contributor)
        assert sub.num_rounds == 3
        instantiate(sub.strategy)
    assert len(contributors) == len(cfg.demo.submissions)


def test_hydra_override_reaches_the_strategy():
    cfg = compose_config(["strategy=fedprox", "strategy.proximal_mu=0.1"])
    assert build_strategy(OmegaConf.to_container(cfg.strategy), 1).proximal_mu == 0.1


def test_unknown_key_is_refused():
    with pytest.raises(Exception, match="no_such_key"):
        compose_config(["workspace.no_such_key=1"])
