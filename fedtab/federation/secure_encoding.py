"""Secure aggregation of the encoding's one-way histograms: the coordinator reads their sum, never a site's.

With secure aggregation on (``marginals.uses_secure_aggregation``: two sites or more), for the marginal
model (the default: ``models.registry.is_measured``) and for the DP-SGD models whose updates are summed
securely (``secure_updates``: ``training.aggregation = "mean"``), without a site column
(``summed_histograms``):

- the ``histogram`` phase: each site computes its release as before, with its full noise, and masks its
  counts (every column's cells and missing count, the rounding profiles) in one request of the job's
  secure-aggregation rounds (``fedtab.federation.secagg``); the layout (edges, bounds, categories) is a
  copy of the public request and goes in the clear. The coordinator unmasks the sum over the sites whose
  masked release arrived and merges it as the release of that many sites (``KEY_N_SITES``: the sum carries
  each one's noise, sqrt(k) times one release's, as without secure aggregation).
- the garbage screen (``fedtab.federation.screening``) compares a site's release with the other sites';
  the coordinator no longer can. It proves the sum to each site in it (``SCREEN``: every survivor's
  masked vector and self-mask seed, checked against the commitments each site encrypted to the others when
  it masked, ``secagg.entry_proof``); each site computes the sum itself, reads the others' counts as the
  sum less its own release and runs ``screening.verdict`` on its own release. An
  honest site answers one bit. A site that finds its table random values says so and sends its release
  (the one it masked: a DP release on its ledger already); the coordinator runs the verdict again on it,
  leaves the site out (``agreement.leave_out``, ``training.min_sites``) and takes its release off the sum.
  A site screens once per job, with the plan of its own release: a coordinator asking again would learn
  a bit of its release each time. A coordinator cannot make up the sum (or the number of sites in it,
  which the site takes from its own unmasking) to make a small site, whose noisy histograms cannot be
  told from uniform, name itself and send its release. A site's own code can lie about its verdict and
  its release, as it can about anything it sends.
- why full noise and not the measurements' distributed noise: the site's own row estimate (its training
  plan, the weight of a masked update) and its verdict are post-processing of its own release only when
  that release carries the noise its ledger records.

The coordinator then knows the consortium's row count, not each site's: each site's weight is an equal
share of it (``TrainingState.site_rows_known`` False; the model file says so). The marginal model's row
check reads a sum only when its sites are the encoding's, and its pair selection discounts chance scores
for equal sites; the DP-SGD models train to one public plan for that equal share
(``training.site_training_plan``) and a round is the survivors' summed update over their summed own
weights (``secure_updates``). A site whose code inflates its histograms as well as what follows reads as
a larger site, as without secure aggregation.

- the ``domain`` phase under DP (columns declared without bounds: ``summed_domain``): a numerical
  column's release is a count vector on a public magnitude grid, so it is masked and summed the same way,
  at each site's full noise, and merged as the release of the sites in the sum. Not summed: a categorical
  column declared without categories (its release is the set of values a site holds, a DP set union: no
  sum of it names the values; with one, the whole domain phase stays per site), and a job with a site
  column (each site's own marginals are its purpose).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedtab.errors import FederationError

SUMMED = "secure sum"  # the one release the coordinator merges in place of the sites'
SCREEN = "garbage screen"  # the encoding request in which each site screens its own release
OPEN = "open over declared sizes"  # the request for a site's mask key of a sum over the declared sizes
WIRE = ("masked", "b_shares", "keys", "shapes", "sigma", "commits")  # a masked reply's own fields


def summed_histograms(job, *, updates: bool) -> bool:
    """Whether, under secure aggregation, the encoding's histogram phase is summed securely too: for the
    marginal model, and for a DP-SGD model whose updates are (``updates``), without a site column."""
    from fedtab.models.registry import is_measured

    return job.site_column is None and (is_measured(job.model) or updates)


def summed_domain(plan, *, histograms: bool) -> bool:
    """Whether the ``domain`` phase is summed securely too: where the histograms are (``histograms``),
    under DP, and every column it asks about is numerical (magnitude counts on a public grid)."""
    columns = plan.domain_columns()
    return bool(histograms and plan.dp is not None and columns
                and all(c.type in ("numerical", "datetime") for c in columns))


def domain_note(plan) -> str:
    """What the coordinator says where the histograms are summed but the domain phase is not."""
    names = [c.name for c in plan.threshold_columns()]
    return (f"secure aggregation: the domain phase stays per site (a DP set union of the values each site holds, "
            f"which no sum carries) for column(s) declared without categories: {', '.join(repr(n) for n in names)}; "
            "declare their categories to keep the coordinator's view to sums")


def count_keys(release: dict[str, Any]) -> list[str]:
    """The keys of a histogram release that hold counts (summed), in a fixed order; the rest is layout."""
    from fedtab.transform.plan import F_COUNTS, F_MISSING, F_ROUNDING

    return sorted(k for k in release if k.rsplit("/", 1)[-1] in (F_COUNTS, F_MISSING, F_ROUNDING) and "/" in k)


# -- at a site ----------------------------------------------------------------------------------------
def masked(site: str, reply: dict[str, Any], keys: list[str], session, secure: dict, *,
           commit: bool = False) -> dict[str, Any]:
    """``reply`` with its values under ``keys`` masked for the request ``secure`` names, the rest in the
    clear (the encoding's masked replies: the histograms' counts, every two-way table). ``commit``: with
    the site's commitments to its masked vector (``secagg.SiteSession.mask``), so that the sum can be
    proven to it (the histograms' screen)."""
    values = [np.asarray(reply[k], dtype=np.float64) for k in keys]
    masked_values, b_shares = session.mask(values, me=site, request=secure["request"],
                                           sites=secure.get("sites") or [], job=str(secure.get("job", "")),
                                           commit=commit)
    commits = {"commits": session.commit_boxes.pop(secure["request"])} if commit else {}
    return {**{k: v for k, v in reply.items() if k not in keys}, "masked": masked_values, "b_shares": b_shares,
            "keys": list(keys), "shapes": [list(np.shape(v)) for v in values], "sigma": 0.0, **commits}


def masked_release(site: str, reply: dict[str, Any], state: dict, session, secure: dict, *,
                   plan: dict[str, Any]) -> dict[str, Any]:
    """The site's histogram reply with its counts masked; the release itself and the plan it was made
    for are kept in the site's state for its screen (``screen_reply``)."""
    state["histogram_release"] = {"release": reply, "plan": plan, "request": int(secure["request"])}
    state.pop("screened", None)
    return masked(site, reply, count_keys(reply), session, secure, commit=True)


def masked_domain(site: str, reply: dict[str, Any], session, secure: dict) -> dict[str, Any]:
    """The site's domain reply with its magnitude counts masked; refused where it holds a categorical
    column's values (a set of values, which no sum can carry)."""
    from fedtab.transform.plan import F_KEYS

    if any(k.rsplit("/", 1)[-1] == F_KEYS for k in reply):
        raise FederationError(f"site '{site}': a secure sum of the domain phase was asked for a column declared "
                              "without categories (its release is a set of values, not counts)", public=True)
    return masked(site, reply, count_keys(reply), session, secure)


def screen_reply(site: str, body: dict[str, Any], state: dict, session) -> dict[str, Any]:
    """The site's verdict on its own histogram release against the others' (the sum less its own). The
    sum is the one the site computes from the coordinator's proof (``secagg.SiteSession.proven_entries``:
    every survivor's masked vector, self-mask seed and the dropped sites' keys, each checked against what
    it committed to), over the survivors it unmasked with: a coordinator cannot make up the sum, or the
    number of sites in it, to make a real site's release read as random values and leave."""
    from fedtab.federation import screening
    from fedtab.federation.encoding import plan_from_dict
    from fedtab.transform.plan import F_COUNTS, wire_key

    kept = state.get("histogram_release")
    if kept is None:
        raise FederationError(f"site '{site}' masked no histogram release in this job: nothing to screen",
                              public=True)
    if state.get("screened"):
        raise FederationError(f"site '{site}' screened its release for this job already: a second screen is "
                              "refused (each answer tells a bit of its release)", public=True)
    own = kept["release"]
    keys = count_keys(own)
    total = _proven_sum(site, body, kept, session)
    state["screened"] = True
    n_sites = len(session.survivors(kept["request"]))
    if n_sites < screening.MIN_SITES:
        return {"garbage": False}
    plan = plan_from_dict(kept["plan"])  # its own release's plan, not one the screen request names
    pooled = {spec.name: np.asarray(total[wire_key(spec.name, F_COUNTS)], dtype=np.float64)
              - np.asarray(own[wire_key(spec.name, F_COUNTS)], dtype=np.float64) for spec in plan.columns}
    if screening.verdict(plan, own, pooled, n_others=n_sites - 1) is None:
        return {"garbage": False}
    return {"garbage": True, "release": {k: own[k] for k in keys}}


def _proven_sum(site: str, body: dict[str, Any], kept: dict[str, Any], session) -> dict[str, np.ndarray]:
    """The summed counts of the site's histogram request, as the site computes them from the coordinator's
    proof (``secagg.SiteSession.proven_entries``), by the keys and shapes of its own release."""
    own = kept["release"]
    keys = count_keys(own)
    sizes = [int(np.size(own[k])) for k in keys]
    proven = session.proven_entries(site, kept["request"], range(sum(sizes)), body.get("proof") or {})
    flat = np.array([proven[i] for i in range(sum(sizes))], dtype=np.float64)
    total, start = {}, 0
    for k, n in zip(keys, sizes):
        total[k] = flat[start:start + n].reshape(np.shape(own[k]))
        start += n
    return total


def open_reply(site: str, body: dict[str, Any], state: dict, session) -> dict[str, Any]:
    """The site's mask key of its histogram request, for a coordinator whose secure sum of the histograms
    counts more rows than the consortium declares (``training.on_failed_sum = "screen_each"``, with the
    declarations public in the job the site accepted). Only where that job says so, and only once the site
    has computed the sum from the coordinator's proof and found it over the declarations itself
    (``screening.summed_oversize`` over the survivors it unmasked with): the coordinator then opens each
    site's histograms (each a DP release at the site's full noise, on its ledger: nothing is spent) to name
    the site over its own declaration."""
    from fedtab.federation import screening
    from fedtab.federation.encoding import plan_from_dict
    from fedtab.transform.plan import KEY_N_SITES

    job = state.get("job") or {}
    kept = state.get("histogram_release")
    if not job.get("show_histograms_over_declared_sizes") or kept is None:
        raise FederationError(f"site '{site}' refuses to reveal its histograms' mask key: the job it accepted does "
                              "not open a sum over the declared site sizes (training.on_failed_sum)", public=True)
    total = _proven_sum(site, body, kept, session)
    survivors = session.survivors(kept["request"])
    caps = {str(k): int(v) for k, v in (job.get("rows_at_most") or {}).items()}
    release = {**kept["release"], **total, KEY_N_SITES: len(survivors)}
    if screening.summed_oversize(plan_from_dict(kept["plan"]), release, caps, survivors) is None:
        raise FederationError(f"site '{site}' refuses to reveal its histograms' mask key: the sum it computes from "
                              "the coordinator's proof is within the declared site sizes", public=True)
    return {"mask_key": session.reveal(site, kept["request"])}


# -- at the coordinator --------------------------------------------------------------------------------
def summed_release(total: list[np.ndarray], replies: dict[str, dict[str, Any]], *,
                   full_noise: bool = True) -> dict[str, Any]:
    """The sum of the sites' masked encoding releases (``masked``) as one release: with ``full_noise``
    (the histograms: each site's full noise) of ``len(replies)`` sites, else of one (the two-way tables,
    whose noise shares add up to one release's)."""
    from fedtab.transform.plan import F_MISSING, KEY_N_SITES

    keys = {tuple(r["keys"]) for r in replies.values()}
    if len(keys) != 1:
        raise FederationError("secure aggregation: the sites masked different releases")
    layouts = [{k: v for k, v in r.items() if k not in WIRE} for r in replies.values()]
    first = layouts[0]
    if any(set(x) != set(first) or any(not np.array_equal(np.asarray(x[k], dtype=object), np.asarray(first[k], dtype=object))
                                       for k in first) for x in layouts[1:]):
        raise FederationError("secure aggregation: the sites sent different layouts beside their masked releases")
    counts = {k: (float(np.asarray(t).reshape(-1)[0]) if k.endswith("/" + F_MISSING) else np.asarray(t, dtype=np.float64))
              for k, t in zip(next(iter(keys)), total)}
    return {**first, **counts, **({KEY_N_SITES: len(replies)} if full_noise else {})}


def open_histograms(ask, rounds, histogram: dict[str, Any], sites: list[str], *, why: str) -> dict[str, dict]:
    """Each site's histogram release, opened from the last secure request (the histograms') with the mask
    keys the sites reveal once the sum over the declared sizes is proven to them (``open_reply``): a site
    that keeps its key is opened with the others' keys where every other site revealed theirs. ``ask(bodies)``
    returns each site's reply or error; where no site reveals a key the run stops with ``why``."""
    from fedtab.transform.plan import KEY_N_SITES

    inputs, _ = rounds.open_revealed(ask({s: {"phase": OPEN, "proof": rounds.prove_last(s)} for s in sites}))
    if not inputs:
        raise FederationError(why)
    template = histogram[SUMMED]
    names = count_keys(template)
    out = {}
    for site, parts in inputs.items():
        counts = {k: (float(np.asarray(p).reshape(-1)[0]) if np.ndim(template[k]) == 0
                      else np.asarray(p, dtype=np.float64)) for k, p in zip(names, parts)}
        out[site] = {**{k: v for k, v in template.items() if k not in names and k != KEY_N_SITES}, **counts}
    return out


def summed_releases(template: dict[str, Any], releases: list[dict[str, Any]]) -> dict[str, Any]:
    """Sites' histogram releases summed as one release of that many sites (as a secure sum merges)."""
    from fedtab.transform.plan import KEY_N_SITES

    names = count_keys(template)
    out = dict(template)
    for k in names:
        parts = [np.asarray(r[k], dtype=np.float64) for r in releases]
        out[k] = float(np.sum(parts)) if np.ndim(template[k]) == 0 else np.sum(parts, axis=0)
    out[KEY_N_SITES] = len(releases)
    return out


def screen(ask, plan, release: dict[str, Any], sites: list[str], *, prove, min_sites: int,
           progress=None) -> tuple[list[str], dict[str, Any]]:
    """The sites' screens of their own releases against ``release`` (the sum over ``sites``): (the sites
    left out, the sum less their releases). ``ask(bodies)`` returns the replies of the sites that answered;
    ``prove(site)`` what proves the sum to that site (``marginals.SecureRounds.prove_last``)."""
    from fedtab.federation import screening
    from fedtab.federation.agreement import leave_out
    from fedtab.transform.plan import F_COUNTS, KEY_N_SITES, wire_key

    if len(sites) < screening.MIN_SITES:
        return [], release
    keys = count_keys(release)
    replies = ask({s: {"phase": SCREEN, "proof": prove(s)} for s in sites})
    named, theirs = {}, {}
    for site, reply in sorted(replies.items()):
        if site not in sites or not reply.get("garbage"):
            continue
        got = reply.get("release") or {}
        if sorted(got) != keys or any(np.shape(got[k]) != np.shape(release[k]) for k in keys):
            raise FederationError(f"site '{site}' named its table random values but sent a release of another shape")
        own = {**release, **got}
        pooled = {spec.name: np.asarray(release[wire_key(spec.name, F_COUNTS)], dtype=np.float64)
                  - np.asarray(own[wire_key(spec.name, F_COUNTS)], dtype=np.float64) for spec in plan.columns}
        named[site] = (screening.verdict(plan, own, pooled, n_others=len(sites) - 1)
                       or "it found its own table random values, not real rows")
        theirs[site] = got
    dropped = leave_out(named, going_on=len(sites) - len(named), of=len(sites), min_sites=min_sites,
                        where=screening.WHERE, progress=progress)
    out = dict(release)
    for site in dropped:
        for k in keys:
            out[k] = (float(out[k]) - float(np.asarray(theirs[site][k]).reshape(-1)[0]) if np.ndim(release[k]) == 0
                      else np.asarray(out[k], dtype=np.float64) - np.asarray(theirs[site][k], dtype=np.float64))
    out[KEY_N_SITES] = int(release[KEY_N_SITES]) - len(dropped)
    return dropped, out
