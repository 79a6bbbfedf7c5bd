"""The node's own executor: the only code that ever runs beside the records is installed here.

A stock SuperNode hands each message to ``flwr-clientapp``, which installs the
bundle that came with the run and imports the ClientApp named in it: whoever
starts a run chooses the code next to the cohort. The foundation's SuperNode
is started with ``--isolation process`` and a SuperExec secret instead, and
this loop is its only executor:

- it asks the SuperNode for ``flwr-clientapp`` tasks only (agent, model,
  connector, server and simulation tasks are never acquired, so never run);
- it reads the bundle's manifest as data (TOML in the zip, nothing imported or
  installed) and refuses a run whose bundle does not name the foundation's
  ClientApp (rule ``pinned-clientapp``);
- it answers with the installed ClientApp (``client.app``), in this long-lived
  process: the cohort is loaded once, not once per message. The ClientApp then
  verifies the workspace's grant before any work (``client/policy.py``).

This module and ``server/engine.py`` are the only ones that use Flower's
internals; each names them in ``PRIVATE_FLOWER_API`` (``tests/test_flower_private_api.py``).
"""

from __future__ import annotations

import io
import logging
import threading
import time
import tomllib
import zipfile
from collections.abc import Callable

import httpx
from flwr.app import Context, Message
from flwr.app.error import Error
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode, SubStatus
from flwr.common.serde import context_from_proto, fab_from_proto, run_from_proto
from flwr.proto.node_pb2 import Node as NodeProto
from flwr.proto.runtime_pb2 import AcquireTaskRequest, PullAppMessagesRequest, PullTaskInputRequest
from flwr.supercore.constant import TaskType
from flwr.supercore.fab import Fab
from flwr.supercore.inflatable.inflatable_protobuf_utils import (
    make_confirm_message_received_fn_protobuf,
    make_pull_object_fn_protobuf,
)
from flwr.supercore.inflatable.inflatable_utils import pull_and_inflate_object_from_tree
from flwr.supercore.interceptors import (
    RuntimeTokenHttpInterceptor,
    RuntimeVersionHttpInterceptor,
    SuperExecAuthHttpInterceptor,
)
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supercore.task_identity import TaskIdentity
from flwr.supernode.runtime.run_clientapp import push_message, push_task_output

from client.errors import NodeError

log = logging.getLogger("cohortfl.node")

#: Flower internals used here (module, name), checked on every Flower upgrade.
PRIVATE_FLOWER_API = (
    ("flwr.app.error", "Error"),
    ("flwr.common.constant", "ErrorCode"),
    ("flwr.common.constant", "SubStatus"),
    ("flwr.proto.runtime_pb2", "AcquireTaskRequest"),
    ("flwr.supercore.constant", "TaskType"),
    ("flwr.supercore.fab", "Fab"),
    ("flwr.supercore.interceptors", "RuntimeTokenHttpInterceptor"),
    ("flwr.supercore.interceptors", "RuntimeVersionHttpInterceptor"),
    ("flwr.supercore.interceptors", "SuperExecAuthHttpInterceptor"),
    ("flwr.supercore.retry", "make_simple_http_retry_invoker"),
    ("flwr.supercore.runtime", "RuntimeHttpClient"),
    ("flwr.common.serde", "context_from_proto"),
    ("flwr.common.serde", "fab_from_proto"),
    ("flwr.common.serde", "run_from_proto"),
    ("flwr.proto.node_pb2", "Node"),
    ("flwr.proto.runtime_pb2", "PullAppMessagesRequest"),
    ("flwr.proto.runtime_pb2", "PullTaskInputRequest"),
    ("flwr.supercore.inflatable.inflatable_protobuf_utils", "make_confirm_message_received_fn_protobuf"),
    ("flwr.supercore.inflatable.inflatable_protobuf_utils", "make_pull_object_fn_protobuf"),
    ("flwr.supercore.inflatable.inflatable_utils", "pull_and_inflate_object_from_tree"),
    ("flwr.supercore.task_identity", "TaskIdentity"),
    ("flwr.supernode.runtime.run_clientapp", "push_message"),
    ("flwr.supernode.runtime.run_clientapp", "push_task_output"),
)

#: The ClientApp a bundle must name for the node to answer its run.
PINNED_CLIENTAPP = "client.app:app"
#: The only task type this executor acquires.
SERVED_TASK_TYPES = (TaskType.CLIENT_APP,)
_ACQUIRE = "/flwr.proto.Runtime/AcquireTask"


def check_bundle(fab_content: bytes) -> None:
    """Refuse a bundle that does not name the foundation's ClientApp; read as data only.

    Raises
    ------
    NodeError
        ``pinned-clientapp``, naming what the bundle declared.
    """
    try:
        with zipfile.ZipFile(io.BytesIO(fab_content)) as fab:
            manifest = tomllib.loads(fab.read("pyproject.toml").decode("utf-8"))
        declared = manifest["tool"]["flwr"]["app"]["components"]
    except Exception:  # a bundle that cannot be read is not the pinned one
        raise NodeError("pinned-clientapp: the bundle's manifest cannot be read") from None
    clientapp = declared.get("clientapp")
    others = sorted(set(declared) - {"clientapp", "serverapp"})
    if clientapp != PINNED_CLIENTAPP or others:
        raise NodeError(f"pinned-clientapp: this node runs only {PINNED_CLIENTAPP}; the bundle "
                        f"declares clientapp={str(clientapp)[:80]!r}"
                        + (f" and {others}" if others else ""))


