"""Fit ONE method and write its synthetic table; run by ``benchmarks/suite.py`` in a subprocess of its own.

    <python of the method's environment> benchmarks/anchors/run_method.py SPEC.json

SPEC.json names the method, its settings, the input files and where to write. This file imports only
the standard library, numpy and pandas at the top, so it runs in the anchors' own virtual environments
(which have no fedtab); each method imports its library lazily. It writes the synthetic rows (Parquet
for fedtab, typed by the schema; CSV of plain values for the anchors) and a JSON of what it measured:
fit seconds, sampling seconds, the epsilon the method reports it spent, the library versions. Scoring
happens in the suite's main process, identically for every method.
"""

from __future__ import annotations

import json
import os
import platform
import random
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import pandas as pd

MISSING = "<missing>"  # a missing category, as its own level, for the anchors that cannot take NaN


def versions(*names: str) -> dict:
    out = {"python": platform.python_version()}
    for n in names:
        try:
            out[n] = version(n)
        except PackageNotFoundError:
            pass
    return out


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    try:
        import torch

        torch.manual_seed(seed)
        torch.set_num_threads(1)
    except ImportError:
        pass


def read_plain(spec: dict) -> pd.DataFrame:
    cats = spec["categorical"]
    df = pd.read_csv(spec["train_csv"], dtype={c: str for c in cats}, keep_default_na=False, na_values=[""])
    for c in spec["numerical"]:
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("float64")
    return df


# --- fedtab ----------------------------------------------------------------------------------------
def run_fedtab(spec: dict) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    import fedtab
    from fedtab.schema import TableSchema

    s = spec["settings"]
    # The utility target is declared, as a user would (its two-way tables are measured in the encoding;
    # sampling calibrates onto them, under DP redraws the target from them); under DP 30% of each
    # site's epsilon goes to the encoding (benchmarks/bench_models.py: DP_PREPROCESSING_SHARE).
    if spec["model"] == "auto":  # the default: nothing but the budget, the schema and the target
        said: list[dict] = []  # the phases it names (the marginal model's says which selection it made)
        synth = fedtab.FederatedSynthesizer(
            epsilon=spec["epsilon"], delta=s["delta"], seed=spec["seed"], schema=TableSchema.load(spec["schema"]),
            holdout=0.0, target=spec.get("target"), site_policy=fedtab.SitePolicy(allow_non_dp=True),
            progress=lambda event, info: said.append(info) if event == "phase" else None,
            **({"secure_aggregation": s["secure_aggregation"]} if "secure_aggregation" in s else {}))
        return {**_fit_fedtab(synth, spec), "selection": _selection(synth, said)}
    dp_share = {"preprocessing_share": s.get("preprocessing_share", 0.3)} if spec["epsilon"] is not None else {}
    synth = fedtab.FederatedSynthesizer(
        spec["model"], epsilon=spec["epsilon"], delta=s["delta"], rounds=s["rounds"],
        local_epochs=s["local_epochs"], batch_size=s["batch_size"], seed=spec["seed"],
        schema=TableSchema.load(spec["schema"]), holdout=0.0, target=spec.get("target"),
        site_policy=fedtab.SitePolicy(allow_non_dp=True), **dp_share)  # the benchmark's sites run non-DP rows too
    return _fit_fedtab(synth, spec)


def _selection(synth, said: list[dict]) -> str | None:
    """How the marginal model chose its tree, from its phase events: "star" (no selection: the star on the
    target) or "pooled" (scores against the consortium's shares), else "site" (each site's own); None for
    another model or without DP (the pooled exact tables)."""
    if synth.job_.model != "mst" or not synth.job_.privacy.enabled:
        return None
    return next((info["selection"] for info in said if info.get("selection")), "site")


def _fit_fedtab(synth, spec: dict) -> dict:
    sites = {name: pd.read_parquet(path) for name, path in spec["sites"].items()}
    t0 = time.perf_counter()
    synth.fit(sites)
    fit_s = time.perf_counter() - t0
    local_s = sum(h.seconds for h in synth.history_)
    t0 = time.perf_counter()
    frame = synth.sample(spec["n"], seed=spec["seed"] + 1)
    sample_s = time.perf_counter() - t0
    frame.to_parquet(spec["out"])
    eps = {site: float(led.epsilon) for site, led in synth.privacy_ledger.items()}
    return {"fit_seconds": fit_s, "sample_seconds": sample_s, "rounds_seconds": local_s,
            "federation_overhead_seconds": fit_s - local_s,
            "epsilon_spent": max(eps.values()) if spec["epsilon"] is not None else None,
            "ledger_epsilon": {k: (v if np.isfinite(v) else None) for k, v in eps.items()},
            "model": synth.job_.model, "model_choice": getattr(synth, "model_choice_", None) and synth.model_choice_.to_dict(),
            "versions": versions("torch", "opacus", "pandas", "numpy")}


