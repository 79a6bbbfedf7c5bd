"""The ServerApp: hosts one contributor's strategy through the two phases.

1. out of the box: the initial weights go to every node, which scores its
   holdout and writes the score to the official record itself;
2. fine-tuning: the contributor's strategy runs its rounds (``Strategy.start``);
3. final: the fine-tuned weights go to every node for the final holdout score.

Nothing here sees a score: the nodes reply only that they recorded it.
"""

from __future__ import annotations

import base64
import importlib
import inspect
import io
import logging
import time
import types
from collections.abc import Callable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy
from hydra.utils import get_object as locate
from hydra.utils import instantiate

from contract.names import HOLDOUT_FINE_TUNED, HOLDOUT_OUT_OF_THE_BOX, Moment, ReplyKey
from contract.submission import Submission
from models import build_for
from server.errors import SubmissionFailed
from server.refusals import RefusalRecordingGrid, flower_warnings, reason

#: Called with (phase, done, total): phase is "engine" (a run's engine starts), a ``Moment`` or "round".
Progress = Callable[[str, int, int], None]


def build_server_app(progress: Progress | None = None, node_timeout: float = 120.0) -> ServerApp:
    """The workspace's ServerApp, reading the submission from the run config.

    Parameters
    ----------
    progress : callable, optional
        Told of each phase and round, as ``progress(phase, done, total)``.
    node_timeout : float
        Seconds to wait for the first node to connect.
    """
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        host_submission(grid, Submission.from_run_config(context.run_config), progress,
                        node_timeout)

    return app


def host_submission(grid: Grid, submission: Submission, progress: Progress | None = None,
                    node_timeout: float = 120.0) -> None:
    """Drive one submission through out-of-the-box scoring, training and final scoring.

    Parameters
    ----------
    grid : Grid
        Flower's grid of this run.
    submission : Submission
        What the workspace set in the run config.
    progress, node_timeout
        As in ``build_server_app``.

    Raises
    ------
    SubmissionFailed
        A node refused a phase, or a round aggregated no reply; with the node's reason.
    """
    report = progress or (lambda phase, done, total: None)
    node_ids = wait_for_nodes(grid, node_timeout)
    grid = RefusalRecordingGrid(grid)
    strategy = build_strategy(submission.strategy, len(node_ids), submission.strategy_source)
    initial = initial_arrays(submission)

    ask_nodes(grid, node_ids, HOLDOUT_OUT_OF_THE_BOX, RecordDict({"arrays": initial}))
    report(Moment.OUT_OF_THE_BOX, 1, 1)

    def on_round(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        report("round", server_round, submission.num_rounds)
        return None  # no server-side evaluation: the server holds no data

    with flower_warnings(echo=logging.getLogger("flwr").level <= logging.WARNING) as said:
        result = strategy.start(grid, initial, submission.num_rounds,
                                train_config=ConfigRecord(submission.train_config()),
                                evaluate_fn=on_round)
    if len(result.train_metrics_clientapp) < submission.num_rounds:
        refusals = "; ".join(dict.fromkeys(grid.refusals)) or "no reply"
        flower = "; ".join(dict.fromkeys(said))[-1000:]
        raise SubmissionFailed(
            f"only {len(result.train_metrics_clientapp)} of {submission.num_rounds} rounds "
            f"aggregated a reply; the node said: {refusals}" + (f"; Flower said: {flower}" if flower else ""))
    ask_nodes(grid, node_ids, HOLDOUT_FINE_TUNED, RecordDict({"arrays": result.arrays}))
    report(Moment.FINE_TUNED, 1, 1)


def build_strategy(config: dict, n_nodes: int, source: str = "") -> Strategy:
    """Instantiate a strategy; node minimums = the real node count.

    ``_target_`` names a class of ``flwr.serverapp.strategy``, of ``strategies``,
    or (``contributor.Name``) of the contributor's own module given as ``source``,
    which runs here in the ServerApp process and nowhere else. Flower's FedAvg
    family defaults to 2 minimum nodes and would wait forever with one.
    """
    check_strategy_targets(config)
    target = str(config.get("_target_", ""))
    kwargs = {k: v for k, v in config.items() if k != "_target_"}
    if target.startswith("contributor."):
        module = types.ModuleType("contributor")
        exec(compile(source, "<contributor strategy.py>", "exec"), module.__dict__)  # noqa: S102
        strategy = getattr(module, target.removeprefix("contributor."))(**kwargs)
    else:
        if "train_loss_key" in inspect.signature(locate(target)).parameters:
            kwargs.setdefault("train_loss_key", str(ReplyKey.TRAIN_LOSS))  # QFedAvg: the node's name
        strategy = instantiate({"_target_": target, **kwargs})
    # a wrapper (Flower's differential-privacy strategies) samples through the strategy it wraps
    for layer in (strategy, getattr(strategy, "strategy", None)):
        for attribute in ("min_train_nodes", "min_evaluate_nodes", "min_available_nodes"):
            if hasattr(layer, attribute):
                setattr(layer, attribute, min(getattr(layer, attribute), n_nodes))
    return strategy


def check_strategy_targets(config: object, top: bool = True) -> None:
    """Every ``_target_`` in a strategy config names a Strategy class of an allowed package.

    Hydra calls whatever a ``_target_`` names, nested ones included, and reaches
    attributes through modules (``flwr.serverapp.strategy.fedavg.time.sleep``); so each
    must resolve to a ``Strategy`` subclass, and only the top one may be ``contributor.*``.

    Raises
    ------
    SubmissionFailed
        Naming the target.
    """
    if isinstance(config, list | tuple):
        for item in config:
            check_strategy_targets(item, top=False)
        return
    if not isinstance(config, dict):
        return
    target = config.get("_target_")
    if target is not None:
        target = str(target)
        if target.startswith("contributor.") and top and target.count(".") == 1:
            pass
        elif not target.startswith(STRATEGY_PACKAGES) or not _is_strategy_class(target):
            raise SubmissionFailed(f"strategy _target_ '{target[:200]}' is not a Strategy class of "
                                   f"{STRATEGY_PACKAGES}")
    for key, value in config.items():
        if key != "_target_":
            check_strategy_targets(value, top=False)


#: Where a ``_target_`` other than the contributor's own module may point.
STRATEGY_PACKAGES = ("flwr.serverapp.strategy.", "strategies.")


def _is_strategy_class(target: str) -> bool:
    """``target`` is ``module.Class``: an importable module and a Strategy class in it."""
    module_name, _, name = target.rpartition(".")
    try:
        found = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError):
        return False
    return isinstance(found, type) and issubclass(found, Strategy)


