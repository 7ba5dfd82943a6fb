"""Issue 21, the deployment walk-through's snags, without Flower processes: the coordinator refuses a
bad configuration before it starts anything (with the error's own exit code), the walk-through's files
come from 'fedtab trial-data', a site checks its own table at startup (paths from its site.toml's
folder), a site that cannot take part is left out and named when 'training.min_sites' allows, the
coordinator goes on without a site that never connects, a deployed site stops when told the job is
over, and stopping a Flower process stops what it started."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from fedtab.api import FederatedSynthesizer, _make_worker
from fedtab.config import SiteSource
from fedtab.datasets import HEART_SITES, heart_schema, heart_site_path
from fedtab.deploy import processes
from fedtab.deploy.siteconf import check_site_source, load_site_config
from fedtab.errors import DataValidationError, FederationError, SourceError
from fedtab.federation.coordinator import run_federation
from fedtab.federation.transport import InProcessTransport

BUNDLED = Path(heart_site_path("cleveland")).parent


@pytest.fixture
def walk(tmp_path, cli):
    """A folder set up as the walk-through's first two steps leave it: trial data and keys."""
    assert cli("trial-data", tmp_path).exit_code == 0
    assert cli("trial-keys", tmp_path / "keys", "--site", "cleveland", "--site", "hungary").exit_code == 0
    return tmp_path


TLS = ("--ssl-certfile", "keys/server.pem", "--ssl-keyfile", "keys/server.key", "--ssl-ca-certfile", "keys/ca.pem")


def consortium(schema: str = "heart_schema.json", extra: str = "") -> str:
    return (f'schema = "{schema}"\n{extra}\n[privacy]\nepsilon = 1.0\n'
            '[sites.cleveland]\npublic_key = "keys/cleveland.pub"\n[sites.hungary]\npublic_key = "keys/hungary.pub"\n')


def test_trial_data_writes_the_bundled_files_and_never_overwrites(tmp_path, cli):
    r = cli("trial-data", tmp_path / "t")
    assert r.exit_code == 0, r.output
    names = {f"heart_{s}.csv" for s in HEART_SITES} | {"heart_schema.json"}
    assert {p.name for p in (tmp_path / "t").iterdir()} == names
    assert all((tmp_path / "t" / n).read_bytes() == (BUNDLED / n).read_bytes() for n in names)
    (tmp_path / "t" / "heart_hungary.csv").write_text("mine")
    r = cli("trial-data", tmp_path / "t")
    assert r.exit_code == 5 and "--replace" in r.output
    assert (tmp_path / "t" / "heart_hungary.csv").read_text() == "mine"  # nothing written
    assert cli("trial-data", tmp_path / "t", "--replace").exit_code == 0


@pytest.mark.parametrize("case, code, words", [
    ("schema file missing", 3, ["nope.json", "schema file not found"]),
    ("unknown model option", 2, ["bogus"]),
    ("public key missing", 2, ["keys/zz.pub", "start at its folder"]),
    ("output not writable", 5, ["/proc", "cannot be written"]),
])
def test_the_coordinator_refuses_a_bad_configuration_before_it_starts_anything(walk, cli, monkeypatch, case, code,
                                                                                  words):
    toml = {"schema file missing": consortium("nope.json"),
            "unknown model option": consortium(extra='[model]\nname = "mst"\nbogus = 3'),
            "public key missing": consortium().replace("keys/hungary.pub", "keys/zz.pub"),
            "output not writable": consortium()}[case]
    (walk / "c.toml").write_text(toml)
    output = Path("/proc/m.fedtab") if case == "output not writable" else walk / "m.fedtab"
    monkeypatch.chdir(walk)
    started = time.perf_counter()
    r = cli("coordinator", "c.toml", "-o", output, "--port", processes.free_port(), *TLS)
    assert r.exit_code == code, r.output
    assert all(w in r.output for w in words), r.output
    # Nothing was started: no run folder, no SuperLink log (it took 55-77 s to get here before).
    assert not (walk / ".m.fedtab.run").exists()
    print(f"{case}: refused in {time.perf_counter() - started:.1f} s")


def test_the_control_a_good_configuration_passes_the_checks(walk):
    from fedtab.deploy.runner import TLSFiles, check_coordinator

    (walk / "c.toml").write_text(consortium())
    cfg, keys, synth, job = check_coordinator(walk / "c.toml", tls=TLSFiles(walk / "keys/server.pem",
                                                                           walk / "keys/server.key",
                                                                           walk / "keys/ca.pem"))
    assert sorted(keys) == ["cleveland", "hungary"] and job.schema == heart_schema()
    assert job.model == "mst"  # the default model, chosen from what is public


def site_toml(folder: Path, name: str = "cleveland", source: str = "heart_cleveland.csv", extra: str = "") -> Path:
    path = folder / f"{name}.toml"
    path.write_text(f'name = "{name}"\nsource = "{source}"\nsuperlink = "127.0.0.1:9"\n{extra}\n'
                    '[tls]\ninsecure = true\n')
    return path


