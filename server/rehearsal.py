"""A strategy's first round rehearsed without data, before a run is opened or charged.

Flower's built-in strategies differ in what they send and what they need back: a
wrapper adds config keys the node refuses, Bulyan needs 4f+3 replies, QFedAvg needs
the nodes' training loss, FedXgb* aggregate XGBoost trees. Rather than a list of
names, the workspace builds the strategy as the run would and plays one round against
stand-in nodes that reply exactly as the node does under its published policy
(the same arrays back, the same metric keys, no data). If the strategy cannot be
built, sends what the node refuses, or aggregates nothing, the submission is refused
with the reason, in the contributor's terms where the cause is known, and nothing is
charged. A new Flower version's strategies are rehearsed the same way.

Only the workspace's own classes (``flwr.serverapp.strategy``, ``strategies``) are
rehearsed here; a contributor's ``strategy.py`` runs only in its sandbox.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from contract.names import TRAIN_REPLY_KEYS, ReplyKey, TrainKey
from server.errors import PackageRefused
from server.refusals import flower_warnings

#: What a stand-in node says it trained on and spent (plausible, not the cohort's).
STAND_IN_METRICS = {ReplyKey.NUM_EXAMPLES: 100, ReplyKey.COMPUTE_FLOPS: 1.0e9,
                    ReplyKey.DEVICE_SECONDS: 0.5}
#: Why, in a contributor's terms, for the strategies whose cause is known.
WHY = {
    "QFedAvg": "QFedAvg weights each node by its training loss, which the node sends only when "
               "differential privacy is off (an exact loss over the records would answer a crafted "
               "question outside DP's guarantee)",
    "FedXgbBagging": "FedXgb* aggregate XGBoost trees serialised as bytes, and a tree's split "
                     "thresholds are values taken from the training records; the node trains the "
                     "model registry's torch models and replies with their float arrays",
    "DifferentialPrivacyClientSideFixedClipping":
        "client-side clipping needs Flower's clipping mod on the node; this node clips and adds "
        "noise itself (DP-SGD, see `cohortfl policy`): use a server-side wrapper or none",
    "DifferentialPrivacyClientSideAdaptiveClipping":
        "client-side clipping needs Flower's clipping mod on the node; this node clips and adds "
        "noise itself (DP-SGD, see `cohortfl policy`): use a server-side wrapper or none",
    "Bulyan": "Bulyan needs at least 4 * num_malicious_nodes + 3 nodes",
}
#: Strategies that, with as few nodes as this workspace has, do what a simpler one does.
REDUCES_TO = {
    "Krum": (2, "with {n} node(s) Krum keeps the only reply there is: this is FedAvg"),
    "MultiKrum": (2, "with {n} node(s) MultiKrum keeps the only reply there is: this is FedAvg"),
    "FedMedian": (2, "with {n} node(s) the median of one reply is that reply: this is FedAvg"),
    "FedTrimmedAvg": (3, "with {n} node(s) FedTrimmedAvg trims nothing: this is FedAvg"),
}


class _StandInGrid:
    """What ``configure_train`` may ask of a grid: which nodes there are."""

    def __init__(self, n_nodes: int) -> None:
        self.node_ids = list(range(1, n_nodes + 1))

    def get_node_ids(self) -> list[int]:
        return list(self.node_ids)

    def __getattr__(self, name: str):
        raise PackageRefused("strategy-rehearsal", f"the strategy called grid.{name} while "
                             "configuring a round; strategies may only ask which nodes there are")


def _copy(initial: ArrayRecord, moved: float = 0.0) -> ArrayRecord:
    """A fresh copy of the arrays (strategies update theirs in place), floats moved by ``moved``
    as a node's training moves them."""
    arrays = {}
    for name, array in initial.items():
        value = array.numpy()
        arrays[name] = Array(value + np.asarray(moved, dtype=value.dtype)
                             if np.issubdtype(value.dtype, np.floating) else value.copy())
    return ArrayRecord(arrays)


