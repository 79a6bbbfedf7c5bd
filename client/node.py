"""The node's work: the resident cohort, training rounds and holdout scoring."""

from __future__ import annotations

from typing import ClassVar

import torch
from flwr.app import ArrayRecord, MetricRecord, RecordDict
from torch import nn

from client.cohort import load_cohort, split_cohort
from client.holdout import HoldoutScores, score_predictions
from client.ledger import NodeLedger
from client.policy import (
    HOLDOUT_METRIC_KEYS,
    TRAIN_METRIC_KEYS,
    check_arrays,
    check_content_keys,
    check_reply,
    parse_train_config,
)
from client.record import OfficialRecord
from client.runstate import CLOSED, NEW, SCORED_OOB, TRAINING, RunFacts, RunState
from client.settings import NodeSettings
from client.training import FlopMeter, expected_flops, predict, train_local
from models import build_model
from models.features import StandardFeatures


def resolve_device(name: str) -> torch.device:
    """``auto`` means the GPU when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class ResidentCohort:
    """The cohort, validated, split and preprocessed once, as tensors on the device.

    Preprocessing statistics come from the training split only.
    """

    def __init__(self, settings: NodeSettings) -> None:
        cohort = load_cohort(settings.data_path)
        split = split_cohort(cohort, settings.holdout_size, settings.split_seed)
        features = StandardFeatures(cohort.schema.numeric, cohort.schema.categorical)
        features.fit(cohort.frame.iloc[split.train])
        self.device = resolve_device(settings.device)
        self.classes = cohort.schema.classes
        self.digest = cohort.digest
        self.n_features = features.n_features

        def tensors(rows):  # -> tuple[Tensor, Tensor]
            x = torch.from_numpy(features.transform(cohort.frame.iloc[rows]))
            y = torch.from_numpy(cohort.labels[rows])
            return x.to(self.device), y.to(self.device)

        self.x_train, self.y_train = tensors(split.train)
        self.x_holdout, self.y_holdout = tensors(split.holdout)


class Node:
    """One foundation node: its resident cohort, FLOP meter and rules.

    ``Node.for_settings`` keeps one instance per process and settings, so that
    the cohort is loaded and moved to the device once, not every round.
    """

    _instances: ClassVar[dict[NodeSettings, Node]] = {}

    def __init__(self, settings: NodeSettings) -> None:
        self.settings = settings
        self.cohort = ResidentCohort(settings)
        self.meter = FlopMeter(settings.flop_store_path)
        self.ledger = NodeLedger(settings.ledger_path)

    @classmethod
    def for_settings(cls, settings: NodeSettings) -> Node:
        """The process's node for these settings, created on first use."""
        node = cls._instances.get(settings)
        if node is None:
            node = cls._instances[settings] = cls(settings)
        return node

    def build(self, facts: RunFacts) -> tuple[nn.Module, dict[str, tuple[int, ...]]]:
        """The run's model on the device, and the array shapes it accepts and returns."""
        model = build_model(facts.model, self.cohort.n_features, len(self.cohort.classes),
                            facts.seed).to(self.cohort.device)
        return model, {k: tuple(v.shape) for k, v in model.state_dict().items()}

    def _load(self, content: RecordDict, facts: RunFacts, allowed: set[str]
              ) -> tuple[nn.Module, dict[str, tuple[int, ...]]]:
        """Validate incoming arrays and load them into a fresh model; return it and its shapes."""
        check_content_keys(content, allowed, "message-records")
        model, shapes = self.build(facts)
        check_arrays(content.get("arrays"), shapes, self.settings.policy)
        state = content["arrays"].to_torch_state_dict()
        model.load_state_dict({k: v.to(self.cohort.device, torch.float32) for k, v in state.items()})
        return model, shapes

    def train(self, content: RecordDict, facts: RunFacts, state: RunState) -> RecordDict:
        """One round: validate, train on the training split, reply arrays + scalars."""
        state.require(SCORED_OOB, TRAINING, action="train")
        model, shapes = self._load(content, facts, {"arrays", "config"})
        config = parse_train_config(content.get("config"), self.settings.policy, facts.seed)
        policy = self.settings.policy
        self.ledger.require_budget(
            facts.contributor, expected_flops(model, len(self.cohort.y_train), config, self.meter),
            policy.compute_budget_flops)
        result = train_local(model, self.cohort.x_train, self.cohort.y_train, config, self.meter)
        self.ledger.charge(facts.contributor, facts.submission_id, result.flops, result.device_seconds)
        state.phase = TRAINING
        state.rounds.append(config.server_round)
        state.losses.append(result.loss)
        state.flops += result.flops
        state.device_seconds += result.device_seconds
        reply = RecordDict({
            "arrays": ArrayRecord({k: v.detach().cpu() for k, v in model.state_dict().items()}),
            "metrics": MetricRecord({
                "train-loss": result.loss, "num-examples": result.num_examples,
                "compute-flops": result.flops, "device-seconds": result.device_seconds,
            }),
        })
        check_reply(reply, shapes, TRAIN_METRIC_KEYS, self.settings.policy)
        return reply

    def score_out_of_the_box(self, content: RecordDict, facts: RunFacts,
                             state: RunState) -> RecordDict:
        """Score the submitted model before any training; write it to the official record."""
        state.require(NEW, action="holdout out of the box")
        record = OfficialRecord(self.settings.tracking_uri, facts.submission_id)
        model = self._load(content, facts, {"arrays"})[0]
        usage = self.ledger.open_submission(facts.contributor, facts.submission_id,
                                            self.settings.policy.submissions_max)
        record.write_out_of_the_box(
            self._score(model), usage=self._usage_metrics(usage.submissions, usage.flops),
            params={"cohort_digest": self.cohort.digest,
                            "n_train": str(len(self.cohort.y_train)),
                            "n_holdout": str(len(self.cohort.y_holdout)),
                            "node_device": self.cohort.device.type})
        state.phase = SCORED_OOB
        return self._acknowledge()

    def score_final(self, content: RecordDict, facts: RunFacts, state: RunState) -> RecordDict:
        """Score the fine-tuned model, write it with training curve and compute; close the run."""
        state.require(TRAINING, action="final holdout")
        scores = self._score(self._load(content, facts, {"arrays"})[0])
        usage = self.ledger.usage(facts.contributor)
        OfficialRecord(self.settings.tracking_uri, facts.submission_id).write_final(
            scores, state.rounds, state.losses, state.flops, state.device_seconds,
            self.cohort.classes, usage=self._usage_metrics(usage.submissions, usage.flops))
        state.phase = CLOSED
        return self._acknowledge()

    def _usage_metrics(self, submissions: int, flops: int) -> dict[str, float]:
        """The contributor's budget and submissions, as the node's ledger has them."""
        policy = self.settings.policy
        return {"budget_compute_used_pf": flops / 1e15, "budget_compute_pf": policy.compute_budget_pf,
                "budget_submissions_used": float(submissions),
                "budget_submissions_limit": float(policy.submissions_max)}

    def _score(self, model: nn.Module) -> HoldoutScores:
        """Holdout metrics of ``model``; predictions never leave this method."""
        y_pred = predict(model, self.cohort.x_holdout).cpu().numpy()
        return score_predictions(self.cohort.y_holdout.cpu().numpy(), y_pred, self.cohort.classes)

    def _acknowledge(self) -> RecordDict:
        """The whole reply to a holdout request: that it was recorded, no score."""
        reply = RecordDict({"metrics": MetricRecord({"recorded": 1})})
        check_reply(reply, None, HOLDOUT_METRIC_KEYS, self.settings.policy)
        return reply
