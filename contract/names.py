"""Every name that crosses between the node and the workspace, spelled once.

Flower carries message types, train-config keys and reply-metric keys (kebab-case, as
Flower's own ``server-round`` and ``num-examples``); MLflow carries metric and tag names
(snake_case). The node writes them, the workspace and the leaderboard read them: both
import them from here and from nowhere else. Run-config keys are derived from the fields
of ``contract.submission.Submission``.
"""

from __future__ import annotations

import re
from enum import StrEnum

# --- Flower: the message types the node answers -------------------------------------------
TRAIN = "train"
#: Score the submitted model on the holdout before any training (official record).
HOLDOUT_OUT_OF_THE_BOX = "query.holdout_out_of_the_box"
#: Score the fine-tuned model on the holdout and close the submission.
HOLDOUT_FINE_TUNED = "query.holdout_fine_tuned"


class TrainKey(StrEnum):
    """Keys a strategy may put in a train message's config (``server-round`` is Flower's)."""

    LR = "lr"
    LOCAL_EPOCHS = "local-epochs"
    BATCH_SIZE = "batch-size"
    PROXIMAL_MU = "proximal-mu"
    SERVER_ROUND = "server-round"


class ReplyKey(StrEnum):
    """The aggregate scalars a node's reply may carry: the export whitelist's names."""

    TRAIN_LOSS = "train-loss"
    NUM_EXAMPLES = "num-examples"
    COMPUTE_FLOPS = "compute-flops"
    DEVICE_SECONDS = "device-seconds"
    #: The whole answer to a holdout request: that it was recorded, never a score.
    RECORDED = "recorded"


TRAIN_REPLY_KEYS = frozenset({ReplyKey.TRAIN_LOSS, ReplyKey.NUM_EXAMPLES, ReplyKey.COMPUTE_FLOPS,
                              ReplyKey.DEVICE_SECONDS})
HOLDOUT_REPLY_KEYS = frozenset({ReplyKey.RECORDED})


# --- MLflow: the official record -----------------------------------------------------------
class Moment(StrEnum):
    """The two moments a submission is scored on the holdout."""

    OUT_OF_THE_BOX = "out_of_the_box"
    FINE_TUNED = "fine_tuned"


def holdout_metric(moment: Moment, measure: str, klass: str | None = None) -> str:
    """``holdout_fine_tuned_macro_f1``, or per class ``holdout_out_of_the_box_recall_fast`` (a
    class name of the data dictionary in lower case, each run of other characters as ``_``)."""
    return f"holdout_{moment}_{measure}" + (f"_{_metric_word(klass)}" if klass else "")


def _metric_word(klass: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", klass.lower()).strip("_") or "class"


def interval_metrics(metric: str) -> tuple[str, str]:
    """Names of the 95% bootstrap interval's bounds of a holdout metric."""
    return f"{metric}_ci95_low", f"{metric}_ci95_high"


#: The permutation importance (macro-F1 lost) of the feature group that matters most to the
#: fine-tuned model; which group it is, is the tag ``Tag.TOP_GROUP``. Every group's importance is
#: in the artifact ``Artifact.IMPORTANCE_TABLE``, not in metrics: the board stays readable.
TOP_GROUP_METRIC = "importance_top_group"
#: The class whose recall the board reports beside macro-F1 (the foundation's first concern).
REPORTED_CLASS = "Fast"
#: The leaderboard's sort key and headline score.
LEADERBOARD_METRIC = holdout_metric(Moment.FINE_TUNED, "macro_f1")
#: Fine-tuned minus out-of-the-box macro-F1, from the node's two official scores (the workspace
#: derives it when it closes the run).
GAIN_METRIC = "holdout_gain_macro_f1"


class UsageMetric(StrEnum):
    """What the node records about budgets, compute and exports on each official run."""

    COMPUTE_FLOPS = "compute_flops"
    COMPUTE_PF = "compute_pf"
    COMPUTE_DEVICE_SECONDS = "compute_device_seconds"
    ROUNDS_TRAINED = "rounds_trained"
    BUDGET_COMPUTE_USED_PF = "budget_compute_used_pf"
    BUDGET_COMPUTE_PF = "budget_compute_pf"
    BUDGET_SUBMISSIONS_USED = "budget_submissions_used"
    BUDGET_SUBMISSIONS_LIMIT = "budget_submissions_limit"
    EXPORTED_REPLIES = "exported_replies"
    EXPORTED_BYTES = "exported_bytes"
    PRIVACY_EPSILON = "privacy_epsilon"
    PRIVACY_DELTA = "privacy_delta"
    PRIVACY_EPSILON_BUDGET = "privacy_epsilon_budget"
    PRIVACY_NOISE_MULTIPLIER = "privacy_noise_multiplier"
    PRIVACY_MAX_GRAD_NORM = "privacy_max_grad_norm"


#: Step-indexed series of the mean training loss, step = round.
TRAIN_LOSS_SERIES = "train_loss"


class Tag(StrEnum):
    """Tags on an official run."""

    CONTRIBUTOR = "cohortfl.contributor"
    BATCH = "cohortfl.batch"
    ERROR = "cohortfl.error"
    #: What the strategy reduces to with this workspace's nodes (``server/rehearsal.py``).
    NOTICE = "cohortfl.notice"
    #: The node's last write of a run's official record: everything before it has arrived.
    RECORD_COMPLETE = "cohortfl.record_complete"
    #: The feature group whose permutation costs the fine-tuned model the most macro-F1.
    TOP_GROUP = "cohortfl.top_feature_group"
    #: The class whose recall the board shows beside macro-F1 (the data dictionary's ``reported``).
    REPORTED_CLASS = "cohortfl.reported_class"
    #: The one run of an experiment that holds the cohort's EDA (not a submission).
    COHORT_EDA = "cohortfl.cohort_eda"
    #: A run that scores another run's kept weights on a later cohort version: the other's run id.
    RESCORE_OF = "cohortfl.rescore_of"


#: Prefix of a paired comparison with another run: ``cohortfl.paired.<run id>``.
PAIRED_TAG_PREFIX = "cohortfl.paired."


class Artifact(StrEnum):
    """Files the node and the workspace attach to an official run."""

    SUBMISSION = "submission.json"
    CONFUSION = "holdout_confusion_matrix.png"
    IMPORTANCE_TABLE = "holdout_importance.json"
    IMPORTANCE_FIGURE = "holdout_importance.png"

# --- MLflow: the environment that gives a process an account on the workspace's server -------
#: MLflow's own variables: a process holding them writes as that account, so the
#: processes the node and the workspace start (SuperNode, SuperLink, sandboxes) never get them.
MLFLOW_ACCOUNT_VARIABLES = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                            "MLFLOW_TRACKING_SERVER_CERT_PATH")
