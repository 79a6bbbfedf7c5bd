"""Every strategy Flower ships is rehearsed before a run: it works, or it is refused saying why.

The classes are found by introspection, so a new Flower version's strategies are covered
too; ``tests/test_strategies.py`` (slow) runs each accepted one for real.
"""

from __future__ import annotations

import inspect
from dataclasses import replace

import flwr.serverapp.strategy as flower_strategies
import pytest
from flwr.serverapp.strategy import Strategy
from runs import node_run

from models import ModelSpec
from server.app import initial_arrays
from server.errors import PackageRefused
from server.rehearsal import rehearse

#: Values for the arguments Flower's constructors require (a wrapper wraps FedAvg).
REQUIRED = {"strategy": {"_target_": "flwr.serverapp.strategy.FedAvg"}, "noise_multiplier": 0.1,
            "clipping_norm": 1.0, "num_sampled_clients": 1, "client_learning_rate": 0.1,
            "clipped_count_stddev": 1.0}
#: What Flower 1.42's strategies do against the pilot's one node under DP (train-loss not sent).
REFUSED_UNDER_DP = {
    "Bulyan": "Required at least 3",
    "DifferentialPrivacyClientSideAdaptiveClipping": "client-side clipping needs Flower's clipping mod",
    "DifferentialPrivacyClientSideFixedClipping": "['clipping_norm'] the node does not take",
    "FedXgbBagging": "XGBoost",
    "QFedAvg": "needs the nodes' 'train-loss'",
}


def flower_strategy_classes() -> list[str]:
    return sorted(name for name, found in vars(flower_strategies).items()
                  if isinstance(found, type) and issubclass(found, Strategy)
                  and not inspect.isabstract(found))


def config_for(name: str) -> dict:
    parameters = inspect.signature(getattr(flower_strategies, name).__init__).parameters
    return {"_target_": f"flwr.serverapp.strategy.{name}",
            **{key: value for key, value in REQUIRED.items() if key in parameters}}


def submission_with(config: dict):
    return replace(node_run("alice", "", ModelSpec(name="linear")), strategy=config)


def rehearse_pilot(config: dict, dp: bool = True) -> list[str]:
    submission = submission_with(config)
    return rehearse(config, initial_arrays(submission), submission.train_config(), n_nodes=1,
                    sends_train_loss=not dp)


def test_introspection_finds_every_strategy_flower_ships():
    assert len(flower_strategy_classes()) >= 18 and "FedAvg" in flower_strategy_classes()


@pytest.mark.parametrize("name", flower_strategy_classes())
def test_every_flower_strategy_is_accepted_or_refused_saying_why(name):
    try:
        notices = rehearse_pilot(config_for(name))
    except PackageRefused as refused:
        assert refused.rule == "strategy-rehearsal" and name in str(refused)
        assert name in REFUSED_UNDER_DP, f"{name} is refused: {refused}"
        assert REFUSED_UNDER_DP[name] in str(refused)
        return
    assert name not in REFUSED_UNDER_DP, f"{name} was expected to be refused"
    assert all(isinstance(notice, str) for notice in notices)


def test_qfedavg_works_once_the_node_sends_its_training_loss():
    """The node's metric is ``train-loss``, not Flower's default ``train_loss``: the workspace
    fills the key in, and the contributor may name it."""
    assert rehearse_pilot(config_for("QFedAvg"), dp=False) == []
    with pytest.raises(PackageRefused, match="'loss'"):
        rehearse_pilot({**config_for("QFedAvg"), "train_loss_key": "loss"}, dp=False)


@pytest.mark.parametrize("name", ["Krum", "MultiKrum", "FedMedian", "FedTrimmedAvg"])
def test_a_robust_aggregator_with_one_node_says_it_is_fedavg(name):
    [notice] = rehearse_pilot(config_for(name))
    assert "1 node" in notice and "FedAvg" in notice


def test_a_wrapper_is_rehearsed_with_the_strategy_it_wraps():
    wrapped = {**config_for("DifferentialPrivacyServerSideFixedClipping"),
               "strategy": {"_target_": "flwr.serverapp.strategy.Krum"}}
    assert any("Krum" in notice for notice in rehearse_pilot(wrapped))
    with pytest.raises(PackageRefused, match="Bulyan"):
        rehearse_pilot({**wrapped, "strategy": {"_target_": "flwr.serverapp.strategy.Bulyan"}})


def test_a_misspelt_argument_is_refused_with_flowers_own_words():
    with pytest.raises(PackageRefused, match="cannot be built.*fraction_trian"):
        rehearse_pilot({**config_for("FedAvg"), "fraction_trian": 1.0})


def test_the_rehearsal_leaves_flowers_logging_as_it_found_it():
    import logging

    logger = logging.getLogger("flwr")
    before = (logger.level, logger.handlers[:], logger.propagate)
    with pytest.raises(PackageRefused):
        rehearse_pilot(config_for("Bulyan"))
    assert (logger.level, logger.handlers, logger.propagate) == before
