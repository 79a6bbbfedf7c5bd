"""The node's incoming checks and reply whitelist (client/policy.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from client.errors import PolicyViolation, ReplyRefused
from client.policy import (
    NodePolicy,
    check_arrays,
    check_content_keys,
    check_reply,
    parse_train_config,
)
from client.training import TrainConfig
from contract.names import HOLDOUT_REPLY_KEYS, TRAIN_REPLY_KEYS
from models.linear import LinearClassifier
from models.mlp import MLPClassifier

POLICY = NodePolicy()
VALID = {"lr": 0.05, "local-epochs": 2, "batch-size": 32}


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return MLPClassifier(255, 3, hidden=[16])


def _shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


MODEL = _model()
SHAPES = _shapes(MODEL)


def _state(**changes: torch.Tensor) -> dict[str, torch.Tensor]:
    """The model's state dict (copies), with some entries replaced."""
    state = {k: v.clone() for k, v in MODEL.state_dict().items()}
    state.update(changes)
    return state


def _refused(rule: str, call, *args, **kwargs) -> PolicyViolation:
    with pytest.raises(PolicyViolation) as info:
        call(*args, **kwargs)
    assert info.value.rule == rule
    assert f"'{rule}'" in str(info.value)
    return info.value


# --- parse_train_config --------------------------------------------------------------


def _parse(**changes):
    config = {**VALID, **changes}
    config = {k: v for k, v in config.items() if v is not None}
    return parse_train_config(ConfigRecord(config), POLICY)


def test_valid_config_is_accepted():
    config = _parse(**{"proximal-mu": 0.1, "server-round": 3})
    assert config == TrainConfig(lr=0.05, local_epochs=2, batch_size=32, proximal_mu=0.1,
                                 server_round=3)
    assert isinstance(config.local_epochs, int) and isinstance(config.batch_size, int)


def test_optional_keys_have_defaults_and_whole_floats_count_as_integers():
    config = _parse(**{"local-epochs": 2.0})
    assert config.proximal_mu == 0.0 and config.server_round == 1
    assert config.local_epochs == 2 and isinstance(config.local_epochs, int)


@pytest.mark.parametrize("key, value", [("record-ids", [3, 14, 15]), ("indices", [0, 1]),
                                        ("subset", "holdout"), ("LR", 0.1)])
def test_unknown_keys_are_refused(key, value):
    error = _refused("known-config-keys", _parse, **{key: value})
    assert repr(key) in str(error)


@pytest.mark.parametrize("key", ["lr", "local-epochs", "batch-size"])
def test_required_keys(key):
    error = _refused("required-config-keys", _parse, **{key: None})
    assert f"'{key}'" in str(error)


@pytest.mark.parametrize("rule, key, value", [
    ("lr-range", "lr", 0.0),
    ("lr-range", "lr", 1e-6),
    ("lr-range", "lr", 1.5),
    ("lr-range", "lr", -0.1),
    ("lr-type", "lr", math.nan),
    ("lr-type", "lr", math.inf),
    ("local-epochs-type", "local-epochs", math.inf),
    ("batch-size-type", "batch-size", math.nan),
    ("local-epochs-range", "local-epochs", 0),
    ("local-epochs-range", "local-epochs", 6),
    ("batch-size-range", "batch-size", 1),  # one record per step
    ("batch-size-range", "batch-size", 15),
    ("batch-size-range", "batch-size", 513),
    ("proximal-mu-range", "proximal-mu", -1.0),
    ("proximal-mu-range", "proximal-mu", 11.0),
    ("server-round-range", "server-round", 0),
    ("server-round-range", "server-round", 51),
])
def test_values_outside_the_policy_are_refused(rule, key, value):
    _refused(rule, _parse, **{key: value})


def test_policy_limits_are_the_ones_applied():
    strict = NodePolicy(batch_size_min=64, local_epochs_max=1)
    with pytest.raises(PolicyViolation, match="batch-size-range"):
        parse_train_config(ConfigRecord({**VALID, "local-epochs": 1}), strict)
    with pytest.raises(PolicyViolation, match="local-epochs-range"):
        parse_train_config(ConfigRecord({**VALID, "batch-size": 64}), strict)
    assert parse_train_config(ConfigRecord({**VALID, "batch-size": 64, "local-epochs": 1}),
                              strict).batch_size == 64


@pytest.mark.parametrize("key, value", [
    ("lr", True), ("batch-size", True), ("local-epochs", False),
    ("lr", "0.1"), ("batch-size", [32]),
    ("local-epochs", 1.5), ("batch-size", 32.5), ("server-round", 2.5),
])
def test_wrong_types_are_refused(key, value):
    _refused(f"{key}-type", _parse, **{key: value})


