"""DP-SGD on the node: noise changes the weights, epsilon is accounted and bounded."""

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict
from mlflow.tracking import MlflowClient
from runs import node_run

from client.errors import PolicyViolation
from client.node import Node
from client.policy import NodePolicy
from client.privacy import PrivacyPolicy, epsilon, round_entry, train_local_dp
from client.settings import NodeSettings
from client.training import FlopMeter, TrainConfig, train_local
from models import ModelSpec, build_model


def test_epsilon_grows_with_steps_and_shrinks_with_noise():
    assert epsilon([], 1e-5) == 0.0
    few, many = epsilon([(1.0, 1 / 16, 16)], 1e-5), epsilon([(1.0, 1 / 16, 160)], 1e-5)
    noisier = epsilon([(2.0, 1 / 16, 160)], 1e-5)
    assert 0 < few < many and noisier < many


def test_dp_sgd_clips_and_adds_noise():
    torch.manual_seed(0)
    x, y = torch.randn(256, 255), torch.randint(0, 3, (256,))
    config = TrainConfig(lr=0.1, local_epochs=1, batch_size=32, seed=5)
    plain = build_model(ModelSpec("linear"), 255, 3)
    noisy = build_model(ModelSpec("linear"), 255, 3)
    train_local(plain, x, y, config, FlopMeter())
    result = train_local_dp(noisy, x, y, config, FlopMeter(),
                            PrivacyPolicy(noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-5,
                                          epsilon_budget=10))
    assert not torch.allclose(plain.linear.weight, noisy.linear.weight)
    assert result.flops > 0 and result.num_examples == 256
    assert set(noisy.state_dict()) == {"linear.weight", "linear.bias"}  # no Opacus prefixes


@pytest.fixture
def private_node(tmp_path, cohort_parquet):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    experiment = client.create_experiment("dp", artifact_location=str(tmp_path / "artifacts"))
    entry = round_entry(512, TrainConfig(lr=0.1, local_epochs=1, batch_size=32), PrivacyPolicy(
        1.0, 1.0, 1e-5, 0))
    budget = (epsilon([entry], 1e-5) + epsilon([entry, entry], 1e-5)) / 2  # 1 round fits, 2 do not
    policy = NodePolicy(dp_enabled=True, dp_epsilon_budget=budget)
    node = Node(NodeSettings(data_path=str(cohort_parquet), tracking_uri=uri, device="cpu",
                             state_dir=str(tmp_path / "state"), policy=policy))
    return node, lambda: client.create_run(experiment).info.run_id


def _content(node, facts, server_round, **config):
    arrays = ArrayRecord({k: v.detach().cpu() for k, v in node.build(facts)[0].state_dict().items()})
    values = {"lr": 0.1, "local-epochs": 1, "batch-size": 32, "server-round": server_round} | config
    return RecordDict({"arrays": arrays, "config": ConfigRecord(values)})


def test_the_node_accounts_epsilon_per_contributor_and_refuses_over_budget(private_node):
    node, new_run = private_node
    facts = node_run("ada", new_run(), ModelSpec("linear"), 0, num_rounds=5)
    node.score_out_of_the_box(RecordDict({"arrays": _content(node, facts, 1)["arrays"]}), facts)
    node.train(_content(node, facts, 1), facts)
    with pytest.raises(PolicyViolation, match="'privacy-budget'"):
        node.train(_content(node, facts, 2), facts)
    node.score_fine_tuned(RecordDict({"arrays": _content(node, facts, 1)["arrays"]}), facts)
    metrics = MlflowClient(node.settings.tracking_uri).get_run(facts.submission_id).data.metrics
    assert 0 < metrics["privacy_epsilon"] <= metrics["privacy_epsilon_budget"]
    assert metrics["privacy_delta"] == 1e-5


def test_every_registered_model_trains_under_dp_with_a_proximal_term():
    """Per-example gradients come from torch.func, so a masked layer (pathway) is clipped too;
    the proximal term depends on no record and is applied outside the noise."""
    names = [f"gene_{i}" for i in range(4)] + ["clinical_0"]
    x, y = torch.randn(64, 5), torch.randint(0, 3, (64,))
    privacy = PrivacyPolicy(1.0, 1.0, 1e-5, 10.0)
    for spec in (ModelSpec("linear"), ModelSpec("mlp"),
                 ModelSpec("pathway", {"gene_sets": {"a": ["gene_0", "gene_1"]}})):
        model = build_model(spec, 5, 3, feature_names=names)
        before = [p.detach().clone() for p in model.parameters()]
        config = TrainConfig(lr=0.1, local_epochs=1, batch_size=16, proximal_mu=0.5, seed=1)
        result = train_local_dp(model, x, y, config, FlopMeter(), privacy)
        assert result.num_examples == 64 and result.flops > 0
        assert any(not torch.equal(a, b.detach()) for a, b in zip(before, model.parameters(), strict=True))


def test_dp_steps_are_clipped_per_example_so_one_record_moves_the_weights_by_at_most_the_clip():
    """Without noise, one drawn record's step is lr * clip / expected batch at most, however
    large its features: the sensitivity the accountant assumes."""
    model = build_model(ModelSpec("linear"), 5, 3)
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    x, y = torch.full((4, 5), 1e6), torch.tensor([0, 1, 2, 0])
    config = TrainConfig(lr=1.0, local_epochs=1, batch_size=4, seed=3)
    train_local_dp(model, x, y, config, FlopMeter(), PrivacyPolicy(0.0, 1.0, 1e-5, 10.0))
    moved = torch.cat([p.detach().flatten() for p in model.parameters()]) - before
    assert 0 < float(moved.norm()) <= 4 * 1.0 / 4 + 1e-5  # at most 4 records drawn, each clipped to 1


def test_dp_flops_are_linear_in_the_records_drawn_so_one_count_serves_every_batch_size():
    """The meter counts a DP step once and charges records x the per-record count: that holds
    only if the count is the same whatever size the first counted batch had."""
    from torch.utils.flop_counter import FlopCounterMode

    from client.privacy import _dp_step

    model = build_model(ModelSpec("mlp"), 5, 3)
    params = dict(model.named_parameters())
    x, y = torch.randn(64, 5), torch.randint(0, 3, (64,))
    config = TrainConfig(lr=0.1, local_epochs=1, batch_size=16)
    from torch.func import functional_call, grad, vmap

    def example_loss(values, xi, yi):
        return torch.nn.functional.cross_entropy(functional_call(model, values, (xi.unsqueeze(0),)),
                                                 yi.unsqueeze(0))

    per_example = vmap(grad(example_loss), in_dims=(None, 0, 0))
    counts = {}
    for size in (7, 23, 64):
        with FlopCounterMode(display=False) as counter:
            _dp_step(model, params, x[:size], y[:size], per_example, 1.0, 1.0, 16.0, config, None,
                     torch.Generator().manual_seed(0))
        counts[size] = counter.get_total_flops()
    assert counts[7] > 0 and counts[23] * 7 == counts[7] * 23 and counts[64] * 7 == counts[7] * 64
