"""What ``suite.py`` runs on each data set: the methods, their training lengths, the reductions.

Training lengths match across methods where they are comparable: fedtab's rounds x local epochs equals
SDV's and smartnoise DPCTGAN's epochs (DPCTGAN stops earlier when its budget runs out).
"""

from __future__ import annotations

DELTA = 1e-5
EPSILONS = (None, 1.0, 3.0, 10.0)
# fedtab's marginal model: no training lengths (rounds, epochs and batch are not used); under DP 30% of the
# budget to the encoding like every fedtab model (it also measures the declared target's two-way tables,
# which sampling draws the target from: on Adult at epsilon 1, 3 seeds, TSTR 0.60-0.65 at 10% against
# 0.76-0.84 at 30%, quality 0.85-0.88 against 0.88).
MST = dict(rounds=1, local_epochs=1.0, batch_size=64)

PLANS = {
    "heart": {
        "timeout": 900, "train_rows": None, "sites": (4, 1), "epsilons": EPSILONS, "last": ("smartnoise-aim",),
        "fedtab": {"ctgan": dict(rounds=5, local_epochs=10.0, batch_size=64),
                   "tvae": dict(rounds=5, local_epochs=20.0, batch_size=64),
                   "diffusion": dict(rounds=5, local_epochs=20.0, batch_size=64),
                   "mst": MST},
        "sdv": {"gaussiancopula": {}, "ctgan": dict(epochs=50, batch_size=60),  # pac 10 needs a multiple of 10
                "tvae": dict(epochs=100, batch_size=64)},
        "ddpm": dict(n_iter=1000, batch_size=1024),  # synthcity's defaults
        "smartnoise": {"dpctgan": dict(epochs=50, batch_size=64), "mst": {}, "aim": {}},
        "notes": ["heart disease in full: the 4 hospitals' 80% (735 rows) train, their pooled 20% (185 rows) test",
                  "fedtab: ctgan 5 rounds x 10 local epochs, tvae and diffusion 5 x 20, batch 64; SDV CTGAN "
                  "50 epochs (batch 60), TVAE 100 epochs (batch 64); DPCTGAN at most 50 epochs (batch 64)"],
    },
    "adult": {
        "timeout": 480, "train_rows": 5000, "sites": (4, 1), "epsilons": EPSILONS,
        "fedtab": {"ctgan": dict(rounds=4, local_epochs=5.0, batch_size=500),
                   "tvae": dict(rounds=4, local_epochs=10.0, batch_size=500),
                   "diffusion": dict(rounds=4, local_epochs=10.0, batch_size=500),
                   "mst": MST},
        "dp_models": ("ctgan", "mst"), "anchor_epsilons": {"aim": (1.0,)}, "last": ("smartnoise-aim",),
        "sdv": {"gaussiancopula": {}, "ctgan": dict(epochs=20, batch_size=500),
                "tvae": dict(epochs=40, batch_size=500)},
        "ddpm": dict(n_iter=1000, batch_size=1024),
        "smartnoise": {"dpctgan": dict(epochs=20, batch_size=500), "mst": {}, "aim": {}},
        "notes": ["REDUCED for a shared 2-core machine (load 5-7 from other jobs during the run): a 5,000-row "
                  "training subsample (the same share of each age-quartile site, so the non-IID split is "
                  "kept) of the 80% split; the full 20% (6,513 rows) is the test set",
                  "fedtab: ctgan 4 rounds x 5 local epochs, tvae and diffusion 4 x 10, batch 500; SDV CTGAN 20 "
                  "epochs, TVAE 40 (batch 500); DPCTGAN at most 20 epochs (batch 500); TabDDPM 1,000 "
                  "iterations (synthcity's default)",
                  "not run on Adult, for time: fedtab tvae and diffusion under DP (heart has them), smartnoise "
                  "AIM at epsilon 3 and 10 (AIM at epsilon 1 runs last)"],
    },
    "bank": {
        "timeout": 600, "train_rows": 6000, "sites": (4, 1), "epsilons": EPSILONS,
        "fedtab": {"ctgan": dict(rounds=4, local_epochs=5.0, batch_size=500), "mst": MST},
        "sdv": {"gaussiancopula": {}, "ctgan": dict(epochs=20, batch_size=500),
                "tvae": dict(epochs=40, batch_size=500)},
        "ddpm": dict(n_iter=1000, batch_size=1024),
        "smartnoise": {"dpctgan": dict(epochs=20, batch_size=500), "mst": {}, "aim": {}},
        "notes": ["REDUCED: a 6,000-row training subsample of the 80% split (4 age-quartile sites)"],
    },
    "quick": {
        "timeout": 300, "train_rows": 300, "sites": (4, 1), "epsilons": (None, 1.0),
        "fedtab": {"ctgan": dict(rounds=1, local_epochs=2.0, batch_size=32)},
        "sdv": {"gaussiancopula": {}}, "ddpm": dict(n_iter=20, batch_size=256),
        "smartnoise": {"mst": {}},
        "notes": ["SMOKE RUN (--quick): a 300-row slice of the training rows, fedtab ctgan 1 round x 2 "
                  "epochs; the figures say nothing about quality"],
    },
}

LABELS = {"gaussiancopula": "SDV GaussianCopula", "ctgan": "CTGAN", "tvae": "TVAE", "diffusion": "diffusion",
          "ddpm": "synthcity TabDDPM", "dpctgan": "smartnoise DPCTGAN", "mst": "smartnoise MST",
          "aim": "smartnoise AIM"}


def _eps_key(eps) -> str:
    return "nondp" if eps is None else f"eps{eps:g}"


def methods_for(plan: dict) -> list[dict]:
    """Non-DP methods first, then each epsilon with fedtab and the DP anchors side by side."""
    out = []
    for eps in plan["epsilons"]:
        for model, settings in plan["fedtab"].items():
            if eps is not None and model not in plan.get("dp_models", plan["fedtab"]):
                continue
            for k in plan["sites"]:
                out.append({"key": f"fedtab-{model}-{k}site{'s' if k > 1 else ''}-{_eps_key(eps)}",
                            "label": f"fedtab {model}", "family": "fedtab", "model": model, "sites": k,
                            "epsilon": eps, "settings": {**settings, "delta": DELTA}})
        if eps is None:
            for model, settings in plan["sdv"].items():
                label = LABELS[model] if model == "gaussiancopula" else f"SDV {LABELS[model]}Synthesizer"
                out.append({"key": f"sdv-{model}", "label": label, "family": "sdv", "model": model,
                            "sites": 1, "epsilon": None, "settings": settings})
            if plan.get("ddpm") is not None:
                out.append({"key": "synthcity-ddpm", "label": LABELS["ddpm"], "family": "synthcity",
                            "model": "ddpm", "sites": 1, "epsilon": None, "settings": plan["ddpm"]})
        else:
            for model, settings in plan["smartnoise"].items():
                if eps not in plan.get("anchor_epsilons", {}).get(model, plan["epsilons"]):
                    continue
                out.append({"key": f"smartnoise-{model}-{_eps_key(eps)}", "label": LABELS[model],
                            "family": "smartnoise", "model": model, "sites": 1, "epsilon": eps,
                            "settings": {**settings, "delta": DELTA}})
    last = plan.get("last", ())
    return sorted(out, key=lambda m: any(m["key"].startswith(p) for p in last))  # stable: order kept
