"""The node's work: the resident cohort, training rounds and holdout scoring."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import torch
from flwr.app import ArrayRecord, MetricRecord, RecordDict
from torch import nn

from client.cohort import arrange, load_cohort, split_cohort
from client.errors import NodeError, PolicyViolation, ReplyRefused
from client.holdout import (
    HoldoutScores,
    bootstrap_intervals,
    paired_bootstrap,
    score_predictions,
)
from client.importance import Importance, column_groups, permutation_importance, single_feature_groups
from client.ledger import CLOSED, TRAINING, NodeLedger
from client.policy import (
    check_arrays,
    check_content_keys,
    check_feature_memory,
    check_model,
    check_no_record_in_weights,
    check_reply,
    feature_bytes,
    feature_pipeline,
    parse_train_config,
)
from client.privacy import round_entry, train_local_dp
from client.record import OfficialRecord, deliver_queued
from client.settings import NodeSettings
from client.training import FlopMeter, expected_flops, predict, train_local
from contract.files import create_once
from contract.names import HOLDOUT_REPLY_KEYS, TRAIN_REPLY_KEYS, ReplyKey, UsageMetric
from contract.schema import CohortSchema
from contract.submission import Submission
from contract.values import PairedDifference
from models import build_for, penalties
from models.pipeline import FeaturePipeline, FeatureSpec

log = logging.getLogger("cohortfl.node")

#: The official record's words when a foundation switches differential privacy off.
OFF_STATEMENT = ("OFF: the weights a strategy receives can carry training records "
                 "(docs/privacy.md)")


def resolve_device(name: str) -> torch.device:
    """``auto`` means the GPU when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def node_secret(path: Path) -> bytes:
    """The node's own random secret, created once (readable by the node's user only)."""
    return create_once(path, os.urandom(32))


