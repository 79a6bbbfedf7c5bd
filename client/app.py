"""The foundation's ClientApp: Flower's entry point into the node.

Message types it answers (anything else is refused by Flower):

- ``train``: one round of local training; replies model arrays + aggregate scalars;
- ``query.holdout_out_of_the_box``: score the submitted model before training (official record);
- ``query.holdout_fine_tuned``: score the fine-tuned model and close the run.

Every handler runs the same guard: node errors travel to the server as rule
names; any other exception is logged on the node and replaced by a message
without detail, since exception text crosses the wire.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp

from client.errors import NodeError
from client.ledger import NodeLedger
from client.node import Node
from client.policy import read_submission
from client.settings import NodeSettings
from contract.names import HOLDOUT_FINE_TUNED, HOLDOUT_OUT_OF_THE_BOX
from contract.submission import Submission, run_config_key

log = logging.getLogger("cohortfl.node")

#: Prefix of a contributor name in the export ledger when the run's grant did not verify.
UNVERIFIED = "unverified:"

Action = Callable[[Node, RecordDict, Submission], RecordDict]


def build_client_app(settings: NodeSettings | None = None) -> ClientApp:
    """The node's ClientApp.

    Parameters
    ----------
    settings : NodeSettings, optional
        Given by the workspace in simulation; when omitted (deployment), read
        from the SuperNode's ``--node-config``.
    """
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return _serve(msg, context, settings, Node.train, "train")

    @app.query(HOLDOUT_OUT_OF_THE_BOX.removeprefix("query."))
    def holdout_out_of_the_box(msg: Message, context: Context) -> Message:
        return _serve(msg, context, settings, Node.score_out_of_the_box, "holdout out of the box")

    @app.query(HOLDOUT_FINE_TUNED.removeprefix("query."))
    def holdout_fine_tuned(msg: Message, context: Context) -> Message:
        return _serve(msg, context, settings, Node.score_fine_tuned, "fine-tuned holdout")

    return app


def _serve(msg: Message, context: Context, settings: NodeSettings | None, action: Action,
           name: str) -> Message:
    """Run one node action under the guard; every reply that leaves -- records or
    error text -- goes into the export ledger first."""
    settings = settings or NodeSettings.from_node_config(context.node_config)
    # until the workspace's grant is verified, the run's identity is only a claim, and is ledgered so
    who = (UNVERIFIED + str(context.run_config.get(run_config_key("contributor"), "?")),
           str(context.run_config.get(run_config_key("submission_id"), "?")), msg.metadata.message_type)
    try:
        node = Node.for_settings(settings)
    except Exception:  # the cohort's or the state's problems are the operator's, and may quote data
        log.exception("the node could not start")
        raise _refuse(NodeLedger(settings.ledger_path), who, NodeError(
            "the node cannot load its cohort or state; the node operator has the details")) from None
    try:
        node.deliver_queued()  # what a store that was down could not take, first
    except Exception:
        log.exception("queued official-record writes could not be delivered")
    try:
        run = read_submission(context.run_config, settings.workspace_key_pem)
        who = (run.contributor, run.submission_id, who[2])
        reply = action(node, msg.content, run)
    except NodeError as ex:
        raise _refuse(node.ledger, who, ex) from None
    except Exception:  # anything else may quote data: log here, send no detail
        log.exception("internal error during %s", name)
        raise _refuse(node.ledger, who, NodeError(
            f"internal error during {name}; the node operator has the details")) from None
    node.ledger.record_export(*who, reply)
    return Message(reply, reply_to=msg)


def _refuse(ledger: NodeLedger, who: tuple[str, str, str], error: NodeError) -> NodeError:
    """Record the error text that is about to leave, and return the error to raise."""
    ledger.record_export(*who, None, str(error))
    return error


app = build_client_app()
