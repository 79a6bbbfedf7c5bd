"""The node's rules for incoming work and outgoing replies.

Incoming: only known config keys, hyperparameters inside the node policy,
arrays finite and exactly of the shapes of the model the node built.
Outgoing: a whitelist -- model arrays of those shapes and named aggregate
scalars. Anything else is refused, by rule name.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from cryptography.hazmat.primitives import serialization
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from client.errors import PolicyViolation, ReplyRefused
from client.privacy import PrivacyPolicy
from client.training import TrainConfig
from contract.grant import GRANT_KEY, GrantError, RunGrant, config_digest, verify
from contract.names import TrainKey
from contract.schema import SCHEMA, CohortSchema
from contract.submission import RunConfigError, Submission
from models import ModelSpec, build_for, penalties
from models.pipeline import FeaturePipeline, FeatureSpec, FeatureSpecError
from models.registry import UnknownModelError


@dataclass(frozen=True)
class NodePolicy:
    """Limits the foundation sets for every run on its node (``conf/policy``)."""

    allowed_models: tuple[str, ...] = ("linear", "mlp", "pathway")
    lr_min: float = 1e-5
    lr_max: float = 1.0
    local_epochs_max: int = 5
    batch_size_min: int = 16
    batch_size_max: int = 512
    proximal_mu_max: float = 10.0
    #: The largest elastic-net penalty (l1, l2) a model spec may declare; lr x l2 stays under 1.
    penalty_max: float = 0.5
    rounds_max: int = 50
    max_array_bytes: int = 64 * 2**20
    compute_budget_pf: float = 100.0
    submissions_max: int = 5
    max_parameters: int = 5_000_000
    max_layers: int = 8
    max_width: int = 1024
    device_seconds_budget: float = 3600.0
    round_seconds_max: float = 60.0
    run_cpu_threads: int = 2
    run_gpu_memory_gb: float = 22.49
    dp_enabled: bool = True
    dp_noise_multiplier: float = 1.0
    dp_max_grad_norm: float = 2.0
    dp_delta: float = 1e-5
    dp_epsilon_budget: float = 21.0
    dp_max_parameters: int = 500_000
    importance_per_feature: bool = False
    record_tripwire: bool = True
    eda_min_cell: int = 10
    #: Memory a run's own feature tensors may take on the node (a spec other than the standard
    #: one, over the training split and the holdout, float32), and all such specs' cached together.
    feature_memory_gb: float = 4.0

    @property
    def privacy(self) -> PrivacyPolicy | None:
        """DP-SGD settings when the workspace uses differential privacy, else None."""
        if not self.dp_enabled:
            return None
        return PrivacyPolicy(self.dp_noise_multiplier, self.dp_max_grad_norm, self.dp_delta,
                             self.dp_epsilon_budget)

    @property
    def parameter_limit(self) -> int:
        """The most parameters a model may have: under DP-SGD every drawn record's gradient is
        held at once, so the cap is lower."""
        return min(self.max_parameters, self.dp_max_parameters) if self.dp_enabled else self.max_parameters

    @property
    def compute_budget_flops(self) -> int:
        """The per-contributor compute budget in FLOPs."""
        return int(self.compute_budget_pf * 1e15)


def parse_train_config(config: ConfigRecord, policy: NodePolicy) -> TrainConfig:
    """Turn a strategy's train config into a ``TrainConfig`` inside the policy.

    Its ``seed`` is left at 0: the round's seed is the node's to set
    (``client.node.round_seed``), never the strategy's.

    Raises
    ------
    PolicyViolation
        An unknown key, a missing key or a value outside the policy.
    """
    if not isinstance(config, ConfigRecord):
        raise PolicyViolation("message-records", "a train message carries its config as a ConfigRecord")
    unknown = sorted(set(config.keys()) - set(TrainKey))
    if unknown:
        raise PolicyViolation("known-config-keys",
                              f"unknown key(s) {unknown}; allowed: {sorted(TrainKey)}")
    parsed = TrainConfig(lr=_number(config, TrainKey.LR, float),
                         local_epochs=_number(config, TrainKey.LOCAL_EPOCHS, int),
                         batch_size=_number(config, TrainKey.BATCH_SIZE, int),
                         proximal_mu=_number(config, TrainKey.PROXIMAL_MU, float, default=0.0),
                         server_round=_number(config, TrainKey.SERVER_ROUND, int, default=1))
    check_train_config(parsed, policy)
    return parsed


def check_train_config(config: TrainConfig, policy: NodePolicy) -> None:
    """Refuse training hyperparameters outside the policy, by rule name.

    Raises
    ------
    PolicyViolation
        ``lr-range``, ``local-epochs-range``, ``batch-size-range``, ``proximal-mu-range`` or
        ``server-round-range``.
    """
    _within("lr-range", config.lr, policy.lr_min, policy.lr_max)
    _within("local-epochs-range", config.local_epochs, 1, policy.local_epochs_max)
    _within("batch-size-range", config.batch_size, policy.batch_size_min, policy.batch_size_max)
    _within("proximal-mu-range", config.proximal_mu, 0.0, policy.proximal_mu_max)
    _within("server-round-range", config.server_round, 1, policy.rounds_max)


def read_submission(run_config: dict, workspace_key: bytes | None) -> Submission:
    """The run's submission, as the workspace signed it when it created the run.

    Parameters
    ----------
    run_config : dict
        Flower's run config: the submission's keys and the workspace's ``grant``.
    workspace_key : bytes or None
        The workspace's public key (PEM) the node trusts; None: the node trusts none.

    Raises
    ------
    PolicyViolation
        ``run-grant`` (no grant, a forged one, or a config other than the one signed),
        ``run-grant-expired``, ``run-identity`` (the grant names another contributor or
        submission, or none), ``run-config`` (a key missing or malformed) or ``feature-spec``.
    """
    grant = _verified_grant(run_config, workspace_key)
    try:
        submission = Submission.from_run_config(run_config)
    except FeatureSpecError as ex:
        raise PolicyViolation("feature-spec", str(ex)) from None
    except RunConfigError as ex:
        raise PolicyViolation("run-config", str(ex)) from None
    if not submission.contributor or not submission.submission_id:
        raise PolicyViolation("run-identity", "runs are created by the workspace with a "
                              "contributor and a submission id")
    if (grant.contributor, grant.submission_id) != (submission.contributor, submission.submission_id):
        raise PolicyViolation("run-identity", "the run's contributor or submission is not the one "
                              "the workspace signed")
    return submission


def _verified_grant(run_config: dict, workspace_key: bytes | None) -> RunGrant:
    """The run's grant, verified against the workspace's key, unexpired, covering this config."""
    if not workspace_key:
        raise PolicyViolation("run-grant", "the node trusts no workspace key: its operator sets "
                              "--node-config workspace-key=<public key file>")
    token = run_config.get(GRANT_KEY)
    if not token:
        raise PolicyViolation("run-grant", "runs are created by the workspace, with a signed grant")
    try:
        grant = verify(str(token), serialization.load_pem_public_key(workspace_key))
    except GrantError as ex:
        raise PolicyViolation("run-grant", str(ex)) from None
    if grant.expires_at < time.time():
        raise PolicyViolation("run-grant-expired", "the workspace's grant for this run has expired")
    if grant.config_digest != config_digest(run_config):
        raise PolicyViolation("run-grant", "the run config differs from the one the workspace signed")
    return grant


def feature_pipeline(spec: FeatureSpec, schema: CohortSchema = SCHEMA) -> FeaturePipeline:
    """The (unfitted) pipeline a feature spec asks for, checked against the cohort's columns.

    Raises
    ------
    PolicyViolation
        ``feature-spec``: the spec names columns the cohort does not have.
    """
    try:
        return schema.pipeline(spec)
    except FeatureSpecError as ex:
        raise PolicyViolation("feature-spec", str(ex)) from None


def feature_bytes(pipeline: FeaturePipeline, n_records: int) -> int:
    """What a pipeline's tensors take for ``n_records`` records (float32), known before it is fitted."""
    return 4 * n_records * pipeline.n_features