def test_a_site_source_is_resolved_from_its_toml_folder_and_a_wrong_one_says_so(walk, tmp_path_factory, monkeypatch):
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    monkeypatch.chdir(elsewhere)  # 'fedtab site' run from another folder
    good = site_toml(walk)
    assert "303 rows" in check_site_source(load_site_config(good), good)  # found next to the TOML, not in cwd
    bad = site_toml(walk, source="heart_clevland.csv")
    with pytest.raises(SourceError) as e:
        check_site_source(load_site_config(bad), bad)
    assert str(walk / "heart_clevland.csv") in str(e.value)
    assert f"starts at that file's folder, {walk}" in str(e.value)
    assert str(elsewhere) not in str(e.value)  # not "relative paths start at <cwd>"


def test_a_site_checks_its_table_against_the_schema_named_in_site_toml(walk):
    table = pd.read_csv(walk / "heart_hungary.csv", dtype=str, keep_default_na=False)
    table.loc[:2, "age"] = "500"
    table.to_csv(walk / "odd.csv", index=False)
    toml = site_toml(walk, source="odd.csv", extra='schema = "heart_schema.json"')
    with pytest.raises(DataValidationError) as e:
        check_site_source(load_site_config(toml), toml)
    assert e.value.columns == ("age",) and "500" in str(e.value)  # the operator's own terminal: values shown
    assert "conforms to heart_schema.json" in check_site_source(load_site_config(site_toml(walk, extra='schema = "heart_schema.json"')), walk / "cleveland.toml")


def test_a_site_with_too_few_rows_refuses_at_startup(walk):
    pd.read_csv(walk / "heart_hungary.csv").iloc[:3].to_csv(walk / "three.csv", index=False)
    toml = site_toml(walk, source="three.csv")
    with pytest.raises(DataValidationError, match=r"3 row\(s\); a site needs at least 10"):
        check_site_source(load_site_config(toml), toml)


def test_fedtab_site_refuses_an_unreadable_table_before_starting_anything(walk, cli):
    toml = site_toml(walk, source="missing.csv", extra='state_dir = "state"')
    r = cli("site", "--config", toml)
    assert r.exit_code == 5 and "missing.csv" in r.output and "Traceback" not in r.output
    assert not (walk / "state").exists()  # no service, no SuperNode, no socket


# -- a site that cannot take part -------------------------------------------------------------------

def heart_job(min_sites):
    job = FederatedSynthesizer("mst", epsilon=1.0, schema=heart_schema())._job()
    return replace(job, training=replace(job.training, min_sites=min_sites), job_id="test")


def transport(sources: dict[str, str]) -> InProcessTransport:
    return InProcessTransport({n: _make_worker(n, SiteSource(v)) for n, v in sources.items()})


SOURCES = {"cleveland": str(heart_site_path("cleveland")), "hungary": str(heart_site_path("hungary"))}


def test_an_unreadable_site_is_left_out_and_named_when_min_sites_allows(tmp_path):
    events = []
    result = run_federation(transport({**SOURCES, "gone": str(tmp_path / "nowhere.csv")}), heart_job(2),
                            progress=lambda e, info: events.append(info.get("name", "")))
    assert sorted(result.ledgers) == ["cleveland", "hungary"]
    [left] = [e for e in events if e.startswith("schema agreement: left out")]
    assert "'gone'" in left and "cannot read its table" in left and "going on with 2 of 3" in left
    assert str(tmp_path) not in left  # the path (the site's) stays in its log


def test_the_control_every_site_required_stops_with_the_sites_own_error(tmp_path):
    with pytest.raises(SourceError, match="site 'gone'"):
        run_federation(transport({**SOURCES, "gone": str(tmp_path / "nowhere.csv")}), heart_job(None))


def test_a_site_whose_table_does_not_conform_is_left_out_under_dp(tmp_path):
    table = pd.read_csv(heart_site_path("switzerland"), dtype=str, keep_default_na=False)
    table.loc[:5, "age"] = "500"
    table.to_csv(tmp_path / "odd.csv", index=False)
    events = []
    result = run_federation(transport({**SOURCES, "odd": str(tmp_path / "odd.csv")}), heart_job(2),
                            progress=lambda e, info: events.append(info.get("name", "")))
    assert sorted(result.ledgers) == ["cleveland", "hungary"]
    [left] = [e for e in events if e.startswith("schema agreement: left out")]
    assert "'odd'" in left and "'age'" in left and "500" not in left


def test_too_many_sites_out_stops_the_run_naming_them(tmp_path):
    sources = {"cleveland": SOURCES["cleveland"], "a": str(tmp_path / "a.csv"), "b": str(tmp_path / "b.csv")}
    with pytest.raises(FederationError) as e:
        run_federation(transport(sources), heart_job(2))
    assert "schema agreement: 2 sites ('a', 'b') cannot go on" in str(e.value)
    assert "1 of 3 site(s) left but 'training.min_sites' is 2" in str(e.value)


