"""The ordinal outcome head (cumulative link, proportional odds) over any model of the registry:
a proper distribution whatever the weights, the generating model recovered from its data, and the
node's rules (shapes, reply whitelist, metering, DP-SGD, capacity) unchanged for it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict
from mlflow.tracking import MlflowClient
from runs import node_run

from client.errors import PolicyViolation
from client.node import Node
from client.policy import NodePolicy
from client.settings import NodeSettings
from contract.names import TRAIN_REPLY_KEYS
from models import ModelSpec, build_model
from models.heads import OrdinalHead


@pytest.mark.parametrize("name", ["linear", "mlp"])
def test_any_weights_give_ordered_cut_points_and_a_distribution(name):
    model = build_model(ModelSpec(name, {"head": "ordinal"}), 12, 4, seed=3)
    assert isinstance(model, OrdinalHead)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 5)  # a strategy may send any weights
        log_p = model(torch.randn(64, 12))
    assert log_p.shape == (64, 4)
    assert torch.allclose(log_p.exp().sum(1), torch.ones(64), atol=1e-5)
    assert (model.cut_points().diff() >= 0).all()  # ordered (ties only where float32 rounds softplus away)


def test_a_proportional_odds_model_is_recovered_from_its_data():
    """Data drawn from P(y <= k) = sigmoid(t_k - x.w): the fitted head finds w's direction and the
    cut-points, and beats a multinomial head's log-likelihood on fresh data from the same model."""
    rng = np.random.default_rng(0)
    w, cuts = rng.normal(size=8), np.array([-1.0, 1.0])

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = rng.normal(size=(n, 8))
        latent = x @ w + rng.logistic(size=n)
        return torch.tensor(x, dtype=torch.float32), torch.tensor(np.searchsorted(cuts, latent))

    x, y = draw(400)
    fitted = {}
    for head in ("ordinal", "multinomial"):
        model = build_model(ModelSpec("linear", {"head": head}), 8, 3, seed=0)
        optimiser = torch.optim.LBFGS(model.parameters(), max_iter=500, line_search_fn="strong_wolfe")

        def closure(model=model, optimiser=optimiser):
            optimiser.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            return loss

        optimiser.step(closure)
        fitted[head] = model
    slope = fitted["ordinal"].base.linear.weight.detach().numpy().ravel()
    assert np.dot(slope, w) / np.linalg.norm(slope) / np.linalg.norm(w) > 0.97
    assert np.allclose(fitted["ordinal"].cut_points().detach().numpy(), cuts, atol=0.5)
    x_new, y_new = draw(4000)
    with torch.no_grad():
        nll = {h: torch.nn.functional.cross_entropy(m(x_new), y_new).item() for h, m in fitted.items()}
    assert nll["ordinal"] < nll["multinomial"]  # 9 parameters against 27, the right ones


@pytest.mark.parametrize("dp", [False, True])
def test_the_node_trains_and_scores_a_penalised_ordinal_model_under_its_rules(tmp_path, cohort_parquet, dp):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    experiment = client.create_experiment("heads", artifact_location=str(tmp_path / "artifacts"))
    node = Node(NodeSettings(data_path=str(cohort_parquet), tracking_uri=uri, device="cpu",
                             state_dir=str(tmp_path / "state"), policy=NodePolicy(dp_enabled=dp)))
    run = node_run("ada", client.create_run(experiment).info.run_id,
                   ModelSpec("linear", {"head": "ordinal", "l1": 0.01, "l2": 0.01}))
    model, shapes, _ = node.build(run)
    assert shapes["cuts"] == (2,) and shapes["base.linear.weight"][0] == 1  # one score, two cut-points
    initial = ArrayRecord({k: v.detach() for k, v in model.state_dict().items()})
    node.score_out_of_the_box(RecordDict({"arrays": initial}), run)
    reply = node.train(RecordDict({"arrays": initial, "config": ConfigRecord(
        {"lr": 0.05, "local-epochs": 1, "batch-size": 32, "server-round": 1})}), run)
    assert set(reply["metrics"]) <= set(TRAIN_REPLY_KEYS) and reply["metrics"]["compute-flops"] > 0
    node.score_fine_tuned(RecordDict({"arrays": reply["arrays"]}), run)
    metrics = client.get_run(run.submission_id).data.metrics
    assert 0.0 <= metrics["holdout_fine_tuned_macro_f1"] <= 1.0

    # a head the node does not know is refused before any data is read
    unknown = node_run("ada", client.create_run(experiment).info.run_id,
                       ModelSpec("linear", {"head": "tree"}))
    with pytest.raises(PolicyViolation, match="model-spec"):
        node.build(unknown)


def test_an_elastic_net_declared_in_the_model_spec_shrinks_and_zeroes_weights(tmp_path, cohort_parquet):
    """lasso: the node's proximal step gives exact zeros; the same round without it gives none."""
    from dataclasses import replace

    from client.training import FlopMeter, TrainConfig, train_local

    rng = np.random.default_rng(0)
    x = torch.tensor(rng.normal(size=(256, 40)), dtype=torch.float32)
    y = (x[:, 0] + x[:, 1] > 0).long()
    config = TrainConfig(lr=0.1, local_epochs=20, batch_size=32)
    weights = {}
    for name, l1 in (("plain", 0.0), ("lasso", 0.05)):
        model = build_model(ModelSpec("linear", {"l1": l1}), 40, 2, seed=0)
        train_local(model, x, y, replace(config, l1=l1), FlopMeter(tmp_path / f"{name}.sqlite"))
        weights[name] = model.linear.weight.detach()
    assert (weights["plain"] == 0).sum() == 0
    zeroed = (weights["lasso"] == 0).all(0)
    assert zeroed.sum() >= 19 and not zeroed[:2].any()  # most of the 38 noise columns go, the signal stays
    ridge = build_model(ModelSpec("linear", {"l2": 0.5}), 40, 2, seed=0)
    train_local(ridge, x, y, replace(config, l2=0.5), FlopMeter(tmp_path / "ridge.sqlite"))
    assert ridge.linear.weight.norm() < weights["plain"].norm() / 2


@pytest.mark.parametrize("value", [-0.1, 0.6, "big", float("nan")])
def test_a_penalty_out_of_the_policy_is_refused_before_any_data_is_read(value):
    from client.policy import check_model, feature_pipeline
    from contract.schema import SCHEMA
    from models.pipeline import FeatureSpec

    with pytest.raises(PolicyViolation, match="model-spec|penalty-range"):
        check_model(ModelSpec("linear", {"l1": value}), NodePolicy(), feature_pipeline(FeatureSpec(), SCHEMA),
                    3)


def test_a_penalised_round_is_charged_in_advance_like_any_other(tmp_path):
    """The budget check reserves a round's FLOPs from the meter's counts before it runs; the
    penalty's steps are counted under the key the check looks up (else the round looks free)."""
    from dataclasses import replace

    from client.training import FlopMeter, TrainConfig, expected_flops, train_local

    x, y = torch.randn(96, 10), torch.randint(0, 3, (96,))
    meter = FlopMeter(tmp_path / "flops.sqlite")
    for config in (TrainConfig(lr=0.1, local_epochs=1, batch_size=32),
                   replace(TrainConfig(lr=0.1, local_epochs=1, batch_size=32), l1=0.01, l2=0.01)):
        model = build_model(ModelSpec("linear"), 10, 3)
        assert expected_flops(model, 96, config, meter) == 0  # never counted: charged after
        spent = train_local(model, x, y, config, meter).flops
        assert expected_flops(model, 96, config, meter) == spent > 0
