"""The deployment's logic without Flower processes: the site service's persistent, replay-safe state,
checkpoint + resume after a coordinator kill, dropouts under ``training.min_sites``, FlowerTransport's
tolerance of missing replies, the site.toml / consortium readers and the local IPC frames."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from fedtab.api import FederatedSynthesizer, _make_worker
from fedtab.config import SiteSource
from fedtab.datasets import heart_schema, heart_site_path
from fedtab.deploy import ipc
from fedtab.deploy.checkpoint import load_checkpoint, save_checkpoint
from fedtab.deploy.consortium import load_consortium
from fedtab.deploy.site_service import SiteService
from fedtab.deploy.siteconf import load_site_config
from fedtab.errors import ConfigError, FederationError
from fedtab.federation.coordinator import run_federation
from fedtab.federation.transport import raise_if_error
from fedtab.privacy.book import LedgerBook, job_key
from fedtab.privacy.secret import _replace_source_for_tests, seeded_sources_for_tests
from fedtab.federation.wire import pack, unpack

SITES = ("cleveland", "hungary", "switzerland")
ROUNDS = 3


class ServiceTransport:
    """Sites behind SiteService (as in a deployment), in this process; ``drop`` loses replies."""

    def __init__(self, services: dict[str, SiteService], drop=lambda kind, body, site: False):
        self.services, self.drop = services, drop

    @property
    def sites(self):
        return list(self.services)

    def request(self, kind, bodies):
        out = self.request_available(kind, bodies)
        assert set(out) == set(bodies)
        return out

    def request_available(self, kind, bodies):
        out = {}
        for site, body in bodies.items():
            reply = self.services[site].handle(kind, unpack(pack(body)))
            if not self.drop(kind, body, site):
                out[site] = raise_if_error(site, unpack(pack(reply)))
        return out

    def close(self):
        pass


def services(state_dir: Path) -> dict[str, SiteService]:
    """Each site as `fedtab site` runs it: its state file and its lasting ledger on its own disk."""
    return {s: SiteService(_make_worker(s, SiteSource(str(heart_site_path(s))), book=LedgerBook(s, state_dir / s)),
                           state_dir / f"{s}.fedtab")
            for s in SITES}


def book_rounds(state_dir: Path, site: str, job) -> list[str]:
    """The training rounds in a site's lasting ledger for ``job`` (read back from its disk)."""
    ledger = LedgerBook(site, state_dir / site).ledger(job_key(job.site_job()))
    return [e.phase for e in ledger.entries if e.phase.startswith("training/")]


# The resume tests compare bit for bit with an uninterrupted run: both draw their DP randomness from
# the test-only seeded seam (in production it is secret and no two runs share it).
SEEDED = seeded_sources_for_tests(0)


@pytest.fixture(scope="module")
def synth():
    return FederatedSynthesizer("ctgan", epsilon=1.0, rounds=ROUNDS, seed=0, schema=heart_schema())


@pytest.fixture(scope="module")
def reference(synth):
    """The uninterrupted in-process run."""
    with _replace_source_for_tests(SEEDED):
        return FederatedSynthesizer("ctgan", epsilon=1.0, rounds=ROUNDS, seed=0, schema=heart_schema()).fit(
            {s: str(heart_site_path(s)) for s in SITES})


def training_rounds(ledger: dict) -> list[str]:
    return [e["phase"] for e in ledger["entries"] if e["phase"].startswith("training/")]


def test_resume_after_a_coordinator_kill_gives_the_same_model_and_spends_no_round_twice(tmp_path, synth, reference):
    job = synth._job()
    ckpt = tmp_path / "checkpoint.fedtab"

    class Killed(Exception):
        pass

    def kill_after_round_2_training(state):
        save_checkpoint(ckpt, state, job)
        if state.rounds_done == 2:
            raise Killed  # as if kill -9 hit after the checkpoint of round 2 ...

    with pytest.raises(Killed), _replace_source_for_tests(SEEDED):
        run_federation(ServiceTransport(services(tmp_path)), job, on_round=kill_after_round_2_training)
    # ... and round 3 had already been trained at one site before the kill: a resumed coordinator
    # re-sends it; that site must replay its recorded update, not train (and spend) again.
    resumed_from = load_checkpoint(ckpt, job)
    assert resumed_from.rounds_done == 2
    with _replace_source_for_tests(SEEDED):
        early = services(tmp_path)["hungary"]
        early.handle("train", {"round": 2, "weights": resumed_from.weights})
        # Every site restarts too: a fresh service reads its ledger back from its state file and book.
        result = run_federation(ServiceTransport(services(tmp_path)), job, resume=resumed_from)
    for name, w in reference.weights_.items():
        assert np.array_equal(result.weights[name], w), name
    for s in SITES:
        assert training_rounds(result.ledgers[s]) == [f"training/round {r}" for r in range(1, ROUNDS + 1)]
        assert result.ledgers[s]["epsilon"] == pytest.approx(reference.ledgers_[s].epsilon)
    assert [h.round for h in result.history] == [1, 2, 3]


