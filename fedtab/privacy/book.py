"""A site's own rules and its lasting ledger: every job it ever served, on its own disk.

A job's :class:`~fedtab.privacy.ledger.PrivacyLedger` caps what that job may spend. A site also
needs a memory across jobs: a coordinator that starts job after job (another seed, another
budget) must not get a fresh budget each time. :class:`LedgerBook` is that memory: an append-only
file of JSON lines (``ledger.jsonl``) holding every job the site admitted and every release it
made, each line written and fsync-ed *before* the release leaves the site, read back after a
restart or a ``kill -9`` (a torn last line, from a kill during the write, is dropped: its release
never left). Without a directory the book lives in memory (one process, e.g. one ``fit``).

:class:`SitePolicy` holds the site's rules; :meth:`LedgerBook.admit` applies them to a job before
the site releases anything for it, and a refusal names the rule it applied:

* ``allow_non_dp`` (default false): a job without DP (exact statistics) is refused;
* ``max_epsilon``: the epsilon one job may spend;
* ``max_total_epsilon``: the epsilon of all jobs together (basic composition: epsilons and deltas
  add up). A job counts with its whole budget from its admission until it ends (its ledger was
  read back), then with what it spent;
* ``max_evaluations`` (default 10): how many synthetic tables of one job the site scores against its
  rows (``fedtab evaluate`` / ``release``: each verdict it sends back is computed from its rows); every
  evaluation is recorded before its reply leaves, so sampling again does not reset the count. The site
  evaluates only the job's final model (its identity recorded when the job ended, ``record_model``),
  draws the table itself, and once a table of the model failed a privacy check it evaluates no other
  table of that model (``record_verdict``);
* ``max_delta`` (default 1e-5): the largest delta a job may use; a job's delta must also stay
  below ``1 / (10 x the site's row count)``, checked against the site's DP row estimate plus two
  noise sds (:meth:`SitePolicy.check_delta_for_rows`) before any release that reaches the coordinator.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedtab.errors import ConfigError, PrivacyBudgetError
from fedtab.privacy.ledger import LEDGER_FORMAT, PrivacyLedger

BOOK_FILE = "ledger.jsonl"
BOOK_FORMAT = "fedtab.site-ledger/1"
DEFAULT_MAX_DELTA = 1e-5
DELTA_ROWS_FACTOR = 10  # delta < 1 / (DELTA_ROWS_FACTOR x rows)
DEFAULT_MAX_EVALUATIONS = 10  # tables of one job a site scores against its rows


POLICY_KEYS = ("max_epsilon", "max_total_epsilon", "max_delta", "allow_non_dp", "max_evaluations", "release_policy",
               "show_updates", "require_secure_aggregation")


@dataclass(frozen=True, kw_only=True)
class SitePolicy:
    """What a site accepts, whatever the coordinator asks (see the module docstring)."""

    max_epsilon: float | None = None
    max_total_epsilon: float | None = None
    max_delta: float = DEFAULT_MAX_DELTA
    allow_non_dp: bool = False
    max_evaluations: int = DEFAULT_MAX_EVALUATIONS
    # The site's own release policy (a TOML file; None: the packaged default): its privacy thresholds
    # are a floor under the coordinator's policy when the site decides its verdicts.
    release_policy: str | None = None
    # Whether the site accepts a job whose securely summed DP-SGD rounds may ask it to show its update
    # after a failed sum (``training.on_failed_sum = "screen_each"``, the default); false: only sums, ever.
    show_updates: bool = True
    # Whether every count and model update the site sends must be masked for secure aggregation (only
    # sums reach the coordinator): a job run without it is refused at admission, and any request for a
    # count or an update in the clear is refused before anything is spent for it.
    require_secure_aggregation: bool = False

    def __post_init__(self):
        problems = []
        for name in ("max_epsilon", "max_total_epsilon"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf):
                problems.append(f"'{name}' must be a number > 0 or None. Got {v!r} instead.")
        d = self.max_delta
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0 < d < 1:
            problems.append(f"'max_delta' must be a number in (0, 1). Got {d!r} instead.")
        for name in ("allow_non_dp", "show_updates", "require_secure_aggregation"):
            if not isinstance(getattr(self, name), bool):
                problems.append(f"'{name}' must be true or false. Got {getattr(self, name)!r} instead.")
        m = self.max_evaluations
        if isinstance(m, bool) or not isinstance(m, int) or m < 0:
            problems.append(f"'max_evaluations' must be a whole number >= 0. Got {m!r} instead.")
        r = self.release_policy
        if r is not None and (not isinstance(r, (str, os.PathLike)) or not str(r)):
            problems.append(f"'release_policy' must be the path of a release policy (TOML) or None. Got {r!r} instead.")
        if problems:
            raise ConfigError("Invalid SitePolicy:\n" + "\n".join(f"  - {p}" for p in problems))

    @staticmethod
    def check_delta_for_rows(site: str, delta: float | None, rows_estimate: float, noise_sd: float) -> None:
        """The delta rule against the site's DP row estimate: delta < 1 / (10 x rows), with rows read
        as the estimate plus two noise sds (a noisy count must not let a large site pass the rule)."""
        if delta is None:
            return
        rows = max(rows_estimate + 2.0 * noise_sd, 1.0)
        cap = 1.0 / (DELTA_ROWS_FACTOR * rows)
        if not delta < cap:
            raise PrivacyBudgetError(
                f"site '{site}' refuses the job (rule max_delta: delta {delta:g} is not below 1 / (10 x the "
                f"site's DP row estimate) = {cap:.3g}; lower 'privacy.delta'). Nothing was released.", public=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SitePolicy":
        return cls(**{k: data[k] for k in POLICY_KEYS if k in data})


def _secure_aggregation_refusal(job: dict[str, Any], policy: SitePolicy) -> str | None:
    """Why the site's rules on secure aggregation refuse ``job`` (its public description), or None:
    ``show_updates`` (and ``require_secure_aggregation``) against a job that may ask the site to show its
    update after a failed secure sum; ``require_secure_aggregation`` against a job run without it or one
    whose coordinator says it sends some counts or updates in the clear (``in_the_clear``)."""
    strict = policy.require_secure_aggregation
    opened = [what for flag, what in (
        ("show_update_on_failed_sum", "its update in the clear, and this job may ask for it after a failed "
                                      "secure sum"),
        ("show_histograms_over_declared_sizes", "its histograms in the clear, and this job may open them where "
                                                "their secure sum counts more rows than the declared site sizes"))
              if job.get(flag)]
    if opened and (strict or not policy.show_updates):
        return (f"rule {'require_secure_aggregation' if strict else 'show_updates'}: it never shows {opened[0]}; "
                "set training.on_failed_sum = \"stop\"")
    if job.get("secure_aggregation") is False and strict:
        return ("rule require_secure_aggregation: it sends counts and updates only masked, and this job runs "
                "without secure aggregation; set privacy.secure_aggregation = true")
    if job.get("in_the_clear") and strict:
        return ("rule require_secure_aggregation: it sends counts and updates only masked, and this job sends "
                f"in the clear {'; '.join(job['in_the_clear'])}")
    return None


def job_key(job: dict[str, Any]) -> str:
    """A job's identity at a site: the SHA-256 of its public description (seed, budget, holdout, ...)."""
    return hashlib.sha256(json.dumps(job, sort_keys=True, default=str).encode("utf-8")).hexdigest()