def round_seed(secret: bytes, submission_id: str, server_round: int) -> int:
    """The seed of one round's shuffles: unknowable without the node's secret."""
    digest = hashlib.sha256(secret + f"|{submission_id}|{server_round}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def check_cohort(settings: NodeSettings) -> CohortSchema:
    """The node operator's check of the cohort file, with the full validation report.

    For the operator's own terminal only: what crosses the wire when a node cannot
    load its cohort is a fixed sentence (``client.app``). Returns the cohort's published schema.

    Raises
    ------
    CohortValidationError
        Every broken rule of the file.
    DictionaryError
        The data dictionary is malformed or does not fit the file's columns.
    """
    cohort = load_cohort(settings.data_path, settings.dictionary or None)
    split_cohort(cohort, settings.holdout_size, settings.split_seed, settings.holdout_fraction)
    return cohort.schema


def limit_resources(device: torch.device, cpu_threads: int, gpu_memory_gb: float) -> None:
    """Hold this node process to the policy's resources: at most ``cpu_threads`` of torch's
    CPU threads (never more than it already had), and the share of the GPU's memory its
    allocator may take."""
    torch.set_num_threads(max(1, min(cpu_threads, torch.get_num_threads())))
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory / 1e9
        torch.cuda.set_per_process_memory_fraction(min(1.0, gpu_memory_gb / total), device)


@dataclass(frozen=True)
class FeatureView:
    """The cohort as one feature pipeline sees it: the fitted pipeline and its tensors."""

    pipeline: FeaturePipeline
    x_train: torch.Tensor
    x_holdout: torch.Tensor

    @property
    def nbytes(self) -> int:
        """Memory of its two tensors."""
        return sum(x.element_size() * x.nelement() for x in (self.x_train, self.x_holdout))


class ResidentCohort:
    """The cohort, validated and split once; its features, as tensors on the device.

    Each feature spec's pipeline is fitted on the training split only, once per
    process, and its matrices stay on the device: the standard spec's always, the last few
    others' while they fit the policy's ``feature_memory_gb``.
    """

    kept_views = 4

    def __init__(self, settings: NodeSettings) -> None:
        cohort = load_cohort(settings.data_path, settings.dictionary or None)
        split = split_cohort(cohort, settings.holdout_size, settings.split_seed, settings.holdout_fraction)
        self.device = resolve_device(settings.device)
        self.schema = cohort.schema
        self.classes = cohort.schema.classes
        self.digest = cohort.digest
        #: Identifies this holdout: the same file, size and split seed give the same records.
        self.holdout_key = (f"{cohort.digest}:{settings.holdout_fraction or settings.holdout_size}:"
                            f"{settings.split_seed}")
        self.n_records, n_train = len(cohort), len(split.train)
        if not cohort.ids:
            cohort = replace(cohort, ids=tuple(map(str, range(len(cohort)))))
        cohort = arrange(cohort, split)  # training records first: both parts are views of one block
        self.train_frame = cohort.frame.iloc[:n_train]
        self.holdout_frame = cohort.frame.iloc[n_train:].reset_index(drop=True)
        self.holdout_ids = cohort.ids[n_train:]
        self.train_ids = frozenset(cohort.ids[:n_train])
        #: One hash per holdout record (its id, label and values): how two versions' holdouts differ.
        self.holdout_rows = {f"{record}\t{label}\t{value:016x}" for record, label, value in zip(
            self.holdout_ids, cohort.labels[n_train:],
            pd.util.hash_pandas_object(self.holdout_frame, index=False).to_numpy(), strict=True)}
        self.y_train = torch.from_numpy(cohort.labels[:n_train].copy()).to(self.device)
        self.y_holdout = torch.from_numpy(cohort.labels[n_train:].copy()).to(self.device)
        self._views: dict[str, FeatureView] = {}
        self.view_budget = settings.policy.feature_memory_gb * 2**30
        self.standard = self.view(FeatureSpec())

    def view(self, spec: FeatureSpec) -> FeatureView:
        """The features ``spec`` asks for, fitted on the training split (cached).

        Raises
        ------
        PolicyViolation
            ``feature-spec``: the spec names columns this cohort does not have.
        """
        key, standard = spec.to_json(), FeatureSpec().to_json()
        if key not in self._views:
            pipeline = feature_pipeline(spec, self.schema)
            need = feature_bytes(pipeline, self.n_records)
            others = [k for k in self._views if k != standard]  # oldest first
            while others and (len(self._views) >= self.kept_views
                              or sum(self._views[k].nbytes for k in others) + need > self.view_budget):
                self._views.pop(others.pop(0))
            pipeline.fit(self.train_frame)
            self._views[key] = FeatureView(pipeline, self.tensor(pipeline, self.train_frame),
                                           self.tensor(pipeline, self.holdout_frame))
        return self._views[key]

    def tensor(self, pipeline: FeaturePipeline, frame: pd.DataFrame) -> torch.Tensor:
        """``frame`` through a fitted pipeline, on the device."""
        return torch.from_numpy(pipeline.transform(frame)).to(self.device)


class Node:
    """One foundation node: its resident cohort, FLOP meter, ledger and rules.

    ``Node.for_settings`` keeps one instance per process and settings, so that
    the cohort is loaded and moved to the device once per process (once per run
    in simulation; once per message in Flower's deployment engine, which starts
    a process per message). Everything that must outlive a process -- phases,
    rounds, budgets, exports, FLOP counts -- is in the state directory.
    """

    _instances: ClassVar[dict[NodeSettings, Node]] = {}
    #: Permutations per feature or group in the holdout's permutation importance, and the most
    #: gene sets scored as groups (each costs as much as a feature).
    importance_repeats: ClassVar[int] = 5
    importance_gene_sets: ClassVar[int] = 50
    #: Smaller sets are not scored as groups: one- or two-gene sets would give per-feature answers.
    importance_min_genes: ClassVar[int] = 5
    #: Per-feature importance only up to this many feature columns: each costs a scoring of the
    #: holdout per repeat (20,000 genes would take the node half an hour); the groups always.
    importance_max_features: ClassVar[int] = 300

    def __init__(self, settings: NodeSettings) -> None:
        self.settings = settings
        self.cohort = ResidentCohort(settings)
        limit_resources(self.cohort.device, settings.policy.run_cpu_threads,
                        settings.policy.run_gpu_memory_gb)
        self.meter = FlopMeter(settings.flop_store_path)
        self.ledger = NodeLedger(settings.ledger_path)
        self.secret = node_secret(Path(settings.state_dir) / "secret")
        #: This cohort file's version on this node (1, 2, ... in the order first served).
        self.cohort_version = self.ledger.cohort_version(
            self.cohort.digest, self.cohort.schema.fingerprint, set(self.cohort.train_ids),
            self.cohort.holdout_rows, settings.policy.eda_min_cell)

    @classmethod
    def for_settings(cls, settings: NodeSettings) -> Node:
        """The process's node for these settings, created on first use."""
        node = cls._instances.get(settings)
        if node is None:
            node = cls._instances[settings] = cls(settings)
        return node

    def build(self, run: Submission) -> tuple[nn.Module, dict[str, tuple[int, ...]], FeatureView]:
        """The run's model on the device, the array shapes it accepts and returns, and the
        features it reads.

        Raises
        ------
        PolicyViolation
            ``cohort-schema``: the workspace built the run for another cohort schema than this
            node's (its model's shapes and the features it names would be another cohort's).
        """
        try:
            published = run.schema
        except ValueError:
            raise PolicyViolation("cohort-schema", "the run's cohort schema does not parse") from None
        served = self.cohort.schema.fingerprint
        if published.fingerprint != served:
            raise PolicyViolation("cohort-schema", f"the run was built for cohort schema "
                                  f"{published.fingerprint}; this node serves {served}: the workspace "
                                  "must publish this node's schema (cohortfl schema)")
        n_classes = len(self.cohort.classes)
        pipeline = feature_pipeline(run.features, self.cohort.schema)
        check_model(run.model, self.settings.policy, pipeline, n_classes)  # before any data is read
        if run.features.to_json() != FeatureSpec().to_json():  # the standard's are the node's own
            check_feature_memory(pipeline, self.cohort.n_records, self.settings.policy)
        view = self.cohort.view(run.features)
        model = build_for(run.model, view.pipeline, n_classes, run.seed)
        model = model.to(self.cohort.device)
        return model, {k: tuple(v.shape) for k, v in model.state_dict().items()}, view

    def _load(self, content: RecordDict, run: Submission, allowed: set[str]
              ) -> tuple[nn.Module, dict[str, tuple[int, ...]], FeatureView]:
        """Validate incoming arrays and load them into a fresh model; return it, its shapes
        and its features."""
        check_content_keys(content, allowed, "message-records")
        model, shapes, view = self.build(run)
        check_arrays(content.get("arrays"), shapes, self.settings.policy)
        state = content["arrays"].to_torch_state_dict()
        model.load_state_dict({k: v.to(self.cohort.device, torch.float32) for k, v in state.items()})
        return model, shapes, view

    def train(self, content: RecordDict, run: Submission) -> RecordDict:
        """One round: validate, reserve it in the ledger, train, charge it, reply."""
        policy, n_train = self.settings.policy, len(self.cohort.y_train)
        model, shapes, view = self._load(content, run, {"arrays", "config"})
        parsed = parse_train_config(content.get("config"), policy)
        if parsed.batch_size > n_train:
            raise PolicyViolation("batch-size-range", "at most the number of training records")
        config = replace(parsed, seed=round_seed(self.secret, run.submission_id, parsed.server_round),
                         seconds_max=policy.round_seconds_max, **penalties(run.model))
        privacy = policy.privacy
        self.ledger.begin_round(
            run.contributor, run.submission_id, config.server_round,
            min(run.num_rounds, policy.rounds_max),
            expected_flops(model, n_train, config, self.meter) if not privacy else 0,
            policy.compute_budget_flops,
            (round_entry(n_train, config, privacy), privacy.delta, privacy.epsilon_budget)
            if privacy else None,
            budget_device_seconds=policy.device_seconds_budget)
        incoming = {k: v.detach().clone() for k, v in model.state_dict().items()}
        flops_before, started, result = self.meter.total, time.perf_counter(), None
        x, y = view.x_train, self.cohort.y_train
        try:
            result = (train_local_dp(model, x, y, config, self.meter, privacy) if privacy
                      else train_local(model, x, y, config, self.meter))
        finally:  # a failed round is charged too
            self.ledger.finish_round(run.submission_id, config.server_round,
                                     result.loss if result else None, self.meter.total - flops_before,
                                     result.device_seconds if result else time.perf_counter() - started)
        if policy.record_tripwire:
            try:
                check_no_record_in_weights(incoming, model.state_dict(), x)
            except ReplyRefused:
                if not privacy:
                    raise
                # under DP a refusal decided on the real records would answer "is this record in
                # the training set?" outside the noise: the alarm stays on the node
                log.warning("record tripwire: a reply of submission %s matched a training record; "
                            "sent under DP-SGD", run.submission_id)
        reply = RecordDict({
            "arrays": ArrayRecord({k: v.detach().cpu() for k, v in model.state_dict().items()}),
            "metrics": MetricRecord({
                ReplyKey.NUM_EXAMPLES: result.num_examples, ReplyKey.COMPUTE_FLOPS: result.flops,
                ReplyKey.DEVICE_SECONDS: result.device_seconds,
                # an exact mean over the training records answers a strategy's crafted question
                # outside DP's guarantee: under DP-SGD it is not sent
                **({} if privacy else {ReplyKey.TRAIN_LOSS: result.loss})}),
        })
        check_reply(reply, shapes, TRAIN_REPLY_KEYS, policy)
        return reply

    def score_out_of_the_box(self, content: RecordDict, run: Submission) -> RecordDict:
        """Claim the run's out-of-the-box moment, score the submitted model, record it."""
        record = OfficialRecord(self.settings.tracking_uri, run.submission_id)
        model, _, view = self._load(content, run, {"arrays"})
        usage = self.ledger.open_submission(run.contributor, run.submission_id,
                                            self.settings.policy.submissions_max)
        self.keep_weights(run, "initial", model)
        record.write_out_of_the_box(
            self.score(self.predict_holdout(model, view), run.submission_id),
            usage=self._usage_metrics(run, usage.submissions, usage.flops),
            params={"cohort_digest": self.cohort.digest, "cohort_schema": self.cohort.schema.fingerprint,
                    "cohort_version": str(self.cohort_version),
                    "n_train": str(len(self.cohort.y_train)),
                    "n_holdout": str(len(self.cohort.y_holdout)),
                    "node_device": self.cohort.device.type,
                    "node_cpu_threads": str(torch.get_num_threads()),
                    "node_gpu_memory_gb": str(self.settings.policy.run_gpu_memory_gb
                                              if self.cohort.device.type == "cuda" else 0),
                    "privacy": self._privacy_statement()},
            reported_class=self.cohort.schema.reported_class,
            dataset={"name": "cohort", "digest": self.cohort.digest[:36],
                     "columns": [(name, "string" if name in self.cohort.schema.categorical else "double")
                                 for name in self.cohort.schema.feature_columns],
                     "counts": {"n_train": len(self.cohort.y_train),
                                "n_holdout": len(self.cohort.y_holdout)}})
        return self._acknowledge()

    def score_fine_tuned(self, content: RecordDict, run: Submission) -> RecordDict:
        """Close the run, then score the fine-tuned model and write it with the training
        curve and the compute used; then its paired comparisons with earlier runs and its
        permutation importance. Closing first: a run is never scored twice. A store that
        is down now does not lose the result: the writes wait in the ledger's outbox."""
        record = OfficialRecord(self.settings.tracking_uri, run.submission_id, self.ledger,
                                must_reach=False)
        model, _, view = self._load(content, run, {"arrays"})
        self.ledger.advance(run.submission_id, (TRAINING,), CLOSED, "final holdout")
        self.keep_weights(run, "final", model)
        self.ledger.keep_final(run.submission_id, run.contributor, self.cohort_version)
        rounds = self.ledger.rounds(run.submission_id)
        usage = self.ledger.usage(run.contributor)
        predictions = self.predict_holdout(model, view)
        record.write_final(
            self.score(predictions, run.submission_id),
            rounds_trained=sum(loss is not None for _, loss, _, _ in rounds),
            # under DP-SGD the exact training loss is an un-noised answer about the training
            # records: it stays in the node's ledger
            curve=[] if self.settings.policy.privacy else
            [(r, loss) for r, loss, _, _ in rounds if loss is not None],
            flops=sum(r[2] for r in rounds), device_seconds=sum(r[3] for r in rounds),
            classes=self.cohort.classes, usage=self._usage_metrics(run, usage.submissions, usage.flops))
        try:  # the score is recorded; what follows explains it, and must not fail the run
            comparisons = OfficialRecord(self.settings.tracking_uri, run.comparisons_run_id, self.ledger,
                                         must_reach=False) if run.comparisons_run_id else record
            comparisons.write_comparisons(self.compare(predictions, run.submission_id))
            groups = self._importance_groups(run)
            importances = self._importance(model, view, groups, run.submission_id)
            if not self.settings.policy.importance_per_feature:  # per feature: the foundation's only
                self._keep_on_node(run.submission_id, importances)
                importances = {g: importances[g] for g in groups}
            record.write_importance(importances, groups)
        except Exception:
            log.exception("comparisons or importance of a closed run could not be recorded")
        record.write_complete()
        return self._acknowledge()

    def weights_dir(self, submission_id: str) -> Path:
        """Where the node keeps a run's weights and declaration (its state directory only)."""
        name = hashlib.sha256(submission_id.encode()).hexdigest()[:32]  # never a path from a run
        return Path(self.settings.state_dir) / "weights" / name

    def keep_weights(self, run: Submission, moment: str, model: nn.Module) -> None:
        """Keep a run's weights as scored at ``moment`` (initial, final) and its declaration, so that
        ``cohortfl rescore`` can score them again on a later version of the cohort."""
        folder = self.weights_dir(run.submission_id)
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        np.savez(folder / f"{moment}.npz", **{k: v.detach().cpu().numpy() for k, v in
                                               model.state_dict().items()})
        (folder / "run.json").write_text(json.dumps(run.to_run_config()))

    def kept_model(self, submission_id: str, moment: str) -> tuple[Submission, nn.Module, FeatureView]:
        """A kept run's declaration and its model at ``moment``, built for this cohort.

        Raises
        ------
        PolicyViolation
            ``cohort-schema`` when this cohort's schema is not the one the run was built for.
        NodeError
            The node kept no such weights.
        """
        folder = self.weights_dir(submission_id)
        if not (folder / f"{moment}.npz").is_file():
            raise NodeError(f"the node kept no {moment} weights of run {submission_id}")
        run = Submission.from_run_config(json.loads((folder / "run.json").read_text()))
        model, _, view = self.build(run)
        with np.load(folder / f"{moment}.npz", allow_pickle=False) as kept:
            model.load_state_dict({k: torch.from_numpy(kept[k]).to(self.cohort.device) for k in kept.files})
        return run, model, view

    def deliver_queued(self) -> int:
        """Write what the official record's store could not take before; how many writes went."""
        return deliver_queued(self.ledger)

    def _usage_metrics(self, run: Submission, submissions: int, flops: int) -> dict[str, float]:
        """The contributor's budgets (compute, submissions, privacy), from the node's ledger."""
        policy = self.settings.policy
        replies, sent = self.ledger.export_totals(run.submission_id)
        usage = {UsageMetric.BUDGET_COMPUTE_USED_PF: flops / 1e15,
                 UsageMetric.BUDGET_COMPUTE_PF: policy.compute_budget_pf,
                 UsageMetric.BUDGET_SUBMISSIONS_USED: float(submissions),
                 UsageMetric.BUDGET_SUBMISSIONS_LIMIT: float(policy.submissions_max),
                 UsageMetric.EXPORTED_REPLIES: float(replies), UsageMetric.EXPORTED_BYTES: float(sent)}
        if policy.privacy:
            usage.update({
                UsageMetric.PRIVACY_EPSILON: self.ledger.privacy_spent(run.contributor, policy.dp_delta),
                UsageMetric.PRIVACY_DELTA: policy.dp_delta,
                UsageMetric.PRIVACY_EPSILON_BUDGET: policy.dp_epsilon_budget,
                UsageMetric.PRIVACY_NOISE_MULTIPLIER: policy.dp_noise_multiplier,
                UsageMetric.PRIVACY_MAX_GRAD_NORM: policy.dp_max_grad_norm})
        return usage

    def _privacy_statement(self) -> str:
        """What the run's training protects, in words the leaderboard shows."""
        privacy = self.settings.policy.privacy
        if privacy is None:
            return OFF_STATEMENT
        return (f"DP-SGD: noise multiplier {privacy.noise_multiplier:g}, clipping norm "
                f"{privacy.max_grad_norm:g}, delta {privacy.delta:g}, "
                f"epsilon budget {privacy.epsilon_budget:g}")

    def predict_holdout(self, model: nn.Module, view: FeatureView) -> np.ndarray:
        """Class indices the model predicts for the holdout records; they never leave the node."""
        return predict(model, view.x_holdout).cpu().numpy()

    def score(self, y_pred: np.ndarray, submission_id: str) -> HoldoutScores:
        """Holdout metrics of predictions, with 95% bootstrap intervals."""
        y_true = self.cohort.y_holdout.cpu().numpy()
        intervals = bootstrap_intervals(y_true, y_pred, self.cohort.classes,
                                        seed=round_seed(self.secret, submission_id, 0))
        return score_predictions(y_true, y_pred, self.cohort.classes, intervals)

    def _importance(self, model: nn.Module, view: FeatureView, groups: dict[str, list[str]],
                    submission_id: str) -> dict[str, Importance]:
        """Permutation importance on the holdout, per group of features and (up to
        ``importance_max_features`` columns) per feature: the drop in macro-F1 when the group's
        values are shuffled across records."""

        def predictions(frame: pd.DataFrame) -> np.ndarray:
            return predict(model, self.cohort.tensor(view.pipeline, frame)).cpu().numpy()

        frame = self.cohort.holdout_frame
        single = (single_feature_groups(list(frame.columns))
                  if frame.shape[1] <= self.importance_max_features else {})
        return permutation_importance(predictions, frame, self.cohort.y_holdout.cpu().numpy(),
                                      len(self.cohort.classes), {**groups, **single},
                                      seed=round_seed(self.secret, submission_id, -1),
                                      repeats=self.importance_repeats)

    def _keep_on_node(self, submission_id: str, importances: dict[str, Importance]) -> None:
        """Every importance of a run, in the node's state directory (for the foundation only)."""
        folder = Path(self.settings.state_dir) / "importance"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{submission_id}.json").write_text(json.dumps(
            {name: {"mean": i.mean, "sd": i.sd} for name, i in importances.items()}, indent=1))

    def _importance_groups(self, run: Submission) -> dict[str, list[str]]:
        """Column groups (the dictionary's groups, each categorical) and the run's gene sets of
        at least ``importance_min_genes`` genes (the first ``importance_gene_sets`` by name, the
        model's prior over the pipeline's)."""
        given = {**run.features.gene_sets, **run.model.params.get("gene_sets", {})}
        given = {name: genes for name, genes in given.items() if len(genes) >= self.importance_min_genes}
        gene_sets = {name: list(given[name]) for name in sorted(given)[:self.importance_gene_sets]}
        schema = self.cohort.schema
        return column_groups(list(schema.feature_columns), gene_sets, groups=schema.groups)

    def compare(self, predictions: np.ndarray, submission_id: str) -> dict[str, PairedDifference]:
        """Keep this run's holdout predictions on the node; compare them, record by record,
        with every earlier run's on the same holdout (paired bootstrap of macro-F1)."""
        y_true = self.cohort.y_holdout.cpu().numpy()
        earlier = self.ledger.keep_predictions(submission_id, self.cohort.holdout_key, predictions)
        seed = round_seed(self.secret, submission_id, -2)
        return {other: paired_bootstrap(y_true, predictions, theirs, len(self.cohort.classes), seed)
                for other, theirs in earlier.items()}

    def _acknowledge(self) -> RecordDict:
        """The whole reply to a holdout request: that it was recorded, no score."""
        reply = RecordDict({"metrics": MetricRecord({ReplyKey.RECORDED: 1})})
        check_reply(reply, None, HOLDOUT_REPLY_KEYS, self.settings.policy)
        return reply