def test_resume_refuses_a_checkpoint_of_another_configuration(tmp_path, synth, reference):
    job = synth._job()
    state = None

    def keep(s):
        nonlocal state
        state = s

    run_federation(ServiceTransport(services(tmp_path)), replace(job, training=replace(job.training, rounds=1)),
                   on_round=keep)
    save_checkpoint(tmp_path / "c.fedtab", state, job)
    with pytest.raises(FederationError, match="another configuration"):
        load_checkpoint(tmp_path / "c.fedtab", replace(job, seed=1))
    assert load_checkpoint(tmp_path / "absent.fedtab", job) is None


def test_a_site_refuses_to_train_a_recorded_round_on_another_model(tmp_path, synth):
    svc = services(tmp_path)
    job = synth._job()
    state = {}
    run_federation(ServiceTransport(svc), replace(job, training=replace(job.training, rounds=1)),
                   on_round=lambda s: state.update(s=s))
    other = {k: v + 1 if np.issubdtype(v.dtype, np.floating) else v for k, v in state["s"].weights.items()}
    reply = svc["cleveland"].handle("train", {"round": 0, "weights": other})
    assert "already trained round 1" in reply["__error__"]["message"]
    assert book_rounds(tmp_path, "cleveland", job) == ["training/round 1"]


def test_a_failed_sums_key_request_passes_the_site_services_round_guard(tmp_path, synth, monkeypatch):
    """Found by the real-process test (tests/test_deploy_integrity_e2e.py): after a failed secure sum the
    coordinator asks each site for its mask key of that round, a training request that trains nothing; the
    site service took it for a second training of a recorded round and refused it, so a deployment stopped
    where the in-process run named the hostile site. Here switzerland masks its update x100: it is named
    and left out, and no site spends a round twice."""
    from fedtab.federation import secure_updates

    masked_reply = secure_updates.masked_reply

    def hostile(site, body, reply, state, session):
        if site == "switzerland":
            glob = body["weights"]
            reply = {**reply, "weights": {k: glob[k] + 100.0 * (v - glob[k]) if np.issubdtype(v.dtype, np.floating)
                                          else v for k, v in reply["weights"].items()}}
        return masked_reply(site, body, reply, state, session)

    monkeypatch.setattr(secure_updates, "masked_reply", hostile)
    job = replace(synth._job(), training=replace(synth._job().training, rounds=2, min_sites=2))
    events: list[str] = []
    result = run_federation(ServiceTransport(services(tmp_path)), job,
                            progress=lambda e, info: events.append(info.get("name", "")))
    assert any(e.startswith("round 1: left out 1 site ('switzerland')") for e in events), events
    assert [sorted(r.epsilon) for r in result.history] == [["cleveland", "hungary"]] * 2
    assert book_rounds(tmp_path, "cleveland", job) == ["training/round 1", "training/round 2"]
    assert book_rounds(tmp_path, "switzerland", job) == ["training/round 1"]


def test_a_site_lost_mid_training_leaves_the_others_going_and_its_ledger_exact(tmp_path, synth, reference):
    job = replace(synth._job(), training=replace(synth._job().training, min_sites=2))

    def lose_switzerland_from_round_2(kind, body, site):
        return site == "switzerland" and kind == "train" and body["round"] >= 1

    svc = services(tmp_path)
    result = run_federation(ServiceTransport(svc, lose_switzerland_from_round_2), job)
    assert [sorted(h.epsilon) for h in result.history] == [list(SITES), ["cleveland", "hungary"],
                                                           ["cleveland", "hungary"]]
    # The model records every site that contributed: switzerland's encoding statistics and round 1 are in it.
    assert sorted(result.ledgers) == sorted(SITES)
    # switzerland's own ledger (on its disk) holds round 1 and the round 2 whose reply was lost in
    # transit (it was spent: the update left the site), and nothing after it was dropped.
    assert book_rounds(tmp_path, "switzerland", job) == ["training/round 1", "training/round 2"]
    assert not all(np.array_equal(result.weights[k], v) for k, v in reference.weights_.items())

    strict = replace(job, training=replace(job.training, min_sites=3))
    with pytest.raises(FederationError, match="only 2 site\\(s\\) answered.*min_sites' is 3"):
        run_federation(ServiceTransport(services(tmp_path / "b"), lose_switzerland_from_round_2), strict)


