"""Every Hydra config group composes, and every option builds its object."""

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from client.cohort import schema_for
from client.errors import PolicyViolation
from client.policy import check_model, feature_pipeline
from client.settings import CONF_DIR, load_policy
from contract.schema import SCHEMA, CohortSchema
from contract.submission import RUN_CONFIG_KEYS
from models import build_for
from server.app import build_strategy
from server.config import compose_config, entry_from_config, node_settings
from synthetic.disease import public_gene_sets
from synthetic.pretraining import with_pretrained_weights


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("name", options("strategy"))
def test_every_strategy_instantiates_with_real_node_minimums(name):
    cfg = compose_config([f"strategy={name}"])
    strategy = build_strategy(OmegaConf.to_container(cfg.strategy), n_nodes=1)
    assert strategy.min_train_nodes == 1 and strategy.min_available_nodes == 1
    assert type(strategy).__name__ == cfg.strategy._target_.rsplit(".", 1)[-1]


#: Feature specs written for a cohort other than the demo's, and that cohort's config option.
COHORT_OF_FEATURES = {"myopathy": "myopathy"}


def _schema_of(cohort: str) -> CohortSchema:
    """The schema of a synthetic cohort option, from its dictionary and its generator's header."""
    if cohort != "myopathy":
        return SCHEMA
    from synthetic.myopathy import DICTIONARY, generate_myopathy

    return schema_for(DICTIONARY, list(generate_myopathy(0, n_records=20).columns))


@pytest.mark.parametrize("features", options("features"))
@pytest.mark.parametrize("name", options("model"))
def test_every_model_builds_on_every_feature_pipeline_within_the_policy(name, features):
    cohort = COHORT_OF_FEATURES.get(features, "synthetic")
    cfg = compose_config([f"model={name}", f"features={features}", f"cohort={cohort}"])
    sub = entry_from_config(cfg).submission
    schema = _schema_of(cohort)
    pipeline = feature_pipeline(sub.features, schema)
    # the gene-set layer needs the single genes; the pathway option's sets name the demo's genes
    if name == "pathway" and (features == "gene_sets" or cohort != "synthetic"):
        with pytest.raises(PolicyViolation, match="model-spec"):
            check_model(sub.model, node_settings(cfg).policy, pipeline, len(schema.classes))
        return
    check_model(sub.model, node_settings(cfg).policy, pipeline, len(schema.classes))
    model = build_for(sub.model, pipeline, len(schema.classes))
    assert sum(p.numel() for p in model.parameters()) > 0


def test_gene_set_priors_are_read_from_the_contributors_file(tmp_path):
    (tmp_path / "sets.json").write_text(json.dumps({"mine": ["gene_1", "gene_2"]}))
    cfg = compose_config(["model=pathway", "features=gene_sets", f"priors.gene_sets={tmp_path}/sets.json"])
    sub = entry_from_config(cfg).submission
    assert sub.model.params["gene_sets"] == {"mine": ["gene_1", "gene_2"]}
    assert sub.features.gene_sets == {"mine": ("gene_1", "gene_2")}


def test_the_shipped_gene_set_database_is_the_generators_public_one():
    shipped = json.loads((CONF_DIR / "priors" / "public_gene_sets.json").read_text())
    assert shipped == public_gene_sets(0)


def test_reading_the_config_trains_nothing_and_pretraining_gives_weights_once(tmp_path):
    overrides = ["model=linear", "pretrain=external", "pretrain.n_records=300", "pretrain.epochs=2",
                 f"output_dir={tmp_path}"]
    entry = entry_from_config(compose_config(overrides))
    assert not entry.submission.initial_weights and not (tmp_path / "pretrained").exists()
    sub = with_pretrained_weights(entry.submission, entry.pretraining, tmp_path / "pretrained")
    with np.load(io.BytesIO(base64.b64decode(sub.initial_weights))) as npz:
        assert {k: npz[k].shape for k in npz.files} == {"linear.weight": (3, 255), "linear.bias": (3,)}
    cached = list((tmp_path / "pretrained").glob("*.npz"))
    assert len(cached) == 1
    again = with_pretrained_weights(entry.submission, entry.pretraining, tmp_path / "pretrained")
    assert again.initial_weights == sub.initial_weights
    assert entry_from_config(compose_config(overrides[:1])).pretraining is None


@pytest.mark.parametrize("name", options("policy"))
def test_every_node_policy_loads(name):
    policy = load_policy(CONF_DIR / "policy" / f"{name}.yaml")
    assert policy.lr_min < policy.lr_max and policy.batch_size_min >= 1


@pytest.mark.parametrize("name", options("cohort"))
def test_every_cohort_option_gives_node_settings(name, tmp_path):
    cfg = compose_config([f"cohort={name}", f"cohort.path={tmp_path}/c.csv", f"output_dir={tmp_path}"])
    settings = node_settings(cfg)
    assert Path(settings.data_path) == tmp_path / "c.csv"
    assert settings.tracking_uri == f"sqlite:///{tmp_path}/mlflow.db"


def test_demo_submissions_compose_and_command_line_overrides_apply_to_all(tmp_path):
    cfg = compose_config()
    assert len(cfg.demo.submissions) >= 4
    contributors = set()
    for entry in cfg.demo.submissions:
        sub = entry_from_config(compose_config([*entry.overrides, "workspace.num_rounds=3",
                                                "++pretrain.n_records=200", "++pretrain.epochs=1",
                                                f"output_dir={tmp_path}"])).submission
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


def test_every_run_config_key_is_declared_in_the_flower_app():
    """Flower's deployment engine refuses a run config with undeclared keys ('Invalid run
    configuration'), which only the slow tier would otherwise notice."""
    import tomllib

    project = tomllib.loads((CONF_DIR.parent / "pyproject.toml").read_text())
    declared = project["tool"]["flwr"]["app"]["config"]
    assert set(RUN_CONFIG_KEYS) == set(declared)
    sub = entry_from_config(compose_config(["model=linear"])).submission
    assert set(sub.to_run_config()) | {"grant"} == set(declared)


def test_cohortfl_policy_warns_plainly_when_differential_privacy_is_off(capsys):
    from server.cli import main

    assert main(["policy"]) == 0
    assert "dp_enabled               True" in capsys.readouterr().out
    assert main(["policy", "policy.dp_enabled=false"]) == 0
    shown = capsys.readouterr().out
    assert "WARNING: differential privacy is off" in shown and "docs/privacy.md" in shown


@pytest.mark.parametrize("wrapper", ["DifferentialPrivacyServerSideFixedClipping",
                                     "DifferentialPrivacyClientSideFixedClipping"])
def test_a_wrapping_strategy_gets_the_real_node_minimums_on_the_strategy_it_wraps(wrapper):
    """Flower's DP wrappers sample through their inner FedAvg, whose default of 2 nodes would
    wait forever for a second node."""
    strategy = build_strategy({"_target_": f"flwr.serverapp.strategy.{wrapper}",
                               "strategy": {"_target_": "flwr.serverapp.strategy.FedAvg"},
                               "noise_multiplier": 1.0, "clipping_norm": 1.0,
                               "num_sampled_clients": 1}, n_nodes=1)
    inner = strategy.strategy
    assert inner.min_train_nodes == inner.min_evaluate_nodes == inner.min_available_nodes == 1