# --- SDV -------------------------------------------------------------------------------------------
def run_sdv(spec: dict, df: pd.DataFrame) -> dict:
    import warnings

    warnings.filterwarnings("ignore")
    from sdv.metadata import Metadata
    from sdv.single_table import CTGANSynthesizer, GaussianCopulaSynthesizer, TVAESynthesizer

    md = Metadata.detect_from_dataframes({"t": df}, infer_keys=None)
    for c in df.columns:
        md.update_column(c, table_name="t", sdtype="numerical" if c in spec["numerical"] else "categorical")
    kind, s = spec["method"].split("-", 1)[1], spec["settings"]
    if kind == "gaussiancopula":
        synth = GaussianCopulaSynthesizer(md)
    elif kind == "ctgan":
        synth = CTGANSynthesizer(md, epochs=s["epochs"], batch_size=s["batch_size"], enable_gpu=False)
    else:
        synth = TVAESynthesizer(md, epochs=s["epochs"], batch_size=s["batch_size"], enable_gpu=False)
    t0 = time.perf_counter()
    synth.fit({"t": df})  # SDV 2.0: single-table synthesizers take {table name: frame}
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = synth.sample(spec["n"])
    sample_s = time.perf_counter() - t0
    out = out["t"] if isinstance(out, dict) else out
    out.to_csv(spec["out"], index=False)
    return {"fit_seconds": fit_s, "sample_seconds": sample_s, "epsilon_spent": None,
            "versions": versions("sdv", "ctgan", "copulas", "torch", "pandas", "numpy")}


# --- synthcity TabDDPM -----------------------------------------------------------------------------
def run_ddpm(spec: dict, df: pd.DataFrame) -> dict:
    try:
        import torchvision  # noqa: F401
    except Exception:  # no CPU torchvision for torch 2.13 on PyPI: see _torchvision_stub.py
        sys.path.insert(0, str(Path(__file__).parent))
        import _torchvision_stub  # noqa: F401
    from synthcity.plugins.core.dataloader import GenericDataLoader
    from synthcity.plugins.generic.plugin_ddpm import TabDDPMPlugin

    s, target = spec["settings"], spec["target"]
    # TabDDPM takes numbers only and treats a column with more than 10 distinct values as continuous:
    # categories go in as integer codes (missing as its own code) and come back rounded and clipped;
    # a missing number is filled with the column's median (TabDDPM does not model missingness).
    codes, enc = {}, df.copy()
    for c in spec["categorical"]:
        levels = sorted(enc[c].fillna(MISSING).unique())
        codes[c] = levels
        enc[c] = enc[c].fillna(MISSING).map({v: i for i, v in enumerate(levels)}).astype("int64")
    for c in spec["numerical"]:
        enc[c] = enc[c].fillna(enc[c].median())
    plugin = TabDDPMPlugin(is_classification=True, n_iter=s["n_iter"], batch_size=s["batch_size"],
                           random_state=spec["seed"], workspace=Path(spec["workdir"]) / "ddpm")
    t0 = time.perf_counter()
    plugin.fit(GenericDataLoader(enc, target_column=target))
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = plugin.generate(count=spec["n"]).dataframe()
    sample_s = time.perf_counter() - t0
    for c, levels in codes.items():
        idx = np.clip(np.rint(pd.to_numeric(out[c], errors="coerce").fillna(0)), 0, len(levels) - 1).astype(int)
        vals = np.asarray(levels, dtype=object)[idx]
        out[c] = np.where(vals == MISSING, None, vals)
    out[df.columns].to_csv(spec["out"], index=False)
    return {"fit_seconds": fit_s, "sample_seconds": sample_s, "epsilon_spent": None,
            "notes": "categories as integer codes; missing numbers filled with the median",
            "versions": versions("synthcity", "torch", "pandas", "numpy")}