class LedgerBook:
    """A site's append-only ledger over every job (``directory=None``: in memory only)."""

    def __init__(self, site: str, directory: str | os.PathLike | None = None, *,
                 records: list[dict[str, Any]] | None = None):
        self.site = str(site)
        self.path = None if directory is None else Path(directory) / BOOK_FILE
        self._lock = threading.Lock()
        # ``records``: a list the book appends to in place (a transport's per-site state, for a site
        # without a directory: it then lasts as long as that state).
        self._records: list[dict[str, Any]] = records if records is not None else []
        if self.path is not None:
            self._records[:] = _read_lines(self.path)

    # -- reading ---------------------------------------------------------------------------------
    def _jobs(self) -> dict[str, dict[str, Any]]:
        jobs: dict[str, dict[str, Any]] = {}
        for r in self._records:
            if r["type"] == "job":
                jobs[r["job"]] = {"epsilon": r["epsilon"], "delta": r["delta"], "entries": [], "closed": False}
            elif r["type"] == "spend":
                jobs[r["job"]]["entries"].append(r["entry"])
            elif r["type"] == "close":
                jobs[r["job"]]["closed"] = True
        return jobs

    def admitted(self, key: str) -> bool:
        return key in self._jobs()

    def ledger(self, key: str) -> PrivacyLedger:
        """The job's ledger, rebuilt from the book (raises if the job was never admitted)."""
        job = self._jobs().get(key)
        if job is None:
            raise PrivacyBudgetError(f"site '{self.site}' has not admitted this job; it releases nothing for it "
                                     "(the coordinator must start the job with schema agreement)")
        return _ledger_of(self.site, job)

    def total_epsilon(self) -> float:
        """Epsilon of every job together (basic composition): a job counts with its whole budget until
        it ends, then with what it spent; a non-DP job that released anything counts as infinite."""
        total = 0.0
        for job in self._jobs().values():
            if job["epsilon"] is None:
                total += math.inf if job["entries"] else 0.0
            else:
                total += _ledger_of(self.site, job).epsilon if job["closed"] else float(job["epsilon"])
        return total

    def total_delta(self) -> float:
        return float(sum(j["delta"] for j in self._jobs().values() if j["delta"] is not None))

    # -- rules -----------------------------------------------------------------------------------
    def admit(self, key: str, *, epsilon: float | None, delta: float | None, policy: SitePolicy,
              job: dict[str, Any] | None = None) -> None:
        """Apply ``policy`` to a job (its budget, and the public description ``job`` when given) and record
        it, before anything is released for it. A job already admitted (a resumed coordinator) goes on
        under the rules it was admitted by."""
        with self._lock:
            if self.admitted(key):
                return
            refusal = _secure_aggregation_refusal(job or {}, policy) or self._refusal(epsilon, delta, policy)
            if refusal is not None:
                raise PrivacyBudgetError(f"site '{self.site}' refuses the job ({refusal}). Nothing was released.",
                                         public=True)
            self._append({"type": "job", "job": key, "epsilon": epsilon, "delta": delta if epsilon is not None else None})

    def _refusal(self, epsilon, delta, policy: SitePolicy) -> str | None:
        if epsilon is None:
            if not policy.allow_non_dp:
                return ("rule allow_non_dp: the job asks for no differential privacy (exact statistics) and this "
                        "site does not allow that; give the job an epsilon, or set allow_non_dp = true in the "
                        "site's own configuration")
            return None
        if policy.max_epsilon is not None and epsilon > policy.max_epsilon:
            return (f"rule max_epsilon: the job asks for epsilon {epsilon:g}, this site allows at most "
                    f"{policy.max_epsilon:g} per job; lower 'privacy.epsilon'")
        if delta is None or delta > policy.max_delta:
            return (f"rule max_delta: the job asks for delta {delta:g}, this site allows at most "
                    f"{policy.max_delta:g}; lower 'privacy.delta'")
        if policy.max_total_epsilon is not None:
            spent = self.total_epsilon()
            if spent + epsilon > policy.max_total_epsilon:
                return (f"rule max_total_epsilon: earlier jobs hold epsilon {spent:.4g} of this site's total "
                        f"{policy.max_total_epsilon:g}, so a job of {epsilon:g} does not fit")
        return None

    def evaluations(self, key: str) -> int:
        return sum(1 for r in self._records if r["type"] == "evaluation" and r["job"] == key)

    def model_of(self, key: str) -> dict[str, Any] | None:
        """The final model the site recorded when job ``key`` ended (``{"digest", "sites"}``), or None."""
        found = None
        for r in self._records:
            if r["type"] == "model" and r["job"] == key:
                found = {"digest": r["digest"], "sites": list(r["sites"])}
        return found

    def privacy_refused(self, key: str, digest: str) -> bool:
        """Whether a table of this model already failed a privacy check at this site."""
        return any(r["type"] == "verdict" and r["job"] == key and r["model"] == digest and not r["privacy_passed"]
                   for r in self._records)

    def record_model(self, key: str, digest: str, sites: list[str]) -> None:
        """The job's final model (its identity, ``fedtab.modelfile.model_digest``): the only model file the
        site will evaluate for this job. Recorded once; a second, different final model is refused."""
        with self._lock:
            held = self.model_of(key)
            if held is not None:
                if held["digest"] != digest:
                    raise PrivacyBudgetError(
                        f"site '{self.site}' already recorded the final model of this job; it does not accept "
                        "another one (a job ends once)", public=True)
                return
            self._append({"type": "model", "job": key, "digest": digest, "sites": sorted(sites)})

    def record_evaluation(self, key: str, policy: SitePolicy, *, model: str | None = None,
                          sampling: dict[str, Any] | None = None) -> int:
        """Count one evaluation of job ``key`` against ``policy.max_evaluations`` (refused past it, and
        refused for a model a table of which already failed a privacy check here), recorded before the
        evaluation's reply can leave the site. Returns the evaluation's number (1, 2, ...)."""
        with self._lock:
            done = self.evaluations(key)
            if done >= policy.max_evaluations:
                raise PrivacyBudgetError(
                    f"site '{self.site}' refuses to evaluate (rule max_evaluations: it has scored {done} table(s) of "
                    f"this job, its limit is {policy.max_evaluations}; every evaluation reads its rows). Nothing "
                    "was released.", public=True)
            if model is not None and self.privacy_refused(key, model):
                raise PrivacyBudgetError(
                    f"site '{self.site}' refuses to evaluate: a table of this model already failed a privacy check "
                    "here, and sampling again does not make the model private (the refusal holds for every table "
                    "of it). Train a new model (more noise, fewer rounds). Nothing was released.", public=True)
            record: dict[str, Any] = {"type": "evaluation", "job": key}
            if model is not None:
                record.update(model=model, sampling=dict(sampling or {}))
            self._append(record)
            return done + 1

    def record_verdict(self, key: str, digest: str, *, checks: dict[str, bool], privacy_passed: bool) -> None:
        """What an evaluation sends back: the site's verdict on each check (a bit each), recorded before
        it leaves. A failed privacy check stops every later evaluation of the model (``privacy_refused``)."""
        with self._lock:
            self._append({"type": "verdict", "job": key, "model": digest, "checks": dict(checks),
                          "privacy_passed": bool(privacy_passed)})

    # -- writing ---------------------------------------------------------------------------------
    def record(self, key: str, ledger: PrivacyLedger) -> None:
        """Append the job's entries that the book does not hold yet (call before the release leaves)."""
        with self._lock:
            held = len(self._jobs()[key]["entries"])
            for entry in ledger.to_dict()["entries"][held:]:  # the ledger's own JSON form
                self._append({"type": "spend", "job": key, "entry": entry})

    def close(self, key: str) -> None:
        """The job has ended (its ledger was read back): from now on it counts with what it spent."""
        with self._lock:
            job = self._jobs().get(key)
            if job is not None and not job["closed"]:
                self._append({"type": "close", "job": key})

    def _append(self, record: dict[str, Any]) -> None:
        record = {"format": BOOK_FORMAT, **record}
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            line = json.dumps(record, sort_keys=True, allow_nan=False) + "\n"
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line.encode("utf-8"))
                os.fsync(fd)
            finally:
                os.close(fd)
        self._records.append(record)


def _ledger_of(site: str, job: dict[str, Any]) -> PrivacyLedger:
    return PrivacyLedger.from_dict({"format": LEDGER_FORMAT, "site": site, "epsilon_budget": job["epsilon"],
                                    "delta": job["delta"], "entries": job["entries"]})


def _read_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    raw = path.read_bytes()
    if raw and not raw.endswith(b"\n"):
        # A kill during the last write: that line's release never left the site. Drop the torn tail so
        # the next append starts on a line of its own.
        raw = raw[: raw.rfind(b"\n") + 1]
        with open(path, "r+b") as f:
            f.truncate(len(raw))
            os.fsync(f.fileno())
    out = []
    for i, line in enumerate(raw.decode("utf-8").splitlines(), 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise ConfigError(f"{path}: line {i} is not a ledger record; this site's ledger is damaged. Restore "
                              "it from a backup: without it the site cannot know what it has released.") from None
        if record.get("format") != BOOK_FORMAT:
            raise ConfigError(f"{path}: line {i} is not a {BOOK_FORMAT} record.")
        out.append(record)
    return out