# --- check_arrays --------------------------------------------------------------------


def test_the_models_own_arrays_pass():
    check_arrays(ArrayRecord(MODEL.state_dict()), SHAPES, POLICY)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_other_float_dtypes_pass_incoming(dtype):
    check_arrays(ArrayRecord({k: v.to(dtype) for k, v in MODEL.state_dict().items()}), SHAPES, POLICY)


def test_wrong_array_names_are_refused():
    arrays = ArrayRecord({f"w{i}": Array(np.zeros(s, np.float32)) for i, s in enumerate(SHAPES.values())})
    _refused("model-arrays", check_arrays, arrays, SHAPES, POLICY)


def test_missing_and_extra_arrays_are_refused():
    state = _state()
    state.pop("net.2.bias")
    _refused("model-arrays", check_arrays, ArrayRecord(state), SHAPES, POLICY)
    extra = ArrayRecord(_state(extra=torch.zeros(3)))
    _refused("model-arrays", check_arrays, extra, SHAPES, POLICY)


def test_wrong_shapes_are_refused():
    wide = ArrayRecord(_state(**{"net.2.weight": torch.zeros(512, 16)}))
    error = _refused("model-arrays", check_arrays, wide, SHAPES, POLICY)
    assert "net.2.weight" in str(error)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_arrays_are_refused(bad):
    weight = MODEL.state_dict()["net.0.weight"].clone()
    weight[3, 7] = bad
    arrays = ArrayRecord(_state(**{"net.0.weight": weight}))
    _refused("finite-arrays", check_arrays, arrays, SHAPES, POLICY)


def test_integer_arrays_are_refused():
    arrays = ArrayRecord({k: torch.zeros(v.shape, dtype=torch.int64) for k, v in MODEL.state_dict().items()})
    error = _refused("model-arrays", check_arrays, arrays, SHAPES, POLICY)
    assert "dtype" in str(error)


def test_oversized_arrays_are_refused():
    arrays = ArrayRecord(MODEL.state_dict())
    _refused("max-array-bytes", check_arrays, arrays, SHAPES, NodePolicy(max_array_bytes=1000))
    check_arrays(arrays, SHAPES, NodePolicy(max_array_bytes=arrays.count_bytes() + 10_000))


@pytest.mark.parametrize("thing", [None, ConfigRecord({"lr": 0.1}), MetricRecord({"x": 1.0}),
                                   MODEL.state_dict()])
def test_non_array_records_are_refused(thing):
    error = _refused("model-arrays", check_arrays, thing, SHAPES, POLICY)
    assert "ArrayRecord" in str(error)


def test_content_keys():
    content = RecordDict({"arrays": ArrayRecord(MODEL.state_dict()),
                          "config": ConfigRecord(VALID)})
    check_content_keys(content, {"arrays", "config"}, "message-records")
    content["record-ids"] = ConfigRecord({"ids": [1, 2, 3]})
    error = _refused("message-records", check_content_keys, content, {"arrays", "config"},
                     "message-records")
    assert "record-ids" in str(error)


# --- check_reply ---------------------------------------------------------------------

METRICS = {"train-loss": 0.7, "num-examples": 512, "compute-flops": 123456, "device-seconds": 0.01}


def _reply(state=None, metrics=None, **extra) -> RecordDict:
    reply = RecordDict({
        "arrays": ArrayRecord(MODEL.state_dict() if state is None else state),
        "metrics": MetricRecord(METRICS if metrics is None else metrics),
    })
    for key, record in extra.items():
        reply[key] = record
    return reply


def _reply_refused(reply, match, expected=SHAPES, keys=TRAIN_REPLY_KEYS) -> ReplyRefused:
    with pytest.raises(ReplyRefused, match=match) as info:
        check_reply(reply, expected, keys, POLICY)
    return info.value


def test_valid_train_reply_passes():
    check_reply(_reply(), SHAPES, TRAIN_REPLY_KEYS, POLICY)
    check_reply(_reply(metrics={"train-loss": 0.5}), SHAPES, TRAIN_REPLY_KEYS, POLICY)


def test_valid_holdout_reply_passes():
    check_reply(RecordDict({"metrics": MetricRecord({"recorded": 1})}), None, HOLDOUT_REPLY_KEYS,
                POLICY)


def test_extra_record_is_refused():
    predictions = ArrayRecord({"y": Array(np.zeros(128, np.float32))})
    _reply_refused(_reply(predictions=predictions), "exactly the records")
    _reply_refused(_reply(extra=MetricRecord({"x": 1.0})), "exactly the records")


def test_missing_metrics_record_is_refused():
    reply = RecordDict({"arrays": ArrayRecord(MODEL.state_dict())})
    _reply_refused(reply, "exactly the records")


