"""The contract every registered model passes, through the real federation engine on the bundled heart data.

Each (model, setting) is fitted once per module (small rounds and epochs; small networks through
``model_options`` so the suite stays fast on a shared machine); the tests read those fits.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

import fedtab
from tests.conftest import non_dp_policy
from fedtab.models.registry import available_models

MODELS = available_models()
# Small networks: the contract is about behaviour, not fidelity.
OPTIONS = {
    "ctgan": dict(embedding_dim=16, generator_dim=(32, 32), discriminator_dim=(32, 32)),
    "tvae": dict(embedding_dim=8, compress_dims=(32,), decompress_dims=(32,)),
    "diffusion": dict(timesteps=100, sampling_steps=10, hidden_dims=(32, 32), time_embedding_dim=16),
}
SETTINGS = {  # name -> (epsilon, sites, rounds, local_epochs)
    "plain4": (None, "all", 2, 3.0),
    "dp4": (1.0, "all", 2, 1.0),
    "plain1": (None, "cleveland", 2, 3.0),
    "trained4": (None, "all", 4, 25.0),
}


@pytest.fixture(scope="module")
def heart():
    return fedtab.datasets.load_heart_sites(), fedtab.datasets.heart_schema()


@pytest.fixture(scope="module")
def fits(heart):
    sites, schema = heart
    cache = {}

    def get(model: str, setting: str):
        if (model, setting) not in cache:
            eps, which, rounds, epochs = SETTINGS[setting]
            chosen = sites if which == "all" else {which: sites[which]}
            synth = fedtab.FederatedSynthesizer(model, epsilon=eps, rounds=rounds, local_epochs=epochs, batch_size=64,
                                                schema=schema, seed=0, model_options=OPTIONS.get(model),
                                                site_policy=non_dp_policy() if eps is None else None)
            cache[model, setting] = (synth, synth.fit(chosen), chosen)
        return cache[model, setting]

    return get


def test_every_registered_model_is_covered():
    assert {"ctgan", "tvae", "diffusion"} <= set(MODELS) and set(MODELS) <= set(OPTIONS)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("setting", ["plain4", "dp4", "plain1"])
def test_fit_returns_self_and_samples_respect_the_schema(fits, heart, model, setting):
    synth, returned, _ = fits(model, setting)
    assert returned is synth
    schema = heart[1]
    df = synth.sample(400, seed=3)
    assert list(df.columns) == [c.name for c in schema.columns] and len(df) == 400
    for spec in schema.columns:
        s = df[spec.name]
        if spec.type == "numerical":
            assert str(s.dtype) == ("Int64" if spec.is_integer else "float64"), spec.name
            v = s.dropna().astype("float64")
            if spec.is_integer:
                assert np.all(v == np.round(v)), spec.name
            if spec.lower is not None:
                assert v.min() >= spec.lower, spec.name
            if spec.upper is not None:
                assert v.max() <= spec.upper, spec.name
        elif spec.type == "boolean":
            assert str(s.dtype) == "boolean", spec.name
        elif spec.type == "categorical":
            assert s.dtype == object, spec.name
            values = set(s.dropna())
            assert all(isinstance(x, str) for x in values), spec.name
            if spec.categories is not None:
                assert values <= set(spec.categories), (spec.name, values - set(spec.categories))
        if not spec.nullable:
            assert not s.isna().any(), spec.name


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_missing_share_roughly_preserved(fits, model):
    """Needs a trained model (the 2-round fits above have not learned the shares yet): slow."""
    synth, _, sites = fits(model, "trained4")
    real = pd.concat(sites.values(), ignore_index=True)
    df = synth.sample(2000, seed=5)
    for col in real.columns:
        r, s = float(real[col].isna().mean()), float(df[col].isna().mean())
        assert abs(s - r) < 0.15, (col, r, s)


@pytest.mark.parametrize("model", MODELS)
def test_same_seed_same_samples_other_seed_differs(fits, model):
    synth, _, _ = fits(model, "plain4")
    a, b, c = synth.sample(300, seed=7), synth.sample(300, seed=7), synth.sample(300, seed=8)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(c)


@pytest.mark.parametrize("model", MODELS)
def test_same_job_seed_gives_the_same_model(heart, fits, model):
    synth, _, chosen = fits(model, "plain1")
    again = fedtab.FederatedSynthesizer(model, rounds=2, local_epochs=3.0, batch_size=64, schema=heart[1], seed=0,
                                        model_options=OPTIONS.get(model), site_policy=non_dp_policy()).fit(chosen)
    pd.testing.assert_frame_equal(synth.sample(200, seed=1), again.sample(200, seed=1))


@pytest.mark.parametrize("model", MODELS)
def test_save_load_round_trip_gives_identical_samples(fits, model, tmp_path):
    synth, _, _ = fits(model, "dp4")
    path = synth.save(tmp_path / f"{model}.fedtab")
    loaded = fedtab.load(path)
    assert loaded.model == model
    pd.testing.assert_frame_equal(synth.sample(300, seed=11), loaded.sample(300, seed=11))
    # The manifest is strict JSON (non-finite floats are tagged by the wire format, never written bare).
    from fedtab.modelfile import _read_metadata

    manifest = _read_metadata(path.read_bytes())["manifest"]
    json.loads(manifest, parse_constant=lambda c: pytest.fail(f"{c} in the model file's JSON"))


@pytest.mark.parametrize("model", MODELS)
def test_ledger_stays_within_budget_under_dp(fits, model):
    synth, _, sites = fits(model, "dp4")
    ledgers = synth.privacy_ledger
    assert set(ledgers) == set(sites)
    for ledger in ledgers.values():
        assert 0.0 < ledger.epsilon <= 1.0 + 1e-9
        assert any(e.phase.startswith("training") for e in ledger.entries)


@pytest.mark.parametrize("model", MODELS)
def test_non_dp_ledger_records_exact_releases(fits, model):
    synth, _, _ = fits(model, "plain1")
    (ledger,) = synth.privacy_ledger.values()
    assert not ledger.is_dp and math.isinf(ledger.epsilon)
