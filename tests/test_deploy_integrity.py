"""Issue 22 parts 1, 2 and 6, the pure parts (no Flower process): a site runs only fedtab's own ClientApp
(the app bundle check, with a broken control), a site's name is the one bound to its registered key
(impostors and duplicate names refused, with a broken control), and the transport pulls replies
quickly and attributes each to the node that was asked. The real-process versions are in
tests/test_deploy_integrity_e2e.py."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from fedtab.deploy import executor
from fedtab.deploy.executor import AppRefused, check_app
from fedtab.deploy.pki import make_node_key
from fedtab.deploy.runner import APP_PYPROJECT, bind_nodes, key_id
from fedtab.errors import ConfigError
from fedtab.federation.flower_app import admit_sites


def fab(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return buf.getvalue()


def built_fab(folder: Path, files: dict[str, str]) -> bytes:
    """The bundle as 'flwr run' builds it (Flower's own builder)."""
    from flwr.cli.build import build_fab_from_disk

    folder.mkdir()
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return build_fab_from_disk(folder)


MODIFIED = APP_PYPROJECT.replace('clientapp = "fedtab.deploy.apps:client_app"', 'clientapp = "evil:client_app"')
EVIL = "from flwr.clientapp import ClientApp\nclient_app = ClientApp()\n"


def test_fedtab_own_bundle_passes_and_a_modified_one_is_refused_with_its_reason(tmp_path):
    check_app(built_fab(tmp_path / "own", {"pyproject.toml": APP_PYPROJECT}))
    cases = {
        "another ClientApp, shipped": ({"pyproject.toml": MODIFIED, "evil.py": EVIL}, ["evil.py", "'evil:client_app'"]),
        # fedtab's own component name, but a module in the bundle that would shadow the installed one
        "a shadowing module": ({"pyproject.toml": APP_PYPROJECT, "fedtab/deploy/apps.py": EVIL},
                               ["fedtab/deploy/apps.py"]),
        "an installed module named": ({"pyproject.toml": MODIFIED.replace("evil:client_app", "os:client_app")},
                                      ["'os:client_app'"]),
    }
    for case, (files, words) in cases.items():
        with pytest.raises(AppRefused) as e:
            check_app(built_fab(tmp_path / case.replace(" ", "-").replace(",", ""), files))
        assert all(w in str(e.value) for w in words) and "fedtab installed here" in str(e.value), case
    with pytest.raises(AppRefused, match="cannot be read"):
        check_app(b"not a zip")


class Reply(SimpleNamespace):
    def has_error(self):
        return False


def test_the_executor_never_runs_a_refused_bundle_and_a_broken_control_would(monkeypatch):
    """run_task with a fake Runtime API: the modified bundle's message gets an error reply naming the reason and
    fedtab's ClientApp is not called; with the check removed (broken control), the message is served."""
    import flwr.supernode.runtime.run_clientapp as rc
    from flwr.app import Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    for attr in ("_run_id", "_node_id", "_task_id"):  # what pull_task_input sets
        monkeypatch.setattr(TaskIdentity, attr, 1)

    served, pushed, refused = [], [], []

    class FakeHeartbeat:
        def __init__(self, fn):
            pass

        start = stop = lambda self: None

    message = Message(content=RecordDict(), dst_node_id=1, message_type="query")
    bundle = SimpleNamespace(content=fab({"pyproject.toml": MODIFIED, "evil.py": EVIL}))
    monkeypatch.setattr(executor, "_pull_task_input", lambda client: (message, SimpleNamespace(), None, bundle))
    monkeypatch.setattr(rc, "push_message", lambda client, reply, context: pushed.append(reply))
    monkeypatch.setattr(rc, "push_task_output", lambda **kw: None)
    monkeypatch.setattr("flwr.supercore.heartbeat.HeartbeatSender", FakeHeartbeat)
    monkeypatch.setattr(executor, "_runtime_client", lambda *a: SimpleNamespace(close=lambda: None))
    monkeypatch.setattr("fedtab.deploy.apps.client_app",
                        lambda message, context: served.append(message) or Message(RecordDict(), reply_to=message))

    executor.run_task("127.0.0.1:1", "token", on_refused=refused.append)
    assert not served and len(pushed) == 1 and pushed[0].has_error()
    assert "app refused" in pushed[0].error.reason and refused == [pushed[0].error.reason]

    monkeypatch.setattr(executor, "check_app", lambda content: None)  # broken control: no pin
    executor.run_task("127.0.0.1:1", "token", on_refused=refused.append)
    assert served == [message] and not pushed[1].has_error()


def hello(**sites):
    return {nid: ("hello", {"site": name}) for nid, name in sites.items()}


def test_a_name_comes_from_the_key_impostors_and_unknown_keys_are_refused():
    bound = {11: "cleveland", 12: "hungary", 13: "switzerland"}
    # The scenario: a site calling itself 'hungary' holds cleveland's key (node 11).
    replies = {11: ("hello", {"site": "hungary"}), 12: ("hello", {"site": "hungary"}),
               13: ("hello", {"site": "switzerland"}), 14: ("hello", {"site": "cleveland"})}
    nodes, refused = admit_sites(replies, bound)
    assert nodes == {"hungary": 12, "switzerland": 13}  # the real hungary is not locked out
    assert any("holding cleveland's registered key calls itself 'hungary'" in r for r in refused)
    assert any("node 14" in r and "none of the keys" in r for r in refused)
    # Broken control: names as stated (no binding). The impostor alone is let in as hungary; with the real
    # hungary there, the real one is locked out with it.
    alone = {nid: r for nid, r in replies.items() if nid in (11, 13)}
    assert admit_sites(alone, None)[0] == {"hungary": 11, "switzerland": 13}
    assert "hungary" not in admit_sites(replies, None)[0]
    # Bound, the impostor alone is refused all the same.
    assert admit_sites(alone, bound)[0] == {"switzerland": 13}


def test_without_keys_a_duplicate_name_is_refused_for_every_node_claiming_it():
    nodes, refused = admit_sites({1: ("hello", {"site": "a"}), 2: ("hello", {"site": "a"}),
                                  3: ("hello", {"site": "b"})}, None)
    assert nodes == {"b": 3} and len(refused) == 2 and all("call themselves 'a'" in r for r in refused)


def test_nodes_are_bound_by_their_registered_public_keys(tmp_path):
    from cryptography.hazmat.primitives import serialization

    keys = {s: make_node_key(tmp_path, s)[1] for s in ("a", "b")}

    def as_flower_sends(path):  # Flower registers the key as PEM SubjectPublicKeyInfo
        k = serialization.load_ssh_public_key(path.read_bytes())
        return k.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    registered = {7: as_flower_sends(keys["b"]), 9: as_flower_sends(keys["a"]),
                  5: as_flower_sends(make_node_key(tmp_path, "stranger")[1])}
    assert bind_nodes(keys, registered) == {9: "a", 7: "b"}
    assert key_id(keys["a"].read_bytes()) == key_id(registered[9])
    with pytest.raises(ConfigError, match="name the same public key"):
        bind_nodes({"a": keys["a"], "b": keys["a"]}, registered)


class SlowGrid:
    """push/pull as Flower's Grid: node 1 answers on the 3rd pull; node 2's reply comes from the SuperLink
    (src 0: the node went offline); node 3's reply claims to come from node 4."""

    def __init__(self):
        self.pulls = 0

    def push_messages(self, msgs):
        self.msgs = {f"m{m.metadata.dst_node_id}": m for m in msgs}
        return list(self.msgs)

    def pull_messages(self, ids):
        from fedtab.federation.flower_app import to_records

        self.pulls += 1
        out = []
        for mid in ids:
            nid = self.msgs[mid].metadata.dst_node_id
            meta = SimpleNamespace(reply_to_message_id=mid, src_node_id={1: 1, 2: 0, 3: 4}[nid])
            if nid == 2:
                out.append(SimpleNamespace(metadata=meta, has_error=lambda: True,
                                           error=SimpleNamespace(reason="node unavailable")))
            elif nid == 3 or self.pulls >= 3:
                out.append(Reply(metadata=meta, content=to_records("train", {"ok": nid})))
        return out


def test_replies_are_pulled_quickly_and_each_is_the_asked_nodes(monkeypatch):
    import time

    from flwr.supercore.task_identity import TaskIdentity

    from fedtab.federation.flower_app import FlowerTransport

    for attr in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, attr, 1)
    t = FlowerTransport.__new__(FlowerTransport)
    t._grid, t._timeout, t._round = SlowGrid(), 30.0, 0
    t0 = time.perf_counter()
    out = t._send({1: ("train", {}), 2: ("train", {}), 3: ("train", {})})
    assert time.perf_counter() - t0 < 2.0  # three pulls, not three of Flower's 3 s waits
    assert out[1] == ("train", {"ok": 1})
    assert "node unavailable" in out[2][1]["__error__"]["message"]  # keyed by the node asked, not src 0
    assert "not the one asked" in out[3][1]["__error__"]["message"]