def test_arrays_in_a_holdout_reply_are_refused():
    reply = RecordDict({"arrays": ArrayRecord(MODEL.state_dict()),
                        "metrics": MetricRecord({"recorded": 1})})
    _reply_refused(reply, "exactly the records", expected=None, keys=HOLDOUT_REPLY_KEYS)


def test_holdout_score_in_a_holdout_reply_is_refused():
    reply = RecordDict({"metrics": MetricRecord({"recorded": 1, "holdout-macro-f1": 0.4})})
    _reply_refused(reply, "scalars named in", expected=None, keys=HOLDOUT_REPLY_KEYS)


@pytest.mark.parametrize("extra", [{"per-record-loss": [0.1, 0.2, 0.3]}, {"per-record-loss": 0.2},
                                   {"holdout-macro-f1": 0.5}])
def test_extra_metric_keys_are_refused(extra):
    _reply_refused(_reply(metrics={**METRICS, **extra}), "scalars named in")


def test_lists_under_allowed_metric_keys_are_refused():
    _reply_refused(_reply(metrics={**METRICS, "train-loss": [0.1, 0.9, 0.4]}), "finite scalars")


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_metrics_are_refused(bad):
    _reply_refused(_reply(metrics={**METRICS, "train-loss": bad}), "finite scalars")


def test_cohort_wide_output_layer_is_refused():
    torch.manual_seed(0)
    wide = MLPClassifier(255, 512, hidden=[16])  # one output per training record
    error = _reply_refused(_reply(state=wide.state_dict()), "reply arrays refused")
    assert "'model-arrays'" in str(error) and "net.2.weight" in str(error)


def test_linear_model_of_another_width_is_refused():
    torch.manual_seed(0)
    wide = LinearClassifier(255, 512)
    expected = _shapes(LinearClassifier(255, 3))
    error = _reply_refused(_reply(state=wide.state_dict()), "reply arrays refused", expected=expected)
    assert "'model-arrays'" in str(error)


def test_float64_reply_arrays_are_refused():
    state = {k: v.double() for k, v in MODEL.state_dict().items()}
    error = _reply_refused(_reply(state=state), "reply arrays refused")
    assert "'model-arrays'" in str(error) and "float32" in str(error)


def test_non_finite_reply_arrays_are_refused():
    bias = torch.full((3,), math.nan)
    error = _reply_refused(_reply(state=_state(**{"net.2.bias": bias})), "reply arrays refused")
    assert "'finite-arrays'" in str(error)


def test_an_array_whose_data_differs_from_its_declared_shape_is_refused():
    """The declared shape and dtype are the sender's word; the node judges the bytes."""
    arrays = ArrayRecord(_state())
    name = next(iter(SHAPES))
    real = Array(np.zeros((640, 255), dtype=np.int64))
    arrays[name] = Array(dtype="float32", shape=tuple(SHAPES[name]), stype=real.stype, data=real.data)
    _refused("model-arrays", check_arrays, arrays, SHAPES, POLICY)


@pytest.mark.parametrize("config", [None, MetricRecord({"lr": 0.1})])
def test_a_train_config_that_is_not_a_config_record_is_refused(config):
    _refused("message-records", parse_train_config, config, POLICY)


@pytest.mark.parametrize("params, rule", [
    ({"hidden": [16] * 15000}, "max-layers"),  # cheap in FLOPs, 64 s an epoch on 2 cores
    ({"hidden": [19300]}, "max-width"),  # the imprint attack's 19,300 units: inside max_parameters
    ({"hidden": [1024, 1024]}, "max-parameters"),  # fine without DP, too many for per-example gradients
])
def test_models_too_deep_too_wide_or_too_big_for_dp_are_refused_before_building(params, rule):
    from client.policy import check_model
    from contract.schema import SCHEMA
    from models import ModelSpec
    from models.pipeline import FeatureSpec

    pipeline = SCHEMA.pipeline(FeatureSpec())
    _refused(rule, check_model, ModelSpec("mlp", params), POLICY, pipeline, 3)
    if rule == "max-parameters":
        check_model(ModelSpec("mlp", params), NodePolicy(dp_enabled=False), pipeline, 3)


def test_a_round_past_its_wall_time_is_stopped_and_names_the_rule():
    from client.training import FlopMeter, train_local

    model = MLPClassifier(8, 3)
    x, y = torch.randn(512, 8), torch.randint(0, 3, (512,))
    config = TrainConfig(lr=0.05, local_epochs=5, batch_size=16, seconds_max=0.0)
    _refused("round-seconds", train_local, model, x, y, config, FlopMeter())