# --- smartnoise-synth ------------------------------------------------------------------------------
def run_smartnoise(spec: dict, df: pd.DataFrame) -> dict:
    import warnings

    warnings.filterwarnings("ignore")
    from snsynth import Synthesizer
    from snsynth.transform import BinTransformer, MinMaxTransformer

    kind, s, eps = spec["method"].split("-", 1)[1], spec["settings"], float(spec["epsilon"])
    data = df.copy()
    for c in spec["categorical"]:
        data[c] = data[c].fillna(MISSING)
    # Public bounds for every number (as for fedtab), so the preprocessor spends no epsilon; the
    # category lists are read from the rows at no privacy cost (smartnoise's own behaviour).
    constraints = {}
    for c in spec["numerical"]:
        lo, hi = spec["bounds"][c]
        nullable = bool(data[c].isna().any())
        constraints[c] = (MinMaxTransformer(lower=lo, upper=hi, nullable=nullable) if kind == "dpctgan"
                          else BinTransformer(bins=s.get("bins", 10), lower=lo, upper=hi, nullable=nullable))
    if kind == "dpctgan":
        synth = Synthesizer.create("dpctgan", epsilon=eps, delta=s["delta"], epochs=s["epochs"],
                                   batch_size=s["batch_size"], verbose=False, cuda=False)
    elif kind == "aim":
        synth = Synthesizer.create("aim", epsilon=eps, delta=s["delta"], max_model_size=s.get("max_model_size", 80))
    else:
        synth = Synthesizer.create("mst", epsilon=eps, delta=s["delta"])
    t0 = time.perf_counter()
    synth.fit(data, transformer=constraints, categorical_columns=list(spec["categorical"]),
              preprocessor_eps=0.0, nullable=bool(data.isna().any().any()))
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = synth.sample(spec["n"])
    sample_s = time.perf_counter() - t0
    out = pd.DataFrame(out, columns=df.columns) if not isinstance(out, pd.DataFrame) else out
    for c in spec["categorical"]:
        out[c] = out[c].where(out[c].astype(str) != MISSING, None)
    out[df.columns].to_csv(spec["out"], index=False)
    pre_eps = float(synth._transformer.odometer.spent[0])
    info = {"fit_seconds": fit_s, "sample_seconds": sample_s, "preprocessing_epsilon": pre_eps,
            "versions": versions("smartnoise-synth", "opacus", "mbi", "torch", "pandas", "numpy")}
    if kind == "dpctgan":
        info.update(_dpctgan_spend(synth, len(data), s, eps))
        info["epsilon_spent"] = pre_eps + info["epsilon_spent"]
    else:
        info["epsilon_spent"] = pre_eps + eps  # MST/AIM spend exactly their budget (zCDP -> (eps, delta))
        info["delta"] = getattr(synth, "delta", None)
    return info


def _dpctgan_spend(synth, n: int, s: dict, target: float) -> dict:
    """DPCTGAN checks its budget only at the start of each epoch, so the last epoch can overshoot: the
    spend is recomputed from its sampling rate, noise and the epochs it actually trained."""
    from opacus import privacy_analysis

    reported = list(getattr(synth, "epsilon_list", []))
    broke = len(reported) < s["epochs"] or (reported and reported[-1] > target)
    epochs = len(reported) - 1 if broke else len(reported)
    # Its privacy engine counts every discriminator optimizer step: two per batch with the default
    # cross-entropy loss (fake rows, then real rows), one with the Wasserstein loss.
    per_batch = 2 if getattr(synth, "loss", "cross_entropy") == "cross_entropy" else 1
    steps = epochs * max(n // s["batch_size"], 1) * per_batch
    delta = synth.delta if synth.delta is not None else 1 / (n * np.sqrt(n))
    orders = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
    rdp = privacy_analysis.compute_rdp(min(1.0, s["batch_size"] / n), synth.sigma, steps, orders)
    spent = float(privacy_analysis.get_privacy_spent(orders, rdp, delta)[0]) if steps else 0.0
    return {"epsilon_spent": spent, "epochs_trained": epochs, "delta": float(delta),
            "epsilon_reported_last_check": float(reported[-1]) if reported else None, "sigma": synth.sigma,
            "accounting_note": "Opacus 0.14 RDP with Poisson-sampling assumptions; DPCTGAN draws its real "
                               "rows by training-by-sampling, which that accounting does not cover"}


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    seed_everything(spec["seed"])
    method = spec["method"]
    if method == "fedtab":
        info = run_fedtab(spec)
    else:
        df = read_plain(spec)
        family = method.split("-", 1)[0]
        info = {"sdv": run_sdv, "synthcity": run_ddpm, "smartnoise": run_smartnoise}[family](spec, df)
    info["python_executable"] = sys.executable
    info["os_threads"] = os.environ.get("OMP_NUM_THREADS")
    Path(spec["result"]).write_text(json.dumps(info, default=float))


if __name__ == "__main__":
    main()