def initial_arrays(submission: Submission) -> ArrayRecord:
    """The submitted model's starting weights, for the cohort schema the run was built for: the
    package's, or drawn from the seed."""
    schema = submission.schema
    model = build_for(submission.model, schema.pipeline(submission.features), len(schema.classes),
                      submission.seed)
    if not submission.initial_weights:
        return ArrayRecord(model.state_dict())
    with np.load(io.BytesIO(base64.b64decode(submission.initial_weights)), allow_pickle=False) as npz:
        given = {name: npz[name] for name in npz.files}
    order = [k for k in model.state_dict() if k in given] + [k for k in given if k not in
                                                            model.state_dict()]
    return ArrayRecord({k: Array(np.ascontiguousarray(given[k])) for k in order})  # the node judges


def wait_for_nodes(grid: Grid, timeout: float) -> list[int]:
    """Node ids connected to this run, waiting up to ``timeout`` seconds for the first."""
    deadline = time.monotonic() + timeout
    while not (node_ids := sorted(grid.get_node_ids())):
        if time.monotonic() > deadline:
            raise SubmissionFailed(f"no node connected within {timeout:.0f} s")
        time.sleep(0.5)
    return node_ids


def ask_nodes(grid: Grid, node_ids: list[int], message_type: str, content: RecordDict) -> None:
    """Send one request to every node; raise with the node's reason if any refuses."""
    messages = [Message(content, node_id, message_type) for node_id in node_ids]
    replies = list(grid.send_and_receive(messages))
    for reply in replies:
        if reply.has_error():
            raise SubmissionFailed(f"{message_type} refused by the node: {reason(reply)}")
    if len(replies) != len(node_ids):
        raise SubmissionFailed(f"{message_type}: {len(node_ids) - len(replies)} node(s) did not reply")


app = build_server_app()
