"""The site's own ClientApp executor: the SuperNode runs only the fedtab installed at the site.

Flower 1.42's SuperNode, in its default ``subprocess`` isolation, starts ``flwr-clientapp`` for every
message, installs the app bundle (FAB) the SuperLink hands it and imports whatever ClientApp that
bundle names: a coordinator could run its own code at every site, next to the table. Flower's own
remedy (``--trusted-entities``) verifies signatures that only Flower Hub issues (a FAB from a local
``flwr run`` carries none, so it is always refused), which an offline consortium cannot use.

So ``fedtab site`` starts its SuperNode with ``--isolation process`` (the SuperNode then starts no
executor of its own) and runs this one, a thread of the ``fedtab site`` process: it takes each task from the SuperNode's
local Runtime API, never installs or imports anything from the bundle, and hands the message to the
ClientApp of the fedtab installed here (``fedtab.deploy.apps:client_app``). A bundle that is not
fedtab's app (any file besides its ``pyproject.toml``, or components other than fedtab's) is refused
with an error reply that names the reason; the coordinator sees it, the site's log keeps it.

Being long-lived, it also saves Flower's per-message process start (importing Flower: about a second
or more on a busy machine); ``benchmarks/bench_deploy_overhead.py`` measures what is left.
"""

from __future__ import annotations

import io
import threading
import tomllib
import zipfile
from collections.abc import Callable

from fedtab.errors import FederationError

TRUSTED_CLIENTAPP = "fedtab.deploy.apps:client_app"
TRUSTED_SERVERAPP = "fedtab.deploy.apps:server_app"
# What ``flwr build`` puts in fedtab's bundle: the app's pyproject (fedtab.deploy.runner.APP_PYPROJECT)
# and Flower's own list of file hashes. fedtab's code is never in it: it is installed at each site.
FAB_FILES = frozenset({"pyproject.toml", ".info/CONTENT"})
POLL = 0.1  # seconds between asking the SuperNode for a task (a local HTTP call)


class AppRefused(FederationError):
    """The app bundle a coordinator shipped is not fedtab's: this site does not run it."""


def check_app(fab_content: bytes) -> None:
    """Raise ``AppRefused`` unless ``fab_content`` is fedtab's app bundle: only a pyproject (and Flower's
    hash list) whose components are fedtab's installed ServerApp and ClientApp. Pure: no I/O."""
    try:
        with zipfile.ZipFile(io.BytesIO(fab_content)) as z:
            names = set(z.namelist())
            pyproject = tomllib.loads(z.read("pyproject.toml").decode("utf-8")) if "pyproject.toml" in names else {}
    except (zipfile.BadZipFile, UnicodeDecodeError, tomllib.TOMLDecodeError, KeyError) as e:
        raise AppRefused(f"the app bundle cannot be read ({e}); this site runs only fedtab's own ClientApp",
                         public=True) from None
    problems = []
    extra = sorted(names - FAB_FILES)
    if extra:
        problems.append(f"it ships code or files of its own ({', '.join(extra[:5])}"
                        f"{', ...' if len(extra) > 5 else ''})")
    components = pyproject.get("tool", {}).get("flwr", {}).get("app", {}).get("components", {})
    if components.get("clientapp") != TRUSTED_CLIENTAPP:
        problems.append(f"its ClientApp is {components.get('clientapp')!r}, not {TRUSTED_CLIENTAPP!r}")
    if components.get("serverapp") != TRUSTED_SERVERAPP:
        problems.append(f"its ServerApp is {components.get('serverapp')!r}, not {TRUSTED_SERVERAPP!r}")
    if problems:
        raise AppRefused("app refused: this site runs only the ClientApp of the fedtab installed here, and the "
                         "coordinator's app is not fedtab's: " + "; ".join(problems), public=True)


def _runtime_client(address: str, *interceptors, retry: bool = True):
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient

    import httpx

    invoker = make_simple_http_retry_invoker()
    flower_giveup = invoker.should_giveup

    def should_giveup(exc: Exception) -> bool:
        # Flower's invoker answers a 401 (a task token the SuperNode no longer knows: it restarted, as after
        # the SuperLink restarts) by sending SIGINT to its own process, written for a flwr-clientapp process
        # of its own; here that process is `fedtab site`, which it stopped. Give up the task instead.
        if isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code == httpx.codes.UNAUTHORIZED:
            return True
        return flower_giveup(exc)

    invoker.should_giveup = should_giveup
    if not retry:
        invoker.max_tries = 1  # the caller waits and asks again, without Flower's warnings on every try
    return RuntimeHttpClient.from_server_address(server_address=address, insecure=True, root_certificates=None,
                                                 interceptors=list(interceptors), retry_invoker=invoker)


