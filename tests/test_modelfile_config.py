"""Model file integrity and run-configuration validation."""

import numpy as np
import pytest

import fedtab

from fedtab.config import config_from_dict, load_config
from fedtab.errors import ConfigError, ModelFileError
from fedtab.modelfile import ModelBundle, load_bundle, save_bundle


def _bundle():
    return ModelBundle(
        manifest={"model": "ctgan", "encoding": {"means": np.linspace(0, 1, 5)}, "epsilon": float("inf")},
        weights={"generator.0.weight": np.arange(12, dtype=np.float32).reshape(3, 4)},
    )


def test_model_file_round_trip(tmp_path):
    p = save_bundle(tmp_path / "m.fedtab", _bundle())
    b = load_bundle(p)
    assert b.manifest["model"] == "ctgan" and b.manifest["epsilon"] == float("inf")
    np.testing.assert_array_equal(b.manifest["encoding"]["means"], np.linspace(0, 1, 5))
    np.testing.assert_array_equal(b.weights["generator.0.weight"], _bundle().weights["generator.0.weight"])
    assert not list(tmp_path.glob(".*tmp")), "no temp file left behind"


def test_tampered_weights_are_refused(tmp_path):
    p = save_bundle(tmp_path / "m.fedtab", _bundle())
    data = bytearray(p.read_bytes())
    data[-3] ^= 0xFF  # flip bits inside the last tensor
    p.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="hash mismatch"):
        load_bundle(p)


def test_tampered_manifest_is_refused(tmp_path):
    p = save_bundle(tmp_path / "m.fedtab", _bundle())
    p.write_bytes(p.read_bytes().replace(b'ctgan', b'tvaex'))
    with pytest.raises(ModelFileError, match="hash mismatch"):
        load_bundle(p)


def test_foreign_files_are_refused(tmp_path):
    (tmp_path / "pickle.fedtab").write_bytes(b"\x80\x04\x95\x00\x00")
    with pytest.raises(ModelFileError, match="not a fedtab model file"):
        load_bundle(tmp_path / "pickle.fedtab")
    from safetensors.numpy import save_file

    save_file({"w": np.zeros(2, np.float32)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ModelFileError, match="format is None"):
        load_bundle(tmp_path / "other.safetensors")
    with pytest.raises(ModelFileError, match="not found"):
        load_bundle(tmp_path / "missing.fedtab")


def test_config_resolves_paths_relative_to_the_file(tmp_path):
    (tmp_path / "job.toml").write_text(
        'seed = 3\nschema = "s.json"\n[privacy]\nepsilon = 1.0\n[training]\nrounds = 2\n'
        '[sites.a]\nsource = "a.csv"\n[sites.b]\nsource = "sqlite:///b.db"\ntable = "t"\n'
    )
    cfg = load_config(tmp_path / "job.toml")
    assert cfg.sites["a"].source == str(tmp_path / "a.csv") and cfg.schema_path == str(tmp_path / "s.json")
    assert cfg.sites["b"].source == "sqlite:///b.db" and cfg.sites["b"].table == "t"
    assert cfg.training.rounds == 2 and cfg.seed == 3
    # No preprocessing_share: chosen with the model when the job is built (the default model, no target: 0.1).
    assert cfg.privacy.preprocessing_share is None
    fedtab.datasets.heart_schema().save(tmp_path / "s.json")
    job = fedtab.FederatedSynthesizer.from_config(cfg)._job()
    assert job.model == "mst" and job.privacy.preprocessing_epsilon == pytest.approx(0.1)


def test_the_encoding_share_is_chosen_with_the_model_unless_set():
    """0.3 for the marginal model with a declared target (its target tables), else 0.1; a set share wins."""
    build = lambda **kw: fedtab.FederatedSynthesizer(epsilon=1.0, **kw)._job().privacy.preprocessing_share  # noqa: E731
    assert build(target="y") == pytest.approx(0.3)
    assert build() == pytest.approx(0.1)
    assert fedtab.FederatedSynthesizer("ctgan", epsilon=1.0, target="y")._job().privacy.preprocessing_share == 0.1
    assert build(target="y", preprocessing_share=0.5) == 0.5
    synth = fedtab.FederatedSynthesizer(epsilon=1.0, target="y")
    synth._job()
    assert "30% of each site's epsilon to the encoding" in synth.model_choice_.reason


def test_config_lists_every_problem():
    with pytest.raises(ConfigError) as ei:
        config_from_dict({"privacy": {"epsilon": -1, "delta": 2}, "training": {"rounds": 0, "speed": 1},
                          "model": {"name": "gan"}, "sites": {"a": {}}})
    msg = str(ei.value)
    for needle in ("'epsilon' must be", "'delta' must be", "'rounds' must be", "training.speed",
                   "'model' must be one of", "site 'a': needs a 'source'"):
        assert needle in msg


def test_config_sampling_section():
    base = {"sites": {"a": {"source": "a.csv"}}}
    assert config_from_dict(base).sampling.quantile_map is False
    assert config_from_dict({**base, "sampling": {"quantile_map": True}}).sampling.quantile_map is True
    with pytest.raises(ConfigError) as ei:
        config_from_dict({**base, "sampling": {"quantile_map": "yes", "rows": 5}})
    assert "'sampling.quantile_map' must be true or false. Got 'yes'" in str(ei.value)
    assert "unknown key 'sampling.rows'" in str(ei.value)


def test_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")
    (tmp_path / "bad.toml").write_text("seed = = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(tmp_path / "bad.toml")


def test_config_declares_site_sizes():
    """``[sites.<name>] rows_at_most``: the consortium's declared most rows a site, the coordinator's check
    (``fedtab.federation.screening``); the API gets them from the configuration."""
    from fedtab.api import FederatedSynthesizer

    base = {"sites": {"a": {"source": "a.csv", "rows_at_most": 300}, "b": {"source": "b.csv"}}}
    cfg = config_from_dict(base)
    assert cfg.site_rows_at_most == {"a": 300}
    assert FederatedSynthesizer.from_config(cfg)._job().site_rows_at_most == {"a": 300}
    with pytest.raises(ConfigError, match=r"'sites.a.rows_at_most' must be a whole number"):
        config_from_dict({"sites": {"a": {"source": "a.csv", "rows_at_most": 2.5}}})
