"""Secure aggregation of the DP-SGD models' updates (ctgan, tvae, diffusion): the coordinator reads each
training round's weighted sum of the sites' updates, never one site's update.

With ``privacy.secure_aggregation`` on (the default), two sites or more and ``training.aggregation =
"mean"`` (the default), every round is one masked request of ``fedtab.federation.secagg`` (keys and
shares drawn once per job, one mask key per round: ``planned_requests``) and its unmasking:

- each site trains its round as before (its full DP-SGD noise, on its ledger), then masks
  ``rows x (new weights - global weights)``, every entry of the state dict in fixed point of
  ``secagg.UPDATE_BITS`` fractional bits, as one real vector. ``rows`` is the site's own row estimate
  (``state["rows_estimate"]``: the post-processing of its histogram release that gives the coordinator its
  FedAvg weight, exact without DP), never a weight the coordinator sends: a coordinator that could scale
  the other sites' updates towards zero would read one site's update off the sum.
- the coordinator unmasks the sum over the sites whose masked update arrived (a site lost mid-round is
  removed by secagg's unmask round and takes part in no later round), divides by their summed public
  weights (``TrainingState.site_weights``) and adds the mean change to the global weights. Float entries
  (parameters and running statistics) are averaged as ``aggregation.weighted_average`` averages them;
  integer buffers (a BatchNorm's ``num_batches_tracked``) get the rounded mean of their change (the plain
  path copies the first site's counter: a count of local steps, public through each site's setup reply).
- screening: the coordinator cannot see an update, so it screens the sum: the global model's shapes,
  finite values, and no parameter moved by more than the summed weights x each site's bound
  (``training.update_bounds``: a round of Adam). A failing sum stops the run: which site sent the broken
  update cannot be told. ``training.aggregation = "trimmed_mean"`` screens and trims each site's update,
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
    secure = body["secagg"]
    masked, b_shares = session.mask(change, me=site, request=secure["request"], sites=secure.get("sites") or [],
                                    job=str(secure.get("job", "")), real=True, bits=secagg.UPDATE_BITS)
    out = {k: v for k, v in reply.items() if k != "weights"}
    return {**out, "masked": masked, "b_shares": b_shares, "shapes": [list(np.shape(c)) for c in change]}


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


# -- at the coordinator --------------------------------------------------------------------------------
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


def screen_sum(total: list[np.ndarray], names: list[str], current: dict[str, np.ndarray], *,
               weights: dict[str, float], bounds: dict[str, dict[str, float]], n_sites: int) -> str | None:
    """Why the summed weighted changes cannot be applied, or None: the global model's shapes, finite
    values, and each parameter within the summed weights x each site's bound (1% slack for float sums,
    plus the fixed point's rounding: half a unit per site)."""
    if len(total) != len(names) or any(np.shape(t) != np.shape(current[n]) for t, n in zip(total, names)):
        return "the summed update has other shapes than the global model"
    rounding = n_sites * 0.5 / float(1 << secagg.UPDATE_BITS)
    for t, name in zip(total, names):
        if not np.all(np.isfinite(t)):
            return f"the summed update of parameter '{name}' holds values that are not finite"
        if any(name not in b for b in bounds.values()) or not np.size(t):
            continue
        bound = sum(float(weights[s]) * float(b[name]) for s, b in bounds.items())
        moved = float(np.max(np.abs(t)))
        if moved > 1.01 * bound + rounding + 1e-12:
            return (f"the summed update moved parameter '{name}' by {moved:.3g} (rows x change), more than the "
                    f"sites' training rounds can ({bound:.3g})")
    return None


def train_round(ask_train, rounds, body: dict, state, *, bounds: dict[str, dict[str, float]],
                round_index: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """One securely summed round: (the new global weights, the survivors' replies: losses, epsilon).
    ``ask_train(body, only=...)`` sends the training request and returns the replies that arrived;
    ``bounds`` holds each site's update bound (``training.update_bounds``)."""
    names = sorted(state.weights)
    total, replies = rounds.secure_sum(ask_train, {**body, "phase": f"{PHASE} {round_index + 1}"}, real=True,
                                       bits=secagg.UPDATE_BITS)
    survivors = sorted(replies)
    # Where the encoding's histograms were summed securely too (``TrainingState.site_rows_known`` False)
    # these are equal shares of the consortium's row estimate, and each bound is for all of its rows.
    weights = {s: float(state.site_weights[s]) for s in survivors}
    why = screen_sum(total, names, state.weights, weights=weights, bounds={s: bounds[s] for s in survivors},
                     n_sites=len(survivors))
    if why is not None:
        raise FederationError(
            f"round {round_index + 1}: {why}. Under secure aggregation the coordinator sees only the sum, so the "
            "site whose update is broken or hostile cannot be named; 'training.aggregation = \"trimmed_mean\"' "
            "screens (and trims) each site's update, which the coordinator then sees.")
    return mean_of_sum(total, names, state.weights, sum(weights.values())), replies