def check_feature_memory(pipeline: FeaturePipeline, n_records: int, policy: NodePolicy) -> None:
    """Refuse a feature spec whose tensors would not fit the policy's memory for them, before the
    pipeline is fitted: 200 gene sets times 50 interactions are 10,000 columns, 4 GB at 100,000
    records, and four such specs cached would hold the node's memory.

    Raises
    ------
    PolicyViolation
        ``feature-memory``.
    """
    need = feature_bytes(pipeline, n_records)
    if need > policy.feature_memory_gb * 2**30:
        raise PolicyViolation("feature-memory", f"the spec's {pipeline.n_features} features take "
                              f"{need / 2**30:.2f} GB on this cohort; at most "
                              f"{policy.feature_memory_gb:g} GB")


def check_model(spec: ModelSpec, policy: NodePolicy, pipeline: FeaturePipeline, n_classes: int) -> None:
    """Refuse a model outside the policy before building it: its name, then its size,
    counted on the ``meta`` device (no memory, no data).

    Raises
    ------
    PolicyViolation
        ``allowed-models``, ``model-spec``, ``max-parameters``, ``max-layers`` (layers with
        weights) or ``max-width`` (a layer's outputs): a model cheap in FLOPs may still be slow
        (thousands of thin layers) or wide enough to hold a record per unit.
    """
    if spec.name not in policy.allowed_models:
        raise PolicyViolation("allowed-models", f"models allowed: {list(policy.allowed_models)}")
    try:
        with torch.device("meta"):
            model = build_for(spec, pipeline, n_classes)
    except (UnknownModelError, ValueError, TypeError, RuntimeError):
        raise PolicyViolation("model-spec", f"hyperparameters do not fit model '{spec.name}'") from None
    weighted = [m for m in model.modules() if any(True for _ in m.parameters(recurse=False))]
    if len(weighted) > policy.max_layers:
        raise PolicyViolation("max-layers", f"at most {policy.max_layers} layers with weights")
    widest = max((p.shape[0] for m in weighted for p in m.parameters(recurse=False)), default=0)
    if widest > policy.max_width:
        raise PolicyViolation("max-width", f"at most {policy.max_width} units in a layer")
    declared = penalties(spec)
    if max(declared.values()) > policy.penalty_max:
        raise PolicyViolation("penalty-range", f"l1 and l2 at most {policy.penalty_max:g}")
    if sum(p.numel() for p in model.parameters()) > policy.parameter_limit:
        raise PolicyViolation("max-parameters", f"at most {policy.parameter_limit} parameters"
                              + (" under DP-SGD" if policy.dp_enabled else ""))


