"""A site that dies mid-run still has its ledger in the model file (issue 22: "the model records every
site that contributed").

Four in-process sites; one is killed while sending a releasing reply (a training round for TVAE, the
tree measurement for MST): the site recorded that release on its lasting ledger, but the reply never
reached the coordinator, and the site answers nothing afterwards (not the job's end). The model file,
saved and loaded back, must hold a ledger for all four sites; the dead site's is marked as last seen
and holds exactly what its lasting ledger held when the fatal request arrived (every release that
reached the coordinator). Broken control: without the last-seen ledgers (the old behaviour) the check
fails.
"""

from __future__ import annotations

import pytest

import fedtab
from fedtab.federation import coordinator
from fedtab.federation.transport import InProcessTransport, raise_if_error
from fedtab.privacy.book import LedgerBook
from fedtab.privacy.ledger import PrivacyLedger
from tests.test_hostile_sites import _four_sites
from tests.test_marginal_model import SCHEMA

DEAD = "west"


class _Dies:
    """The in-process transport with Flower's ``request_available``; site ``DEAD`` is killed while it
    sends its reply to the first request ``fatal(kind, body)`` picks, and answers nothing after that."""

    def __init__(self, monkeypatch, ledger_dir, fatal):
        original = InProcessTransport.outcomes
        self.dead = False
        self.before: list[dict] | None = None  # the dead site's lasting ledger when the fatal request arrived

        def outcomes(transport, kind, bodies):
            if self.dead:
                bodies = {s: b for s, b in bodies.items() if s != DEAD}
            elif DEAD in bodies and fatal(kind, bodies[DEAD]):
                self.before = _lasting(ledger_dir)["entries"]
                self.dead = True
                replies = original(transport, kind, bodies)
                return {s: r for s, r in replies.items() if s != DEAD}  # handled, recorded, never arrived
            return original(transport, kind, bodies)

        def request_available(transport, kind, bodies):
            return {s: raise_if_error(s, r) for s, r in transport.outcomes(kind, bodies).items()}

        monkeypatch.setattr(InProcessTransport, "outcomes", outcomes)
        monkeypatch.setattr(InProcessTransport, "request_available", request_available, raising=False)


def _lasting(ledger_dir) -> dict:
    """The dead site's one job, as its lasting ledger (on its disk) holds it."""
    book = LedgerBook(DEAD, ledger_dir / DEAD)
    (key,) = {r["job"] for r in book._records if r["type"] == "job"}
    return book.ledger(key).to_dict()


def _check(model, dies: _Dies, ledger_dir) -> None:
    assert set(model.ledgers_) == set(_four_sites(5))  # every site that contributed, the dead one included
    assert model.ledgers_last_seen_ == (DEAD,)
    recorded = model.ledgers_[DEAD].to_dict()
    assert recorded["entries"] == dies.before  # every release that reached the coordinator, and only those
    assert recorded["epsilon"] == PrivacyLedger.from_dict(_lasting(ledger_dir) | {"entries": dies.before}).to_dict()["epsilon"]
    assert len(_lasting(ledger_dir)["entries"]) > len(recorded["entries"])  # the lost reply's release: site only


def _run(tmp_path, monkeypatch, model: str, fatal, broken: bool, **kw):
    ledger_dir = tmp_path / "ledgers"
    dies = _Dies(monkeypatch, ledger_dir, fatal)
    if broken:  # the old behaviour: the last ledgers seen are dropped
        monkeypatch.setattr(coordinator.LedgerWatch, "_take", lambda self, replies: {
            s: {k: v for k, v in r.items() if k != "job_ledger"} if isinstance(r, dict) else r
            for s, r in replies.items()})
    synth = fedtab.FederatedSynthesizer(model, epsilon=1.0, schema=SCHEMA, seed=0, min_sites=3,
                                        ledger_dir=ledger_dir, **kw).fit(_four_sites(200))
    assert dies.dead and dies.before
    path = synth.save(tmp_path / "model.fedtab")
    with pytest.warns(fedtab.errors.SignatureNotCheckedWarning):
        loaded = fedtab.api.load(path)
    return loaded, dies, ledger_dir


@pytest.mark.parametrize("broken", [False, True], ids=["fixed", "broken-control"])
def test_a_site_killed_in_round_2_of_dpsgd_has_its_last_ledger_in_the_model(tmp_path, monkeypatch, broken):
    loaded, dies, ledger_dir = _run(tmp_path, monkeypatch, "tvae", lambda kind, body: kind == "train"
                                    and int(body["round"]) == 1, broken, rounds=3, batch_size=100)
    assert [sorted(h.epsilon) for h in loaded.history_][1:] == [sorted(set(_four_sites(5)) - {DEAD})] * 2
    if broken:
        assert DEAD not in loaded.ledgers_
        with pytest.raises(AssertionError):
            _check(loaded, dies, ledger_dir)
        return
    _check(loaded, dies, ledger_dir)
    phases = [e["phase"] for e in dies.before]
    assert "training/round 1" in phases and "training/round 2" not in phases


@pytest.mark.parametrize("broken", [False, True], ids=["fixed", "broken-control"])
def test_a_site_killed_in_the_mst_measure_phase_has_its_last_ledger_in_the_model(tmp_path, monkeypatch, broken):
    loaded, dies, ledger_dir = _run(tmp_path, monkeypatch, "mst", lambda kind, body: kind == "measure"
                                    and body.get("phase") == "measure", broken)
    if broken:
        assert DEAD not in loaded.ledgers_
        with pytest.raises(AssertionError):
            _check(loaded, dies, ledger_dir)
        return
    _check(loaded, dies, ledger_dir)
    assert any("select" in e["phase"] for e in dies.before)