class NodeExecutor:
    """Serves the SuperNode's ClientApp tasks with the installed ClientApp, one at a time.

    Parameters
    ----------
    runtime_address : str
        The SuperNode's Runtime API (``--host:--port`` of ``flower-supernode``).
    secret : bytes
        The SuperExec secret shared with the SuperNode: only this process may take tasks.
    app : ClientApp
        The foundation's ClientApp, built with the node's settings.
    poll_interval : float
        Seconds between two asks for work when there is none.
    idle : callable, optional
        Called at most every ``idle_interval`` s while there is no work (the node
        delivers official-record writes its store could not take).
    """

    def __init__(self, runtime_address: str, secret: bytes, app: ClientApp,
                 poll_interval: float = 0.05, idle: Callable[[], object] | None = None,
                 idle_interval: float = 10.0) -> None:
        self.runtime_address = runtime_address
        self.app = app
        self.poll_interval = poll_interval
        self.idle, self.idle_interval = idle, idle_interval
        # asking for work fails fast while the SuperNode is down: this loop asks again itself
        self._tasks = self._client(SuperExecAuthHttpInterceptor(master_secret=secret,
                                                               protected_methods={_ACQUIRE}),
                                   max_tries=2)

    def _client(self, *interceptors, max_tries: int | None = None) -> RuntimeHttpClient:
        retry = make_simple_http_retry_invoker()
        if max_tries is not None:
            retry.max_tries = max_tries
        return RuntimeHttpClient.from_server_address(
            server_address=self.runtime_address, insecure=True, root_certificates=None,
            interceptors=[RuntimeVersionHttpInterceptor(component_name="cohortfl-node"),
                          *interceptors],
            retry_invoker=retry)

    def serve_forever(self, stop: threading.Event) -> None:
        """Take and answer tasks until ``stop`` is set."""
        last_idle = time.monotonic()
        while not stop.is_set():
            try:
                served = self.serve_next()
            except httpx.HTTPError:  # the SuperNode is starting or restarting
                log.debug("the SuperNode's runtime API is not answering yet")
                served = False
            if served:
                continue
            if self.idle and time.monotonic() - last_idle > self.idle_interval:
                try:
                    self.idle()
                except Exception:
                    log.exception("idle work failed")
                last_idle = time.monotonic()
            stop.wait(self.poll_interval)
        self._tasks.close()

    def serve_next(self) -> bool:
        """Answer one task if the SuperNode has one; False when there was none."""
        reply = self._tasks.AcquireTask(AcquireTaskRequest(
            supported_task_types=[str(t) for t in SERVED_TASK_TYPES]))
        if not (reply.HasField("task") and reply.token):
            return False
        self._serve(reply.token)
        return True

    def _serve(self, token: str) -> None:
        client = self._client(RuntimeTokenHttpInterceptor(token))
        message = context = reply = None
        status, details = SubStatus.FAILED, "the node could not answer"
        clock = [time.perf_counter()]
        try:
            message, context, fab = pull_task_input(client)
            check_bundle(fab.content)
            clock.append(time.perf_counter())
            reply = self.app(message=message, context=context)
            clock.append(time.perf_counter())
            status, details = SubStatus.COMPLETED, ""
        except Exception as ex:  # the node's refusals carry a rule name and no data; others say nothing
            details = str(ex) if isinstance(ex, NodeError) else (
                "the node could not answer this message; the node operator has the details")
            log.warning("task refused: %s", details)
            if message is not None:
                reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=details),
                                reply_to=message)
        finally:
            try:
                if reply is not None and context is not None:
                    push_message(client, reply, context)
                push_task_output(client=client, context=context, sub_status=status, details=details)
            finally:
                client.close()
        if len(clock) == 3:
            log.info("served %s: pull %.3f s, node %.3f s, push %.3f s",
                     message.metadata.message_type, clock[1] - clock[0], clock[2] - clock[1],
                     time.perf_counter() - clock[2])


def pull_task_input(client: RuntimeHttpClient) -> tuple[Message, Context, Fab]:
    """The task's message, context and bundle, as Flower's ``pull_task_input`` takes them, but
    retrying a message part the SuperNode has not stored yet after 20 ms rather than Flower's 1 s
    (measured: the first try nearly always comes too early, and 1 s was a fifth of a round)."""
    answer = client.PullTaskInput(PullTaskInputRequest())
    TaskIdentity.task_id = answer.task_id
    TaskIdentity.run_id = answer.run.run_id
    TaskIdentity.node_id = answer.context.node_id
    context, fab = context_from_proto(answer.context), fab_from_proto(answer.fab)
    run_from_proto(answer.run)  # a run the SuperNode cannot describe is refused here
    pulled = client.PullMessages(PullAppMessagesRequest())
    if not pulled.messages_list:
        raise RuntimeError("no message came with the task")
    node, tree = NodeProto(node_id=context.node_id), pulled.message_object_trees[0]
    message = pull_and_inflate_object_from_tree(
        tree, make_pull_object_fn_protobuf(client.PullObject, node, context.run_id),
        make_confirm_message_received_fn_protobuf(client.ConfirmMessageReceived, node, context.run_id),
        return_type=Message, initial_backoff=0.02, backoff_cap=0.5)
    message.metadata.__dict__["_message_id"] = tree.object_id  # as Flower sets it
    return message, context, fab