def check_content_keys(content: RecordDict, allowed: set[str], rule: str) -> None:
    """Refuse a message whose records are not exactly the expected ones."""
    extra = sorted(set(content.keys()) - allowed)
    if extra:
        raise PolicyViolation(rule, f"unexpected record(s) {extra}; allowed: {sorted(allowed)}")


#: Array dtypes accepted from a strategy (adaptive optimisers may send float64).
INCOMING_DTYPES = frozenset({"float16", "float32", "float64"})


def check_arrays(arrays: object, expected: dict[str, tuple[int, ...]],
                 policy: NodePolicy, dtypes: frozenset[str] = INCOMING_DTYPES,
                 rule: str = "model-arrays") -> None:
    """Arrays must be exactly the model's: same names and shapes, float, finite, within size."""
    if not isinstance(arrays, ArrayRecord):
        raise PolicyViolation(rule, "model weights must be an ArrayRecord")
    if list(arrays.keys()) != list(expected):
        raise PolicyViolation(rule, "array names differ from the model the node built")
    total = 0
    for name, array in arrays.items():
        total += len(array.data)
        if total > policy.max_array_bytes:
            raise PolicyViolation("max-array-bytes", f"arrays exceed {policy.max_array_bytes} bytes")
        try:  # judge the data itself, not only the shape and dtype it declares
            values = array.numpy()
        except Exception:
            raise PolicyViolation(rule, f"'{name}' is not a readable array") from None
        if tuple(array.shape) != expected[name] or values.shape != expected[name]:
            raise PolicyViolation(rule, f"'{name}' must have shape {expected[name]}")
        if array.dtype not in dtypes or values.dtype.name not in dtypes:
            raise PolicyViolation(rule, f"'{name}' must have a dtype in {sorted(dtypes)}")
        if not np.isfinite(values.astype(np.float32)).all():  # the node trains in float32
            raise PolicyViolation("finite-arrays", f"'{name}' has NaN or infinite entries in float32")