def _pull_task_input(client):
    """Flower's ``pull_task_input`` (flwr.supernode.runtime.run_clientapp), with quick retries for the
    message's objects: the SuperNode offers the task as soon as the message's header arrives, before it
    holds every object, and Flower's first retry waits 1 s."""
    from flwr.proto.node_pb2 import Node  # pylint: disable=E0611
    from flwr.proto.runtime_pb2 import PullAppMessagesRequest, PullTaskInputRequest  # pylint: disable=E0611
    from flwr.app import Message
    from flwr.common.serde import context_from_proto, fab_from_proto, run_from_proto
    from flwr.supercore.inflatable.inflatable_protobuf_utils import (
        make_confirm_message_received_fn_protobuf, make_pull_object_fn_protobuf)
    from flwr.supercore.inflatable.inflatable_utils import pull_and_inflate_object_from_tree
    from flwr.supercore.task_identity import TaskIdentity

    from fedtab.deploy.supernode_main import PULL_BACKOFF, PULL_BACKOFF_CAP

    res = client.PullTaskInput(PullTaskInputRequest())
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = res.task_id, res.run.run_id, res.context.node_id
    context, run, fab = context_from_proto(res.context), run_from_proto(res.run), fab_from_proto(res.fab)
    pulled = client.PullMessages(PullAppMessagesRequest())
    if not pulled.messages_list:
        raise RuntimeError("no message from the SuperNode's Runtime API")
    node = Node(node_id=context.node_id)
    tree = pulled.message_object_trees[0]
    message = pull_and_inflate_object_from_tree(
        tree, make_pull_object_fn_protobuf(client.PullObject, node, context.run_id),
        make_confirm_message_received_fn_protobuf(client.ConfirmMessageReceived, node, context.run_id),
        return_type=Message, initial_backoff=PULL_BACKOFF, backoff_cap=PULL_BACKOFF_CAP)
    message.metadata.__dict__["_message_id"] = tree.object_id  # as Flower does: the header has no id
    return message, context, run, fab


def run_task(address: str, token: str, *, on_refused: Callable[[str], None] | None = None) -> None:
    """Serve one task of the SuperNode (what ``flwr-clientapp --token`` does, minus installing and importing
    the bundle): pull the message, check the bundle, run fedtab's ClientApp, push the reply."""
    from flwr.app import Message
    from flwr.app.error import Error
    from flwr.common.constant import ErrorCode, SubStatus
    from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
    from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
    from flwr.supernode.runtime.run_clientapp import push_message, push_task_output

    from fedtab.deploy.apps import client_app

    client = _runtime_client(address, RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
                             RuntimeTokenHttpInterceptor(token))
    heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
    heartbeat.start()
    message = context = reply = None
    status, details = SubStatus.FAILED, "the task failed"
    try:
        message, context, _run, fab = _pull_task_input(client)
        check_app(fab.content)
        reply = client_app(message=message, context=context)
        status, details = SubStatus.COMPLETED, ""
    except AppRefused as e:
        details = str(e)
        if on_refused is not None:
            on_refused(details)
        if message is not None:
            reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=details), reply_to=message)
    except Exception as e:  # noqa: BLE001 - the coordinator gets an error reply, as from flwr-clientapp
        details = f"{type(e).__name__}: {e}"
        if message is not None:
            reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=details), reply_to=message)
    finally:
        try:
            if reply is not None and context is not None:
                push_message(client, reply, context)
            push_task_output(client=client, context=context, sub_status=status, details=details)
        finally:
            heartbeat.stop()
            client.close()


def serve_tasks(address: str, stop: threading.Event, *, on_refused: Callable[[str], None] | None = None,
                on_error: Callable[[Exception], None] | None = None) -> None:
    """Take the SuperNode's ClientApp tasks one at a time until ``stop`` is set. A SuperNode that is not up
    (starting, restarting) is waited for."""
    import httpx
    from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611
    from flwr.supercore.constant import TaskType
    from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor

    client = _runtime_client(address, RuntimeVersionHttpInterceptor(component_name="SuperExec"), retry=False)
    request = AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP])
    try:
        while not stop.is_set():
            try:
                res = client.AcquireTask(request)
            except httpx.HTTPError:
                stop.wait(1.0)  # the SuperNode is (re)starting
                continue
            if res.HasField("task") and res.token:
                try:
                    run_task(address, res.token, on_refused=on_refused)
                except Exception as e:  # noqa: BLE001 - one task's failure does not stop the site
                    if on_error is not None:
                        on_error(e)
                continue
            stop.wait(POLL)
    finally:
        client.close()