def test_the_same_job_again_continues_it_and_a_new_job_adds_up_in_the_same_book(tmp_path, synth):
    svc = services(tmp_path)["cleveland"]
    job = synth._job()
    body = {"job": job.site_job(), "schema": heart_schema().to_dict()}
    assert svc.handle("schema", body) == {"columns": []}
    svc.handle("schema", body)  # the same job again (a restarted coordinator): admitted once
    book = LedgerBook("cleveland", tmp_path / "cleveland")
    assert [r["type"] for r in book._records] == ["job"]
    svc.handle("schema", {**body, "job": {**job.site_job(), "seed": 7}})  # another job: the same book
    again = LedgerBook("cleveland", tmp_path / "cleveland")
    assert [r["type"] for r in again._records] == ["job", "job"]
    assert again.total_epsilon() == pytest.approx(2.0)  # both jobs hold their budget until they end


class FakeGrid:
    """Just enough of Flower's Grid: all say hello; then node 1 answers, node 2's site service is down,
    node 3 never answers (timed out)."""

    def get_node_ids(self):
        return [1, 2, 3]

    def send_and_receive(self, msgs, timeout=None):
        from fedtab.federation.flower_app import from_records, to_records

        names = {1: "a", 2: "b", 3: "c"}
        for m in msgs:
            nid = m.metadata.dst_node_id
            kind, _ = from_records(m.content)
            if kind == "hello":
                body = {"site": names[nid]}
            elif nid == 1:
                body = {"ok": np.arange(3)}
            elif nid == 2:
                body = {"__error__": {"class": "FederationError", "message": "service down", "unavailable": True}}
            else:
                continue
            yield SimpleNamespace(metadata=SimpleNamespace(src_node_id=nid, reply_to_message_id=f"m{id(m)}"),
                                  has_error=lambda: False, content=to_records(kind, body))

    def push_messages(self, msgs):  # what FlowerTransport uses: push, then pull the replies by message id
        self._replies = {r.metadata.reply_to_message_id: r for r in self.send_and_receive(msgs)}
        return [f"m{id(m)}" for m in msgs]

    def pull_messages(self, ids):
        return [self._replies.pop(i) for i in ids if i in self._replies]