def check_reply(reply: RecordDict, expected: dict[str, tuple[int, ...]] | None,
                metric_keys: frozenset[str], policy: NodePolicy) -> None:
    """The export whitelist: the last check before anything leaves the node.

    Raises
    ------
    ReplyRefused
        The reply holds anything but the model's arrays (when ``expected``) and
        finite scalars named in ``metric_keys``.
    """
    allowed = {"metrics"} | ({"arrays"} if expected is not None else set())
    if set(reply.keys()) != allowed:
        raise ReplyRefused(f"a reply holds exactly the records {sorted(allowed)}")
    metrics = reply["metrics"]
    if not isinstance(metrics, MetricRecord) or set(metrics.keys()) - metric_keys:
        raise ReplyRefused(f"reply metrics must be scalars named in {sorted(metric_keys)}")
    if not all(isinstance(v, int | float) and math.isfinite(v) for v in metrics.values()):
        raise ReplyRefused("reply metrics must be finite scalars")
    if expected is not None:
        try:
            check_arrays(reply["arrays"], expected, policy, dtypes=frozenset({"float32"}))
        except PolicyViolation as ex:
            raise ReplyRefused(f"reply arrays refused: {ex}") from None


def _number(config: ConfigRecord, key: str, kind: type, default: float | None = None) -> float:
    """Read a scalar config value of the given kind, or refuse by rule name."""
    if key not in config:
        if default is None:
            raise PolicyViolation("required-config-keys", f"the train config needs '{key}'")
        return kind(default)
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise PolicyViolation(f"{key}-type", f"'{key}' must be a finite number")
    if kind is int and float(value) != int(value):
        raise PolicyViolation(f"{key}-type", f"'{key}' must be a whole number")
    return kind(value)


def _within(rule: str, value: float, low: float, high: float) -> None:
    """Refuse values outside [low, high] (and NaN)."""
    if not low <= value <= high:
        raise PolicyViolation(rule, f"must lie in [{low}, {high}]")


#: A weight row this correlated with a training record is a copy of it.
RECORD_CORRELATION_BAR = 0.99


def check_no_record_in_weights(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor],
                               records: torch.Tensor) -> None:
    """A tripwire on the weights channel: refuse a reply in which a row of an array as wide as
    the model's input, of its update, or a difference of neighbouring update rows, is a
    training record (Pearson correlation above ``RECORD_CORRELATION_BAR``).

    It catches the naive imprint attack, not every one (a strategy can spread a record over
    any combination of rows): differential privacy is the defence, this is the alarm.

    Parameters
    ----------
    before, after : dict of str to torch.Tensor
        The weights the round started from and the weights about to leave.
    records : torch.Tensor
        The model's input matrix on the training split, shape (n_records, n_inputs).

    Raises
    ------
    ReplyRefused
        ``record-in-weights``.
    """
    width = records.shape[1]
    rows = []
    for name, value in after.items():
        if value.ndim == 2 and value.shape[1] == width:
            update = value - before[name]
            rows += [value, update, update[1:] - update[:-1]]
    if not rows:
        return
    candidates = _unit_rows(torch.cat(rows).to(records.device, torch.float32))
    correlation = candidates @ _unit_rows(records.float()).T
    if bool((correlation.abs() > RECORD_CORRELATION_BAR).any()):
        raise ReplyRefused("refused by rule 'record-in-weights': the reply's weights hold a copy "
                           "of a training record")


def _unit_rows(matrix: torch.Tensor) -> torch.Tensor:
    """Rows centred and scaled to unit norm (all-constant rows stay zero)."""
    centred = matrix - matrix.mean(dim=1, keepdim=True)
    return centred / centred.norm(dim=1, keepdim=True).clamp_min(1e-12)
