"""``cohortfl rescore``: past submissions scored again on a new version of the cohort.

The node keeps each closed run's weights (as submitted and as fine-tuned) and declaration in its
state directory. When the foundation serves a new version of the cohort (more records, the same
data dictionary), the node scores the kept weights on the new holdout and writes each result as a
new run of the original's experiment: the original's name with ``@v<version>``, its parameters,
``cohort_version`` set to the new version and the tag ``cohortfl.rescore_of`` naming the original.
Both scores of a run (out of the box and fine-tuned) are scored again; compute and budgets are the
original's (nothing is trained). Paired comparisons are made with every other run scored on the
same holdout. Only the foundation starts it: no contributor's message can.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from client.errors import NodeError
from client.node import Node
from client.record import OfficialRecord
from contract.names import GAIN_METRIC, Tag, UsageMetric

log = logging.getLogger("cohortfl.node")

#: What the original's record says that still holds on the new version (compute is not redone).
_CARRIED_METRICS = (UsageMetric.COMPUTE_FLOPS, UsageMetric.COMPUTE_PF, UsageMetric.COMPUTE_DEVICE_SECONDS,
                    UsageMetric.ROUNDS_TRAINED, UsageMetric.BUDGET_COMPUTE_USED_PF,
                    UsageMetric.BUDGET_COMPUTE_PF, UsageMetric.BUDGET_SUBMISSIONS_USED,
                    UsageMetric.BUDGET_SUBMISSIONS_LIMIT, UsageMetric.EXPORTED_REPLIES,
                    UsageMetric.EXPORTED_BYTES, UsageMetric.PRIVACY_EPSILON)


@dataclass(frozen=True)
class Rescored:
    """One kept run's outcome: its new run and score, or why it was not scored."""

    run_id: str
    contributor: str
    rescore_run_id: str = ""
    macro_f1: float | None = None
    skipped: str = ""


def rescore(node: Node, run_ids: Sequence[str] = (), say: Callable[[str], None] = print) -> list[Rescored]:
    """Score every kept run (or those of ``run_ids``) whose final score was on an earlier cohort
    version, on this node's cohort; one line per run through ``say``.

    Raises
    ------
    NodeError
        A run id of ``run_ids`` names no run whose weights the node keeps.
    """
    kept = {k.run_id: k for k in node.ledger.finals()}
    unknown = [r for r in run_ids if r not in kept]
    if unknown:
        raise NodeError(f"the node keeps no final weights of run(s) {unknown}")
    chosen = [kept[r] for r in run_ids] if run_ids else list(kept.values())
    version, results = node.cohort_version, []
    say(f"cohort version {version} ({node.cohort.n_records} records, holdout "
        f"{len(node.cohort.y_holdout)}): {len(chosen)} kept run(s)")
    for i, run in enumerate(chosen, 1):
        done = node.ledger.rescored(run.run_id, version)
        if run.version >= version or done:
            why = f"scored on version {run.version}" if run.version >= version else f"rescored as {done}"
            result = Rescored(run.run_id, run.contributor, done or "", skipped=why)
        else:
            try:
                result = _rescore_one(node, run.run_id, run.contributor, run.version, version)
            except NodeError as ex:  # PolicyViolation included: another schema, weights gone
                result = Rescored(run.run_id, run.contributor, skipped=str(ex))
        results.append(result)
        say(f"  [{i}/{len(chosen)}] {run.contributor} {run.run_id[:8]}: " + (
            f"skipped ({result.skipped})" if result.skipped else
            f"macro-F1 {result.macro_f1:.3f} on v{version} as run {result.rescore_run_id[:8]}"))
    return results


def _rescore_one(node: Node, run_id: str, contributor: str, version_of_run: int, version: int) -> Rescored:
    """Score one kept run's initial and final weights on this cohort; write the new run.

    Raises
    ------
    NodeError
        A record of this holdout was in the training split of the run's version.
    """
    trained_on = node.ledger.training_ids(version_of_run) & set(node.cohort.holdout_ids)
    if trained_on:
        raise NodeError(f"{len(trained_on)} of this holdout's records were in the training split the run "
                        f"trained on (cohort version {version_of_run}): its score would count records it "
                        "learned; a holdout by fraction (holdout-fraction) keeps each record's side")
    if not node.ledger.claim_rescore(run_id, version):
        return Rescored(run_id, contributor, node.ledger.rescored(run_id, version) or "",
                        skipped="being rescored by another process")
    try:
        new_id, score = _write_rescore(node, run_id, version)
    except BaseException:
        node.ledger.release_rescore(run_id, version)
        raise
    node.ledger.rescored_as(run_id, version, new_id)
    log.info("rescored %s on cohort version %d as %s: macro-F1 %.3f", run_id, version, new_id, score)
    return Rescored(run_id, contributor, new_id, score)


def _write_rescore(node: Node, run_id: str, version: int) -> tuple[str, float]:
    """Score the run's kept weights on this holdout and write them as a new, finished run of the
    original's experiment; its id and fine-tuned macro-F1."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from mlflow.tracking import MlflowClient

    client = MlflowClient(node.settings.tracking_uri)
    original = client.get_run(run_id)
    _, initial, view = node.kept_model(run_id, "initial")
    _, final, _ = node.kept_model(run_id, "final")
    tags = {k: v for k, v in original.data.tags.items()
            if k in (Tag.CONTRIBUTOR, Tag.BATCH, Tag.REPORTED_CLASS)}
    new_id = client.create_run(original.info.experiment_id, tags={**tags, Tag.RESCORE_OF: run_id},
                               run_name=f"{original.info.run_name}@v{version}").info.run_id
    record = OfficialRecord(node.settings.tracking_uri, new_id)
    carried = {k: v for k, v in original.data.metrics.items() if k in _CARRIED_METRICS}
    params = {**original.data.params, "cohort_digest": node.cohort.digest,
              "cohort_version": str(version), "n_train": str(len(node.cohort.y_train)),
              "n_holdout": str(len(node.cohort.y_holdout))}
    before = node.score(node.predict_holdout(initial, view), new_id)
    record.write_out_of_the_box(before, usage={}, params=params,
                                reported_class=node.cohort.schema.reported_class)
    predictions = node.predict_holdout(final, view)
    after = node.score(predictions, new_id)
    record.write_final(after, rounds_trained=int(carried.get(UsageMetric.ROUNDS_TRAINED, 0)), curve=[],
                       flops=int(carried.get(UsageMetric.COMPUTE_FLOPS, 0)),
                       device_seconds=float(carried.get(UsageMetric.COMPUTE_DEVICE_SECONDS, 0.0)),
                       classes=node.cohort.classes, usage=carried)
    record.write_comparisons(node.compare(predictions, new_id))
    record.apply({"metrics": {GAIN_METRIC: round(after.macro_f1 - before.macro_f1, 6)}})
    record.write_complete()
    client.set_terminated(new_id, "FINISHED")
    return new_id, after.macro_f1