class JoinGrid:
    """Two of three SuperNodes ever connect."""

    def __init__(self):
        self.asked = 0

    def get_node_ids(self):
        self.asked += 1
        return [1, 2]

    def send_and_receive(self, msgs, timeout=None):
        from fedtab.federation.flower_app import from_records, to_records

        for m in msgs:
            nid = m.metadata.dst_node_id
            kind, _ = from_records(m.content)
            yield SimpleNamespace(metadata=SimpleNamespace(src_node_id=nid, reply_to_message_id=f"m{id(m)}"),
                                  has_error=lambda: False, content=to_records(kind, {"site": {1: "a", 2: "b"}[nid]}))

    def push_messages(self, msgs):  # a Grid's push/pull form of the same exchange
        self._replies = {r.metadata.reply_to_message_id: r for r in self.send_and_receive(msgs)}
        return [f"m{id(m)}" for m in msgs]

    def pull_messages(self, ids):
        return [self._replies.pop(i) for i in ids if i in self._replies]


@pytest.fixture
def in_server_app(monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity

    for attr in ("_run_id", "_node_id", "_task_id"):  # Flower sets these inside a ServerApp process
        monkeypatch.setattr(TaskIdentity, attr, 1)


def test_the_coordinator_goes_on_without_a_site_that_never_connects(in_server_app):
    from fedtab.federation.flower_app import FlowerTransport

    waits = []
    t = FlowerTransport(JoinGrid(), expected_sites=3, min_sites=2, join_timeout=1.0,
                        on_wait=lambda n, k: waits.append((n, k)))
    assert t.sites == ["a", "b"] and waits == [(2, 3)]  # said once, not once per poll
    # A configured site that never connected (one lost before a --resume) does not answer; the strict
    # request names it.
    assert t.outcomes("ledger", {"c": {}}) == {}
    with pytest.raises(FederationError, match=r"unknown 1 site \('c'\)"):
        t.request("ledger", {"a": {}, "c": {}})


def test_the_control_without_enough_sites_it_stops_and_says_how_to_wait_longer(in_server_app):
    from fedtab.federation.flower_app import FlowerTransport

    with pytest.raises(FederationError, match=r"(?s)only 2 of 3 sites connected in 1 s.*--wait-for-sites"):
        FlowerTransport(JoinGrid(), expected_sites=3, min_sites=3, join_timeout=1.0)


# -- a deployed site's service ---------------------------------------------------------------------

def test_the_site_service_hears_the_end_and_tells_each_request(tmp_path):
    from fedtab.deploy.site_service import SiteService
    from fedtab.federation.flower_app import END

    said, ended = [], []
    worker = _make_worker("cleveland", SiteSource(str(tmp_path / "nowhere.csv")))
    svc = SiteService(worker, tmp_path / "state.fedtab", on_request=said.append, on_end=lambda: ended.append(1))
    job = heart_job(None)
    reply = svc.handle("schema", {"job": job.site_job(), "schema": job.schema.to_dict()})
    assert "__error__" in reply
    assert said[-1].startswith("schema agreement: refused (SourceError")
    assert svc.handle(END, {}) == {"site": "cleveland"} and ended == [1]


def test_a_site_operator_is_told_when_a_failed_sum_opens_the_sites_update():
    from fedtab.deploy.site_service import describe

    assert describe("train", {"round": 0}) == "training round 1"
    assert describe("train", {"round": 1, "show": True}).startswith(
        "training round 2: its secure sum failed its screen; the failure checked here")


def test_stopping_a_flower_process_stops_what_it_started_in_its_own_session(tmp_path):
    """flwr-serverapp was left running after Ctrl-C: Flower starts helpers in sessions of their own,
    which a signal to the parent's process group does not reach."""
    script = ("import subprocess, sys, time\n"
              "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'], start_new_session=True)\n"
              f"open({str(tmp_path / 'child')!r}, 'w').write(str(p.pid))\n"
              "time.sleep(300)\n")
    parents = []
    try:
        for _ in range(2):
            parents.append(subprocess.Popen([sys.executable, "-c", script], start_new_session=True))
            while not (tmp_path / "child").exists():
                time.sleep(0.05)
            time.sleep(0.1)
            parents[-1].child = int((tmp_path / "child").read_text())
            (tmp_path / "child").unlink()
        control, fixed = parents
        processes.stop(control, grace=5)  # the old way: the parent's group only
        processes.stop_tree(fixed, grace=5)
        time.sleep(0.2)
        assert processes._alive(control.child)  # the broken control: its helper outlived it
        assert not processes._alive(fixed.child)
    finally:
        for p in parents:
            processes.stop_tree(p, grace=2)
            if getattr(p, "child", None) and processes._alive(p.child):
                processes._signal(p.child, 9)