def test_flower_transport_averages_over_the_sites_that_answered(monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity

    from fedtab.federation.flower_app import FlowerTransport

    for attr in ("_run_id", "_node_id", "_task_id"):  # Flower sets these inside a ServerApp process
        monkeypatch.setattr(TaskIdentity, attr, 1)

    t = FlowerTransport(FakeGrid(), expected_sites=1, timeout=0.5)  # node 3 never answers
    assert t.sites == ["a", "b", "c"]
    out = t.request_available("train", {"a": {}, "b": {}, "c": {}})
    assert list(out) == ["a"] and np.array_equal(out["a"]["ok"], np.arange(3))
    with pytest.raises(FederationError, match=r"no reply from 1 site \('c'\)"):
        t.request("train", {"a": {}, "c": {}})  # the strict request (every phase but training) fails
    with pytest.raises(FederationError, match="site 'b': service down"):
        t.request("train", {"a": {}, "b": {}})


def test_site_config_reports_every_problem_and_resolves_paths(tmp_path):
    p = tmp_path / "site.toml"
    p.write_text('name = "a"\nsource = "a.csv"\nsuperlink = "127.0.0.1:9093"\n[tls]\nroot_certificates = "ca.pem"\n'
                 '[auth]\nprivate_key = "keys/a"\n')
    cfg = load_site_config(p)
    assert cfg.source == str(tmp_path / "a.csv") and cfg.root_certificates == tmp_path / "ca.pem"
    assert cfg.private_key == tmp_path / "keys/a" and cfg.state_dir == tmp_path / "fedtab-site-a"
    p.write_text('name = "a"\nmax_epsilon = -1\nbogus = 1\n')
    with pytest.raises(ConfigError) as ei:
        load_site_config(p)
    msg = str(ei.value)
    for part in ("unknown key 'bogus'", "'source' must be", "'superlink' must be", "'max_epsilon'",
                 "root_certificates"):
        assert part in msg


def test_consortium_sites_need_no_source_and_may_name_public_keys(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[training]\nmin_sites = 2\n[sites.a]\npublic_key = "keys/a.pub"\n[sites.b]\n')
    cfg, keys = load_consortium(p)
    assert sorted(cfg.sites) == ["a", "b"] and keys == {"a": tmp_path / "keys/a.pub"}
    assert cfg.training.min_sites == 2


def test_ipc_frames_round_trip_arrays_and_refuse_object_arrays():
    body = {"w": {"x": np.arange(6, dtype=np.float32).reshape(2, 3)}, "n": 3, "eps": float("inf")}
    kind, out = ipc.decode_frame(ipc.encode_frame("train", body)[8:])
    assert kind == "train" and out["n"] == 3 and out["eps"] == float("inf")
    assert np.array_equal(out["w"]["x"], body["w"]["x"]) and out["w"]["x"].dtype == np.float32
    with pytest.raises(FederationError, match="not running"):
        ipc.call_site("/nonexistent/site.sock", "hello", {})


def test_consortium_refuses_more_min_sites_than_sites(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[training]\nmin_sites = 3\n[sites.a]\n[sites.b]\n')
    with pytest.raises(ConfigError, match="'training.min_sites' is 3 but only 2"):
        load_consortium(p)


def test_cli_coordinator_and_site_report_configuration_errors_with_exit_codes(cli, tmp_path):
    (tmp_path / "c.toml").write_text('[sites.a]\n[sites.b]\n')
    result = cli("coordinator", tmp_path / "c.toml", "-o", tmp_path / "m.fedtab")
    assert result.exit_code == ConfigError.exit_code and "--insecure" in result.output
    result = cli("coordinator", tmp_path / "c.toml", "-o", tmp_path / "m.fedtab", "--ssl-certfile", "x.pem")
    assert result.exit_code == ConfigError.exit_code and "all three" in result.output
    (tmp_path / "s.toml").write_text('name = "a"\n')
    result = cli("site", "--config", tmp_path / "s.toml")
    assert result.exit_code == ConfigError.exit_code and "'source' must be" in result.output
    assert not (tmp_path / ".m.fedtab.run").exists()  # nothing started


def test_cli_trial_keys_makes_a_ca_signed_certificate_and_node_keys(cli, tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key

    result = cli("trial-keys", tmp_path / "keys", "--site", "a", "--site", "b")
    assert result.exit_code == 0, result.output
    ca = x509.load_pem_x509_certificate((tmp_path / "keys/ca.pem").read_bytes())
    cert = x509.load_pem_x509_certificate((tmp_path / "keys/server.pem").read_bytes())
    cert.verify_directly_issued_by(ca)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "127.0.0.1" in [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)]
    load_ssh_private_key((tmp_path / "keys/a").read_bytes(), password=None)
    assert (tmp_path / "keys/b.pub").read_text().startswith("ecdsa-sha2-nistp384 ")
    assert oct((tmp_path / "keys/a").stat().st_mode & 0o777) == "0o600"


def test_a_restarted_coordinator_gets_the_marginal_models_measurements_replayed(tmp_path):
    """The marginal model's measurements behind the site service: a coordinator killed before the job
    ended starts it again and gets the very replies each site released; no site spends twice."""
    job = replace(FederatedSynthesizer("mst", epsilon=1.0, seed=0, schema=heart_schema(),
                                       model_options={"iters": 50})._job(), job_id="restart-test")

    class Killed(ServiceTransport):
        def request_available(self, kind, bodies):
            if kind == "ledger":
                raise KeyboardInterrupt("the coordinator is killed before the job ends")
            return super().request_available(kind, bodies)

    with pytest.raises(KeyboardInterrupt):
        run_federation(Killed(services(tmp_path)), job)
    result = run_federation(ServiceTransport(services(tmp_path)), job)  # fresh services read the same state
    assert set(result.ledgers) == set(SITES) and result.weights
    for s in SITES:
        spent = [e.phase for e in LedgerBook(s, tmp_path / s).ledger(job_key(job.site_job())).entries
                 if e.phase.startswith("marginals/")]
        assert spent == ["marginals/one-way", "marginals/select", "marginals/measure"], s
