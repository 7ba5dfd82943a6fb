"""Secure aggregation of the DP-SGD models' updates (ctgan, tvae, diffusion): the coordinator reads each
training round's weighted sum of the sites' updates, never one site's update.

With ``privacy.secure_aggregation`` on (the default), two sites or more and ``training.aggregation =
"mean"`` (the default), every round is one masked request of ``fedtab.federation.secagg`` (keys and
shares drawn once per job, one mask key per round: ``planned_requests``) and its unmasking:

- each site trains its round as before (its full DP-SGD noise, on its ledger), then masks
  ``rows x (new weights - global weights)``, every entry of the state dict in fixed point of
  ``secagg.UPDATE_BITS`` fractional bits, as one real vector, then its round's losses (``rows x loss`` and
  ``rows`` per loss: the coordinator reads their row-weighted mean), and ``rows`` itself: the coordinator
  divides by the summed weights it reads. ``rows`` is the site's own row estimate (``state["rows_estimate"]``:
  post-processing of its histogram release, floored at its noise sd; exact without DP), never a weight the
  coordinator sends: a coordinator that could scale the other sites' updates towards zero would read one
  site's update off the sum. Beside the masked vector a reply holds the site's epsilon spent and its
  steps: under secure histograms the same at every site (one public plan, ``training.site_training_plan``).
- the coordinator unmasks the sum over the sites whose masked update arrived (a site lost mid-round is
  removed by secagg's unmask round and takes part in no later round), divides by their summed weights
  (read from the sum; where it knows each site's weight, ``TrainingState.site_weights``, checked equal to
  theirs) and adds the mean change to the global weights. Float entries
  (parameters and running statistics) are averaged as ``aggregation.weighted_average`` averages them;
  integer buffers (a BatchNorm's ``num_batches_tracked``) get the rounded mean of their change (the plain
  path copies the first site's counter: a count of local steps, public through each site's setup reply).
- screening: the coordinator cannot see an update, so it screens the sum: the global model's shapes,
  finite values, and no parameter moved by more than the summed weights x each site's bound
  (``training.update_bounds``: a round of Adam; under one public plan every site's, exact), so that the
  mean moves no parameter further than one site's round can, whatever the weights (an honest sum always
  passes). A failing sum (``SumFailed``) cannot tell which site sent the broken update. With
  ``training.on_failed_sum = "screen_each"`` (the default), public in the job each site accepted, the
  coordinator then proves the failure to each site and asks for that round's mask keys (``revealed``:
  only once its sum was read, never a new update). The proof: one entry of the sum beyond the bound a site
  can compute itself (a round of a site holding all the summed rows) and the sum's weight, with each
  survivor's masked chunk holding them and its Merkle path, its self-mask seed and the dropped sites' mask
  keys, each checked against what every site committed to when it masked (``secagg``'s commitments,
  encrypted to each site: the coordinator can neither read nor forge them); a sum that fails only the
  coordinator's finer bound cannot be proven and stops the run. With the keys the coordinator opens each
  site's masked update, the very one in the sum (``secagg.open_inputs``), and screens them one by one as
  a plain round does; the round's mean is the passing sites' sum over their weights; rounds whose sum
  passes stay sums. A site cannot show another update than it masked (a key that is not the one it masked
  with is named; a site that keeps its key is opened with the others' keys all the same), and a
  coordinator cannot open the updates of a sum that passes. With ``"stop"`` the run stops, and no site's
  update is ever opened. A site whose own update is not finite cannot mask it and says so
  (``secagg.encode``: ``UnusableUpdateError``); the coordinator names it and leaves it out, its masks
  removed as a lost site's. ``training.aggregation = "trimmed_mean"`` screens and trims each site's update,
  which the coordinator then sees (secure aggregation of updates is off for that job, and the
  coordinator says so): robustness to a hostile site against the coordinator seeing only sums.

Noise: each site keeps its full DP-SGD noise. An update is the result of many local noisy steps, a
non-linear function of them, so noise split across sites would not add up to one release's noise in the
sum as the marginal model's distributed noise does (``fedtab.federation.marginals``); the sum hides each
update from the coordinator on top of each site's own DP guarantee, which does not rely on it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedtab.errors import FederationError
from fedtab.federation import secagg

PHASE = "training round"  # the masked request's name in progress notes and errors


def secure_updates(job, n_sites: int) -> bool:
    """Whether the DP-SGD rounds of ``job`` are summed securely: secure aggregation on, 2+ sites, a
    DP-SGD model and the weighted mean (the trimmed mean needs each site's update)."""
    from fedtab.federation.marginals import uses_secure_aggregation

    from fedtab.models.registry import is_measured

    return bool(not is_measured(job.model) and job.training.aggregation == "mean"
                and uses_secure_aggregation(job, n_sites))


def planned_requests(job, rounds_done: int = 0) -> int:
    """The masked requests the training rounds need: one per round still to run."""
    return max(int(job.training.rounds) - int(rounds_done), 0)


TRIMMED_NOTE = ("training: the trimmed mean needs each site's update, so the updates are not summed securely: "
                "the coordinator sees each site's DP-SGD update (robust to a hostile site); training.aggregation "
                "= \"mean\" sums them securely instead")


# -- at a site ----------------------------------------------------------------------------------------
def check(site: str, body: dict, session: secagg.SiteSession) -> None:
    """Refuse a masked training request before the round spends anything."""
    secure = body["secagg"]
    session.check_request(site, secure.get("request"), secure.get("sites") or [])


def masked_reply(site: str, body: dict, reply: dict[str, Any], state: dict, session: secagg.SiteSession) -> dict:
    """The site's training reply with its weights replaced by its masked, row-weighted change."""
    rows = state.get("rows_estimate")
    if rows is None or not np.isfinite(float(rows)):
        raise FederationError(f"site '{site}': no row estimate from the encoding to weight its update by",
                              public=True)
    rows = max(float(rows), 1.0)
    names = sorted(body["weights"])
    if set(names) != set(reply["weights"]):
        raise FederationError(f"site '{site}': its model has other parameters than the global model", public=True)
    change = [rows * (np.asarray(reply["weights"][n], dtype=np.float64) - np.asarray(body["weights"][n], dtype=np.float64))
              for n in names]
    change.append(_extra_entries(reply.get("losses") or {}, rows))
    secure = body["secagg"]
    masked, b_shares = session.mask(change, me=site, request=secure["request"], sites=secure.get("sites") or [],
                                    job=str(secure.get("job", "")), real=True, bits=secagg.UPDATE_BITS, commit=True)
    out = {k: v for k, v in reply.items() if k in PUBLIC_REPLY}
    return {**out, "masked": masked, "b_shares": b_shares, "shapes": [list(np.shape(c)) for c in change],
            "commits": session.commit_boxes.pop(secure["request"])}


# What a masked round reply holds beside the masked vector: the site's epsilon spent and its steps, both the
# same at every site under the public plan (``training.site_training_plan`` with ``plan_rows``). The site's
# weight and the round's losses go inside the sum (``_extra_entries``).
PUBLIC_REPLY = ("epsilon", "steps")
LOSSES = ("private", "public")  # the names a round's losses may have (``training.train_one_round``)
LOSS_LIMIT = 1e3  # a loss is clipped to +-1e3 before it is weighted and summed (fixed point's range)


def _extra_entries(losses: dict[str, float], rows: float) -> np.ndarray:
    """The masked vector's last entry: ``rows`` (summed: the weight the coordinator divides by), then
    ``rows x loss`` and ``rows`` for each of ``LOSSES`` the site reports (both 0 for one it does not):
    summed, their ratio is the row-weighted mean of the losses the sites report."""
    out = np.zeros(1 + 2 * len(LOSSES))
    out[0] = rows
    for i, name in enumerate(LOSSES):
        value = losses.get(name)
        if value is not None and np.isfinite(value):
            out[1 + 2 * i:3 + 2 * i] = (rows * float(np.clip(value, -LOSS_LIMIT, LOSS_LIMIT)), rows)
    return out


def read_extra(summed: np.ndarray) -> tuple[float, dict[str, float]]:
    """The summed weight and the row-weighted mean of each loss some site reported, from the summed
    ``_extra_entries``."""
    summed = np.asarray(summed, dtype=np.float64).ravel()
    if summed.size != 1 + 2 * len(LOSSES):
        return float("nan"), {}
    return float(summed[0]), {name: float(summed[1 + 2 * i] / summed[2 + 2 * i]) for i, name in enumerate(LOSSES)
                              if summed[2 + 2 * i] > 0.5}


def _digest(weights: dict) -> str:
    import hashlib

    h = hashlib.sha256()
    for name in sorted(weights):
        a = np.ascontiguousarray(weights[name])
        h.update(f"{name}\0{a.dtype.str}\0{a.shape}\0".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def keep(body: dict, reply: dict, state: dict) -> None:
    """Keep the site's latest round's update (plain, in the site's own state: its state file in a
    deployment) with the request it was masked for: a coordinator resumed from its checkpoint re-sends
    the round it was in under fresh keys, and the site masks the same update again instead of training
    (and spending) twice."""
    secure = body.get("secagg")
    state["last_update"] = {"round": int(body["round"]), "digest": _digest(body["weights"]), "reply": reply,
                            "request": None if secure is None else secure.get("request"), "unmasked": False}


def recorded(body: dict, state: dict) -> dict | None:
    """The kept update of this round on these weights, when it may be masked again: never after a sum
    holding it was unmasked (a second sum over other sites would tell it apart by difference)."""
    kept = state.get("last_update")
    if (body.get("secagg") is None or not kept or kept.get("unmasked") or kept["round"] != int(body["round"])
            or kept["digest"] != _digest(body["weights"])):
        return None
    kept["request"] = body["secagg"].get("request")
    return kept["reply"]


def unmasked(request, state: dict) -> None:
    """The site answered the unmasking of ``request``: if its latest update was masked for it, that update
    is in a sum the coordinator read."""
    kept = state.get("last_update")
    if kept and kept.get("request") is not None and kept["request"] == request:
        kept["unmasked"] = True


def revealed(site: str, body: dict, state: dict, session: secagg.SiteSession) -> dict:
    """The site's mask key of the request its kept update of this round was masked for, for a coordinator
    whose secure sum of the round failed its screen (``training.on_failed_sum = "screen_each"``): with the
    sites' keys the coordinator opens each site's masked update, the one in the sum (a site cannot show
    another). Only where the job the site accepted says so, only for the round on these weights, only once
    the coordinator read the sum holding it, and only where the coordinator proves that the sum fails: it
    sends an entry of the sum and the sum's weight with everything needed to compute them
    (``secagg.SiteSession.proven_entries``: every part checked against what each site committed to), and
    the site screens that entry itself (``proven_failure``). A coordinator cannot open an update without a
    sum that fails, nor make a site train again. Under DP the update is a DP release already on the site's
    ledger (its full DP-SGD noise); nothing is spent."""
    if not (state.get("job") or {}).get("show_update_on_failed_sum"):
        raise FederationError(f"site '{site}' refuses to show its update: the job it accepted sums the updates "
                              "securely and does not let the coordinator see them (training.on_failed_sum)",
                              public=True)
    kept = state.get("last_update")
    if (not kept or kept["round"] != int(body["round"]) or kept["digest"] != _digest(body["weights"])
            or not kept.get("unmasked") or kept.get("request") is None):
        raise FederationError(f"site '{site}' refuses to show an update: it shows only the update of the round "
                              "whose secure sum the coordinator has read", public=True)
    request = int(kept["request"])
    why = proven_failure(site, body, state, session, request)
    if why is not None:
        raise FederationError(f"site '{site}' refuses to reveal its mask key: {why}", public=True)
    return {"mask_key": session.reveal(site, request)}


def layout(weights: dict) -> tuple[list[str], list[int]]:
    """A masked update's parameters (sorted names) and where each starts in the vector; the extra entries
    (``_extra_entries``) start at the last offset."""
    names = sorted(weights)
    offsets = [0]
    for n in names:
        offsets.append(offsets[-1] + int(np.size(weights[n])))
    return names, offsets


def proven_failure(site: str, body: dict, state: dict, session: secagg.SiteSession, request: int) -> str | None:
    """Why the coordinator's proof does not show the round's sum failing its screen, or None: the proven
    weight is not a row count (``_weight_check``), or the proven entry moves its parameter further than the
    summed weight x a round's bound for a site of all the summed rows can (at least the coordinator's
    bound, ``screen_sum``: an honest sum never fails this)."""
    proof = body.get("proof") or {}
    names, offsets = layout(body["weights"])
    entry, at_weight = int(proof.get("entry", -1)), offsets[-1]
    if not 0 <= entry <= at_weight:
        return "the coordinator names no entry of the update to prove its sum's failure with"
    values = session.proven_entries(site, request, [entry, at_weight], proof)
    scale = float(1 << secagg.UPDATE_BITS)
    weight = values[at_weight] / scale
    if not row_count(weight):
        return None  # the sum's weight is not a row count: a failure the site computed itself
    if entry == at_weight:
        return "the sum's weight it proves is a row count: the coordinator may open updates only of a sum that fails"
    name = names[int(np.searchsorted(offsets, entry, side="right")) - 1]
    bound = round_bounds(state["training"], weight).get(name)
    if bound is not None and abs(values[entry]) / scale > allowed(weight * bound, len(session.survivors(request))):
        return None
    return (f"the sum it proves passes its screen (parameter '{name}'): the coordinator may open updates only "
            "of a sum that fails")


def round_bounds(setup: dict[str, Any], rows: float) -> dict[str, float]:
    """Each parameter's bound on one round of a site of ``rows`` rows under the training ``setup``
    (``training.update_bounds``), at the coordinator and at a site alike."""
    from fedtab.federation import training
    from fedtab.transform.table import TableTransformer

    return training.update_bounds(setup, TableTransformer.from_dict(setup["transformer"]), rows=rows)


def failing_entry(failed: SumFailed, current: dict[str, np.ndarray], setup: dict[str, Any]) -> int | None:
    """The entry of a failed round's sum (its flat index in a site's masked vector) that proves the failure
    to the sites (``proven_failure``) by the widest margin, or None where none can: the summed weight's own
    entry where it is not a row count, else the entry furthest beyond the summed weight x each parameter's
    bound for a site of all the summed rows (``round_bounds``)."""
    names, offsets = layout(current)
    weight = failed.weight
    if not row_count(weight):
        return offsets[-1]
    bounds = round_bounds(setup, weight)
    best, margin = None, 0.0
    for name, start, t in zip(names, offsets, failed.total):
        if name not in bounds or not np.size(t):
            continue
        flat = np.abs(np.asarray(t, dtype=np.float64).ravel())
        i = int(np.argmax(flat))
        over = float(flat[i]) - allowed(weight * float(bounds[name]), len(failed.replies))
        if over > margin:
            best, margin = start + i, over
    return best


def opened_update(opened: list[np.ndarray], names: list[str], current: dict[str, np.ndarray]):
    """A site's opened input of a round (``masked_reply``'s vector: its changes x its weight, then its
    weight and losses) as the global model that site alone would give, or why it cannot be one."""
    if len(opened) != len(names) + 1 or any(np.shape(o) != np.shape(current[n]) for o, n in zip(opened, names)):
        return "its opened update has other shapes than the global model"
    weight, _ = read_extra(opened[-1])
    if not np.isfinite(weight) or weight < 1.0 - 1e-6:  # a site's weight is floored at 1 (``masked_reply``)
        return "its update's weight is not a row count"
    return mean_of_sum(opened[:-1], names, current, weight)


# -- at the coordinator --------------------------------------------------------------------------------
class SumFailed(FederationError):
    """A round's secure sum failed its screen: ``why``, over the sites in ``survivors`` (their replies)."""

    def __init__(self, message: str, *, why: str, replies: dict[str, Any], total: list[np.ndarray] | None = None,
                 weight: float = float("nan")):
        super().__init__(message)
        self.why, self.replies, self.total, self.weight = why, replies, total, weight


def mean_of_sum(total: list[np.ndarray], names: list[str], current: dict[str, np.ndarray],
                weight: float) -> dict[str, np.ndarray]:
    """The global model after a round: ``current`` plus the summed weighted changes over ``weight`` (the
    survivors' summed weights); integer buffers by their rounded mean change."""
    out = {}
    for name, t in zip(names, total):
        cur = np.asarray(current[name])
        mean = np.asarray(t, dtype=np.float64) / float(weight)
        if np.issubdtype(cur.dtype, np.floating):
            out[name] = (cur.astype(np.float64) + mean).astype(cur.dtype)
        else:
            out[name] = (cur.astype(np.int64) + np.rint(mean).astype(np.int64)).astype(cur.dtype)
    return {n: out[n] for n in current}


def row_count(weight: float) -> bool:
    """Whether a summed weight can be the sites' rows (each site's at least 1: a sum above one half)."""
    return bool(np.isfinite(weight) and weight > 0.5)


def allowed(bound: float, n_sites: int) -> float:
    """How far a sum of ``n_sites`` sites' weighted updates may move a parameter whose summed bound is
    ``bound``: 1% slack for float sums, plus the fixed point's rounding (half a unit per site)."""
    return 1.01 * bound + n_sites * 0.5 / float(1 << secagg.UPDATE_BITS) + 1e-12


def screen_sum(total: list[np.ndarray], names: list[str], current: dict[str, np.ndarray], *,
               weights: dict[str, float], bounds: dict[str, dict[str, float]], n_sites: int) -> str | None:
    """Why the summed weighted changes cannot be applied, or None: the global model's shapes, finite
    values, and each parameter within the summed weights x each site's bound (1% slack for float sums,
    plus the fixed point's rounding: half a unit per site)."""
    if len(total) != len(names) or any(np.shape(t) != np.shape(current[n]) for t, n in zip(total, names)):
        return "the summed update has other shapes than the global model"
    for t, name in zip(total, names):
        if not np.all(np.isfinite(t)):
            return f"the summed update of parameter '{name}' holds values that are not finite"
        if any(name not in b for b in bounds.values()) or not np.size(t):
            continue
        bound = sum(float(weights[s]) * float(b[name]) for s, b in bounds.items())
        moved = float(np.max(np.abs(t)))
        if moved > allowed(bound, n_sites):
            return (f"the summed update moved parameter '{name}' by {moved:.3g} (rows x change), more than the "
                    f"sites' training rounds can ({bound:.3g})")
    return None


def train_round(ask_train, rounds, body: dict, state, *, bounds: dict[str, dict[str, float]],
                round_index: int) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[str, float]]:
    """One securely summed round: (the new global weights, the survivors' replies: epsilon and steps,
    the row-weighted mean of the losses the sites reported).
    ``ask_train(body, only=...)`` sends the training request and returns the replies that arrived;
    ``bounds`` holds each site's update bound (``training.update_bounds``)."""
    names = sorted(state.weights)
    total, replies = rounds.secure_sum(ask_train, {**body, "phase": f"{PHASE} {round_index + 1}"}, real=True,
                                       bits=secagg.UPDATE_BITS)
    if len(total) != len(names) + 1:
        raise FederationError(f"round {round_index + 1}: the summed update has other shapes than the global model")
    weight, losses = read_extra(total[-1])
    total = total[:-1]
    survivors = sorted(replies)
    why = _weight_check(weight, state, survivors)
    if why is None:
        # The sites' own weights, summed: where each site's is known, each bound x its weight; where only the
        # consortium's rows are (histograms summed securely: one public plan, every site the same bound),
        # the bound x the weight read (a site lost mid-job leaves the survivors' own, not their shares).
        weights = ({s: float(state.site_weights[s]) for s in survivors} if state.site_rows_known
                   else {s: weight / len(survivors) for s in survivors})
        why = screen_sum(total, names, state.weights, weights=weights, bounds={s: bounds[s] for s in survivors},
                         n_sites=len(survivors))
    if why is not None:
        raise SumFailed(
            f"round {round_index + 1}: {why}. Under secure aggregation the coordinator sees only the sum, so the "
            "site whose update is broken or hostile cannot be named; 'training.on_failed_sum = \"screen_each\"' "
            "(the default) lets it open the updates of a round whose sum fails, once each site has checked the "
            "failure, and 'training.aggregation = \"trimmed_mean\"' screens (and trims) each site's update every "
            "round.", why=why, replies=replies,
            total=total, weight=weight)
    # The mean: over the weights the sites used (the summed weight), which a site lost mid-job leaves exact.
    return mean_of_sum(total, names, state.weights, weight), replies, losses


def _weight_check(weight: float, state, survivors: list[str]) -> str | None:
    """Why the summed weight cannot be the survivors' row estimates, or None. Where each site's weight is
    known the sum must equal theirs (to the fixed point's rounding); otherwise positive (each site's is
    floored at its estimate's noise sd, so their sum is not the consortium's estimate: no upper bound;
    the screen bounds the mean's move whatever the weights)."""
    rounding = len(survivors) * 0.5 / float(1 << secagg.UPDATE_BITS)
    if not row_count(weight):
        return "the summed weight of the sites' updates is not a row count"
    if state.site_rows_known:
        want = sum(float(state.site_weights[s]) for s in survivors)
        if abs(weight - want) > 1e-9 * want + rounding + 1e-9:
            return f"the sites weighted their updates by {weight:.6g} rows in all, not their row estimates' {want:.6g}"
    return None