def test_a_message_carries_its_arrays_in_one_blob_and_a_bad_index_is_refused():
    import json

    import numpy as np
    from flwr.app import ConfigRecord

    from fedtab.errors import FederationError
    from fedtab.federation.flower_app import ARRAYS, BODY, INDEX, from_records, to_records

    body = {"weights": {f"w{i}": np.random.rand(3, 4).astype(np.float32) for i in range(40)},
            "n": np.arange(3), "empty": np.zeros((0, 2)), "s": np.array(["ab", "c"])}
    rd = to_records("train", body)
    assert len(rd[ARRAYS]) == 1  # one Flower object for 43 arrays (was one each)
    _, back = from_records(rd)
    for k, v in body["weights"].items():
        assert np.array_equal(back["weights"][k], v) and back["weights"][k].dtype == v.dtype
    assert back["empty"].shape == (0, 2) and list(back["s"]) == ["ab", "c"]
    index = json.loads(rd[BODY][INDEX])
    for bad, words in (([["a0", "|O", [1]]] + index[1:], "object arrays"),  # no pickle, ever
                       ([[index[0][0], index[0][1], [10 ** 6]]] + index[1:], "overrun"),
                       (index[:-1], "longer than its arrays")):
        cfg = dict(rd[BODY])
        cfg[INDEX] = json.dumps(bad)
        rd[BODY] = ConfigRecord(cfg)
        with pytest.raises(FederationError, match=words):
            from_records(rd)


def test_a_message_whose_sender_stopped_is_given_up_after_the_stall_not_flowers_two_hours():
    import time

    from flwr.supercore.inflatable.inflatable_utils import ObjectPullError, ObjectUnavailableError

    from fedtab.deploy.supernode_main import quick_pull_objects

    def sender_died(object_id):  # the header arrived; its objects never will
        raise ObjectUnavailableError(object_id)

    t0 = time.perf_counter()
    with pytest.raises(ObjectPullError, match="sender stopped"):
        quick_pull_objects(stall=0.5)(["a", "b"], sender_died)
    assert time.perf_counter() - t0 < 3.0
    arrived = {"a": 0}

    def slow_but_alive(object_id):  # each object comes after a few tries: never a stall
        arrived[object_id] = arrived.get(object_id, 0) + 1
        if arrived[object_id] < 3:
            raise ObjectUnavailableError(object_id)
        return b"x"

    assert quick_pull_objects(stall=0.5)(["a", "b", "c"], slow_but_alive) == {"a": b"x", "b": b"x", "c": b"x"}