def _refuse(target: str, what: str, detail: str) -> PackageRefused:
    name = target.rpartition(".")[2]
    why = f" ({WHY[name]})" if name in WHY else ""
    return PackageRefused("strategy-rehearsal", f"{name} {what}: {' '.join(detail.split())}{why}")


def rehearse(config: dict, initial: ArrayRecord, train_config: dict, n_nodes: int,
             sends_train_loss: bool) -> list[str]:
    """Play one round of the strategy ``config`` describes against ``n_nodes`` stand-in nodes.

    Parameters
    ----------
    config : dict
        The submission's strategy config (``_target_`` and arguments).
    initial : ArrayRecord
        The submission's initial weights.
    train_config : dict
        What every train message carries.
    sends_train_loss : bool
        Whether the node's reply carries ``train-loss`` under its policy.

    Returns
    -------
    list of str
        Notices: what the strategy reduces to with this many nodes.

    Raises
    ------
    PackageRefused
        ``strategy-rehearsal``, saying what failed and why.
    """
    from server.app import build_strategy
    from server.engine import task_identity

    target = str(config.get("_target_", ""))
    if target.startswith("contributor."):
        return []  # the contributor's own code runs in its sandbox only
    allowed = {str(key) for key in TrainKey}
    metrics = {**STAND_IN_METRICS, **({ReplyKey.TRAIN_LOSS: 1.0} if sends_train_loss else {})}
    with flower_warnings() as said, task_identity():
        try:
            strategy = build_strategy(config, n_nodes)
        except Exception as ex:  # what Flower's constructor says about the arguments
            raise _refuse(target, "cannot be built from the submission's strategy config",
                          f"{type(ex).__name__}: {ex}") from None
        said.clear()  # what Flower says when building (fraction_evaluate is 0 ...) is no reason
        try:
            messages = list(strategy.configure_train(1, _copy(initial), ConfigRecord(train_config),
                                                     _StandInGrid(n_nodes)))
        except PackageRefused:
            raise
        except Exception as ex:
            raise _refuse(target, "failed configuring its first round", f"{type(ex).__name__}: {ex}") \
                from None
        if not messages:
            raise _refuse(target, f"selects none of the {n_nodes} node(s) for training",
                          "; ".join(said) or "no reason given")
        for message in messages:
            for record in message.content.config_records.values():
                extra = sorted(set(record) - allowed)
                if extra:
                    raise _refuse(target, f"sends train config keys {extra} the node does not take",
                                  f"the node takes {sorted(allowed)}")
        replies = [Message(RecordDict({"arrays": _copy(initial, moved=1e-3),
                                       "metrics": MetricRecord(dict(metrics))}), reply_to=message)
                   for message in messages]
        try:
            arrays, _ = strategy.aggregate_train(1, replies)
        except Exception as ex:
            missing = [str(k) for k in TRAIN_REPLY_KEYS - set(metrics) if f"'{k}'" in str(ex)]
            detail = (f"it needs the nodes' {missing[0]!r}, which the node does not send under its "
                      f"policy" if missing else f"{type(ex).__name__}: {ex}")
            raise _refuse(target, "cannot aggregate the node's reply", detail) from None
        if arrays is None:
            raise _refuse(target, f"aggregates nothing from {len(replies)} node reply(ies)",
                          "; ".join(said) or "no reason given")
    if set(arrays.keys()) != set(initial.keys()):
        raise _refuse(target, "returns other arrays than the model's", f"{sorted(arrays.keys())[:5]}")
    name = target.rpartition(".")[2]
    inner = str((config.get("strategy") or {}).get("_target_", "")).rpartition(".")[2] \
        if isinstance(config.get("strategy"), dict) else ""
    notices = []
    for candidate in (name, inner):
        if candidate in REDUCES_TO and n_nodes < REDUCES_TO[candidate][0]:
            notices.append(REDUCES_TO[candidate][1].format(n=n_nodes))
    return notices
