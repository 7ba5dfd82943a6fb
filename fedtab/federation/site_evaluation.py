"""Evaluation at a site: it draws the table from the model it trained, and only its verdicts leave.

The coordinator sends the model file, the sampling settings (rows, seed, quantile map), the target
and its release policy. The site

1. checks the model file against the identity it recorded when the job ended
   (``fedtab.modelfile.model_digest``: generator, options, encoding, final weights, the sites that
   trained); any other model, or a job it has no record of, is refused: a coordinator cannot have a
   site score a table of its choosing (a probe table would read the site's rows back);
2. counts the evaluation on its lasting ledger (``SitePolicy.max_evaluations``; refused for a model a
   table of which already failed a privacy check here), before anything leaves;
3. draws the table itself and scores it against its training rows and its holdout rows
   (``evaluation.evaluate_site``), and decides every check of the release policy at home
   (``fedtab.release.decide`` over its own figures: privacy thresholds the stricter of the
   coordinator's policy and the site's own, tested figures at family-wise ``family_alpha / sites``
   so that the consortium's false alarms stay within ``family_alpha``);
4. writes every figure into its own report (``report_dir``), records its verdicts, and sends back
   one bit per check (passed or not), whether its checks had the policy's power, and the table's hash
   (a hash of synthetic rows: the coordinator releases only the table the sites judged).

No figure computed from the site's rows leaves it. What the verdicts reveal, and how they are
accounted: docs/evaluation.md, "What leaves a site in evaluation".
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedtab.errors import ConfigError, PrivacyBudgetError

MAX_EVALUATION_ROWS = 1_000_000
# Checks whose failure is evidence about the model's privacy (a table of it leaked): after one, the site
# evaluates no other table of the model. The DP checks read the public ledger; the power check says
# what the site's checks can see, not what the table did.
STICKY_CHECKS = ("exact_copies", "dcr_share_low", "dcr_share", "near_copies", "mia_auc", "singling_out_risk",
                 "linkability_risk", "inference_risk")


def table_sha256(frame: pd.DataFrame) -> str:
    """A hash of a table's values, column names and types (the same on every machine)."""
    h = hashlib.sha256()
    h.update("\0".join(f"{c}:{frame[c].dtype}" for c in frame.columns).encode("utf-8"))
    h.update(np.ascontiguousarray(pd.util.hash_pandas_object(frame, index=False).to_numpy()).tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class VerifiedModel:
    digest: str
    synthesizer: Any  # fedtab.FederatedSynthesizer
    sites: tuple[str, ...]


def verified_model(site: str, body: dict, recorded: dict | None) -> VerifiedModel:
    """The model file of the request, if it is the job's final model as this site recorded it."""
    from fedtab.api import from_bundle
    from fedtab.modelfile import model_identity, read_bundle

    if recorded is None:
        raise PrivacyBudgetError(
            f"site '{site}' has no record of this job's final model: it evaluates only a model it trained, "
            "recorded on its lasting ledger when the job ended. Keep the sites' ledgers ('ledger_dir' in the run "
            "configuration, ledger_dir= in the API) for training and evaluation, or evaluate with the "
            "FederatedSynthesizer that trained (it keeps its sites' books). Nothing was released.", public=True)
    if "model" not in body or "synthetic" in body:
        raise PrivacyBudgetError(
            f"site '{site}' evaluates only tables it draws itself from the job's model; send the model file and "
            "the sampling settings, not a table. Nothing was released.", public=True)
    bundle = read_bundle(np.asarray(body["model"], dtype=np.uint8).tobytes(), source="the coordinator's model file")
    digest = model_identity(bundle)
    if digest != recorded["digest"]:
        raise PrivacyBudgetError(
            f"site '{site}' refuses to evaluate: the model file is not the final model of this job as the site "
            "recorded it (weights, encoding, options or sites differ). Nothing was released.", public=True)
    return VerifiedModel(digest=digest, synthesizer=from_bundle(bundle, source="the coordinator's model file"),
                         sites=tuple(recorded["sites"]))


def check_sampling(site: str, sampling: Any) -> dict[str, Any]:
    """The sampling settings, checked: ``n`` rows (2 .. MAX_EVALUATION_ROWS), ``seed`` >= 0, ``quantile_map``."""
    if not isinstance(sampling, dict):
        raise ConfigError(f"site '{site}': the evaluation request lacks its sampling settings (n, seed, "
                          "quantile_map)", public=True)
    n, seed, qm = sampling.get("n"), sampling.get("seed"), sampling.get("quantile_map", False)
    problems = []
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 2 <= n <= MAX_EVALUATION_ROWS:
        problems.append(f"'n' must be a whole number in [2, {MAX_EVALUATION_ROWS}], got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        problems.append(f"'seed' must be a whole number >= 0, got {seed!r}")
    if not isinstance(qm, bool):
        problems.append(f"'quantile_map' must be true or false, got {qm!r}")
    if problems:
        raise ConfigError(f"site '{site}': invalid sampling settings: " + "; ".join(problems), public=True)
    return {"n": int(n), "seed": int(seed), "quantile_map": bool(qm)}


def site_release_policy(coordinator: Any, own: str | None, *, n_sites: int):
    """The policy a site decides by: the coordinator's, with every privacy threshold the stricter of it
    and the site's own (``own``: a TOML path; None: the packaged default), and ``family_alpha`` split
    evenly over the ``n_sites`` sites that trained (Bonferroni across sites, Holm within one)."""
    import dataclasses

    from fedtab.release import ReleasePolicy

    try:
        theirs = ReleasePolicy() if coordinator is None else ReleasePolicy.from_dict(coordinator,
                                                                                   source="the coordinator's policy")
    except ConfigError as e:  # the coordinator's own input: it may read why
        raise ConfigError(str(e), public=True) from None
    policy = theirs.stricter(ReleasePolicy.load(own))
    return dataclasses.replace(policy, family_alpha=policy.family_alpha / max(1, int(n_sites)))


@dataclass(frozen=True)
class SiteOutcome:
    """One evaluation at one site: its figures and verdict (kept at the site) and the reply (sent)."""

    site: str
    evaluation: Any  # evaluation.aggregate.Evaluation of this one site (every figure)
    verdict: Any  # fedtab.release.Verdict, with values (the site's own)
    policy: Any
    table_sha256: str

    @property
    def checks(self) -> dict[str, bool]:
        return {c.name: bool(c.passed) for c in self.verdict.checks}

    @property
    def privacy_passed(self) -> bool:
        return all(passed for name, passed in self.checks.items() if name in STICKY_CHECKS)

    @property
    def powered(self) -> bool:
        power = (self.verdict.tests or {}).get("power", {}).get(self.site) or {}
        return bool(power.get("powered", False))

    def reply(self, *, number: int, of: int) -> dict:
        """What leaves the site: a bit per check, whether its checks had the policy's power, the hash of
        the synthetic table it drew, and which evaluation of the job this was."""
        return {"checks": self.checks, "passed": bool(self.verdict.released), "powered": self.powered,
                "table_sha256": self.table_sha256, "evaluation": int(number), "max_evaluations": int(of)}

    def write_local_report(self, directory, *, stem: str, ledger: dict) -> dict[str, Path]:
        """The site's own report (HTML + JSON, every figure against its rows): for its operator only."""
        from evaluation.report import write_json, write_report

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        led = {self.site: ledger}
        return {"report": write_report(self.evaluation, d / f"{stem}.html", ledger=led, verdict=self.verdict),
                "figures": write_json(self.evaluation, d / f"{stem}.json", ledger=led, verdict=self.verdict)}


def evaluate_model(site: str, model: VerifiedModel, sampling: dict[str, Any], *, train: pd.DataFrame,
                   holdout: pd.DataFrame, target: str | None, coordinator_policy: Any, own_policy: str | None,
                   ledger, seed: int) -> SiteOutcome:
    """Draw the table from ``model``, score it against this site's rows, decide every check at home."""
    from evaluation import combine, evaluate_site
    from fedtab.release import decide

    synth = model.synthesizer
    if target is not None and (not isinstance(target, str) or target not in synth.schema_):
        raise ConfigError(f"site '{site}': the target {target!r} is not a column of the model's schema",
                          public=True)
    table = synth.sample_typed(sampling["n"], seed=sampling["seed"], quantile_map=sampling["quantile_map"])
    result = evaluate_site(train, holdout, table, synth.schema_, target=target, seed=seed,
                           site_column=synth.site_column, site=site)
    evaluation = combine({site: result}, {site: result.n_train})
    policy = site_release_policy(coordinator_policy, own_policy, n_sites=len(model.sites))
    eps = float(ledger.epsilon) if ledger.is_dp else math.inf
    verdict = decide(policy, evaluation, {site: eps})
    return SiteOutcome(site=site, evaluation=evaluation, verdict=verdict, policy=policy,
                       table_sha256=table_sha256(table))
