"""Signed model files and audit records (fedtab.signing): the coordinator's Ed25519 key signs, a reader
with a trusted key refuses anything else. Each attack comes with a broken control: a weaker verifier
(or the unkeyed hash alone) that the same attack gets past, so the test shows it would catch one."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

import fedtab
from fedtab import modelfile, signing
from fedtab.errors import ConfigError, SignatureError, SignatureNotCheckedWarning, SourceError
from fedtab.modelfile import ModelBundle, bundle_bytes, read_bundle
from tests.conftest import BUNDLED

ATTACKED = "model/mst/single/1"  # a one-way marginal of the model: the attacker rewrites it


# -- helpers ----------------------------------------------------------------------------------------
def _bundle() -> ModelBundle:
    return ModelBundle(manifest={"model": "toy", "ledgers": {"a": {"epsilon": 1.0}}},
                       weights={"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(3)})


def _attack(data: bytes, *, weights=None, strip_signature=False, resign_with=None) -> bytes:
    """What an attacker does to a model file: edit tensors, recompute the unkeyed content hash, and keep,
    drop or forge the signature."""
    from safetensors.numpy import load, save

    tensors = load(data)
    meta = modelfile._read_metadata(data)
    for name, value in (weights or {}).items():
        tensors[name] = value
    meta["content_sha256"] = modelfile.content_hash(meta["manifest"], tensors)
    if strip_signature:
        meta.pop(signing.SIGNATURE_KEY, None)
    if resign_with is not None:
        meta[signing.SIGNATURE_KEY] = json.dumps(signing.sign(resign_with, domain=signing.MODEL_DOMAIN,
                                                              message=meta["content_sha256"].encode()))
    return save(tensors, metadata=meta)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    coord, coord_pub = signing.generate_signing_key(d / "coordinator")
    other, other_pub = signing.generate_signing_key(d / "other")
    return {"key": coord, "pub": coord_pub, "other": other, "other_pub": other_pub}


@pytest.fixture(scope="module")
def signed_model(tmp_path_factory, keys):
    """A small non-DP model trained by 'fedtab train' with 'signing_key' in its configuration (seconds); its
    configuration is job.toml beside it."""
    from typer.testing import CliRunner

    from fedtab.cli import app

    d = tmp_path_factory.mktemp("model")
    sites = fedtab.datasets.load_heart_sites()
    text = f'schema = "{BUNDLED}/heart_schema.json"\nsigning_key = "{keys["key"]}"\nledger_dir = "ledgers"\n'
    for name in ("cleveland", "hungary"):
        sites[name].head(60).to_csv(d / f"{name}.csv", index=False)
        text += f'[sites.{name}]\nsource = "{name}.csv"\nallow_non_dp = true\n'
    (d / "job.toml").write_text(text)
    result = CliRunner().invoke(app, ["train", str(d / "job.toml"), "-o", str(d / "m.fedtab"), "-q"])
    assert result.exit_code == 0, result.output
    assert "model file signed by SHA256:" in result.output
    return d / "m.fedtab"


# -- sign and verify ----------------------------------------------------------------------------------
def test_sign_verify_round_trip_with_either_public_key_format(keys, tmp_path):
    from cryptography.hazmat.primitives import serialization

    data = bundle_bytes(_bundle(), signing_key=keys["key"])
    pub = signing.load_public_key(keys["pub"])
    pem = tmp_path / "coordinator.pem"
    pem.write_bytes(pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    for trusted in (keys["pub"], pem, [keys["other_pub"], keys["pub"]]):
        b = read_bundle(data, trusted_keys=signing.resolve_trusted_keys(trusted))
        assert b.signed_by == signing.fingerprint(pub)
        np.testing.assert_array_equal(b.weights["w"], _bundle().weights["w"])
    assert read_bundle(data).signed_by is None  # no trusted key: not checked
    assert keys["pub"].read_text().startswith("ssh-ed25519 ")


def test_edited_and_rehashed_model_file_refused_with_a_trusted_key(keys):
    trusted = signing.resolve_trusted_keys(keys["pub"])
    data = bundle_bytes(_bundle(), signing_key=keys["key"])
    forged = _attack(data, weights={"model/w": np.zeros((2, 3), dtype=np.float32)})
    with pytest.raises(SignatureError, match="does not match the contents"):
        read_bundle(forged, trusted_keys=trusted)
    # Broken control 1: the unkeyed content hash alone (no trusted key) lets the same edit through.
    assert read_bundle(forged).weights["w"].sum() == 0
    # An accidental corruption (hash not recomputed) is still caught by the content hash.
    corrupt = bytearray(data)
    corrupt[-1] ^= 1
    with pytest.raises(modelfile.ModelFileError, match="content hash mismatch"):
        read_bundle(bytes(corrupt), trusted_keys=trusted)


def test_broken_verifier_that_skips_the_cryptographic_check_would_pass_the_edit(keys, monkeypatch):
    trusted = signing.resolve_trusted_keys(keys["pub"])
    forged = _attack(bundle_bytes(_bundle(), signing_key=keys["key"]), weights={"model/b": np.zeros(3)})

    def trusts_a_trusted_name(signature, trusted, *, domain, message, source):  # checks who, not what
        return signature["fingerprint"]

    monkeypatch.setattr(signing, "verify", trusts_a_trusted_name)
    assert read_bundle(forged, trusted_keys=trusted).weights["b"].sum() == 0  # the attack works on it


def test_a_file_signed_by_another_key_is_refused(keys, monkeypatch):
    trusted = signing.resolve_trusted_keys(keys["pub"])
    attacker = signing.load_signing_key(keys["other"])
    by_other = bundle_bytes(_bundle(), signing_key=attacker)
    with pytest.raises(SignatureError, match="not a trusted key"):
        read_bundle(by_other, trusted_keys=trusted)
    # The attacker edits the coordinator's file and signs it with their own key (embedded in the file).
    forged = _attack(bundle_bytes(_bundle(), signing_key=keys["key"]), weights={"model/b": np.zeros(3)},
                     resign_with=attacker)
    with pytest.raises(SignatureError, match="not a trusted key"):
        read_bundle(forged, trusted_keys=trusted)

    # Broken control 2: a verifier that trusts the key the file names accepts the forgery.
    real_verify = signing.verify

    def trusts_the_embedded_key(signature, trusted, **kw):
        return real_verify(signature, (_public_from_line(signature["key"]),), **kw)

    monkeypatch.setattr(signing, "verify", trusts_the_embedded_key)
    assert read_bundle(forged, trusted_keys=trusted).weights["b"].sum() == 0


def _public_from_line(line: str):
    from cryptography.hazmat.primitives.serialization import load_ssh_public_key

    return load_ssh_public_key(" ".join(line.split()[:2]).encode())


def test_unsigned_or_stripped_files_are_refused_with_a_trusted_key(keys):
    trusted = signing.resolve_trusted_keys(keys["pub"])
    with pytest.raises(SignatureError, match="not signed"):
        read_bundle(bundle_bytes(_bundle()), trusted_keys=trusted)
    stripped = _attack(bundle_bytes(_bundle(), signing_key=keys["key"]), weights={"model/b": np.zeros(3)},
                       strip_signature=True)
    with pytest.raises(SignatureError, match="not signed"):
        read_bundle(stripped, trusted_keys=trusted)
    assert read_bundle(stripped).weights["b"].sum() == 0  # without a trusted key it passes: hence the warning


def test_a_model_signature_does_not_pass_for_an_audit_record_signature(keys):
    key = signing.load_signing_key(keys["key"])
    trusted = signing.resolve_trusted_keys(keys["pub"])
    sig = signing.sign(key, domain=signing.MODEL_DOMAIN, message=b"x")
    with pytest.raises(SignatureError, match="not a 'fedtab.audit/1"):
        signing.verify(sig, trusted, domain=signing.AUDIT_DOMAIN, message=b"x", source="r")
    assert signing.verify(sig, trusted, domain=signing.MODEL_DOMAIN, message=b"x", source="r").startswith("SHA256:")


# -- the API and the CLI over a real model file -------------------------------------------------------
def test_fedtab_load_verifies_refuses_the_attack_and_warns_without_a_key(signed_model, keys, tmp_path, monkeypatch):
    monkeypatch.delenv(signing.TRUSTED_KEYS_ENV, raising=False)
    synth = fedtab.load(signed_model, trusted_keys=keys["pub"])
    assert synth.signed_by_ == signing.fingerprint(signing.load_public_key(keys["pub"]))
    forged = tmp_path / "forged.fedtab"
    forged.write_bytes(_attack(signed_model.read_bytes(), weights={ATTACKED: np.array([1.0, 0.0])}))
    with pytest.raises(SignatureError, match="does not match the contents"):
        fedtab.load(forged, trusted_keys=[keys["pub"]])
    monkeypatch.setenv(signing.TRUSTED_KEYS_ENV, str(keys["pub"]))
    with pytest.raises(SignatureError):
        fedtab.load(forged)
    monkeypatch.delenv(signing.TRUSTED_KEYS_ENV)
    with pytest.warns(SignatureNotCheckedWarning, match="model file signature not checked: no trusted key configured"):
        accepted = fedtab.load(forged)
    assert accepted.signed_by_ is None
    np.testing.assert_array_equal(accepted.weights_[ATTACKED.removeprefix("model/")], [1.0, 0.0])  # the edit is live
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a trusted key configured: no warning
        fedtab.load(signed_model, trusted_keys=keys["pub"])


def test_cli_sample_checks_the_signature_and_says_when_it_does_not(cli, signed_model, keys, tmp_path):
    env = {signing.TRUSTED_KEYS_ENV: ""}
    forged = tmp_path / "forged.fedtab"
    forged.write_bytes(_attack(signed_model.read_bytes(), weights={ATTACKED: np.array([1.0, 0.0])}))
    out = tmp_path / "s.csv"
    result = cli("sample", forged, "-n", "20", "-o", out, "--trusted-key", keys["pub"], env=env)
    assert result.exit_code == SignatureError.exit_code == 7, result.output
    assert "does not match the contents" in result.output and "Traceback" not in result.output
    assert not out.exists()
    result = cli("sample", forged, "-n", "20", "-o", out, env={signing.TRUSTED_KEYS_ENV: str(keys["pub"])})
    assert result.exit_code == 7 and not out.exists()
    result = cli("sample", signed_model, "-n", "20", "-o", out, "--trusted-key", keys["pub"], env=env)
    assert result.exit_code == 0 and "model file signature checked: signed by trusted key SHA256:" in result.output
    result = cli("sample", forged, "-n", "20", "-o", tmp_path / "t.csv", env=env)
    assert result.exit_code == 0, result.output
    assert result.output.count("model file signature not checked: no trusted key configured") == 1
    result = cli("sample", signed_model, "-n", "20", "-o", tmp_path / "u.csv", "--trusted-key", tmp_path / "none.pub")
    assert result.exit_code == ConfigError.exit_code and "trusted key file not found" in result.output


def test_cli_evaluate_and_release_refuse_an_unsigned_model_before_any_site_is_asked(cli, signed_model, keys, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SignatureNotCheckedWarning)
        fedtab.load(signed_model).save(tmp_path / "unsigned.fedtab")  # a loaded model has no signing key
    cfg = tmp_path / "job.toml"
    cfg.write_text(f'[sites.cleveland]\nsource = "{BUNDLED}/heart_cleveland.csv"\n')
    result = cli("evaluate", tmp_path / "unsigned.fedtab", cfg, "-o", tmp_path / "r.html", "--trusted-key", keys["pub"])
    assert result.exit_code == 7 and "not signed" in result.output, result.output
    assert not (tmp_path / "r.html").exists()
    result = cli("release", cfg, "--model", tmp_path / "unsigned.fedtab", "--out", tmp_path / "rel",
                 "--trusted-key", keys["pub"])
    assert result.exit_code == 7 and "not signed" in result.output, result.output
    assert not (tmp_path / "rel" / "audit.json").exists()


def test_a_bad_signing_key_is_refused_before_any_work(cli, keys, tmp_path):
    loose = tmp_path / "loose"
    loose.write_bytes(keys["key"].read_bytes())
    loose.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        fedtab.FederatedSynthesizer(signing_key=loose)
    with pytest.raises(ConfigError, match="not an unencrypted Ed25519 private key"):
        fedtab.FederatedSynthesizer(signing_key=keys["pub"])
    cfg = tmp_path / "job.toml"
    cfg.write_text(f'signing_key = "missing.key"\n[sites.cleveland]\nsource = "{BUNDLED}/heart_cleveland.csv"\n')
    result = cli("train", cfg, "-o", tmp_path / "m.fedtab")
    assert result.exit_code == 2 and "'signing_key'" in result.output and "not found" in result.output
    assert not (tmp_path / "m.fedtab").exists()


# -- audit records ------------------------------------------------------------------------------------
def test_audit_record_signed_edit_refused_other_key_refused(cli, keys, tmp_path):
    from fedtab.release import write_audit

    record = {"format": "fedtab.audit/1", "released": False, "failed_checks": ["dcr"], "ledger": {"a": 0.5},
              "sha256": {"model": "ab" * 32}}
    path = write_audit(record, tmp_path / "audit.json", signing_key=keys["key"])
    read = signing.read_audit(path)
    assert signing.verify_record(read, keys["pub"]).startswith("SHA256:")
    assert cli("verify", path, "--trusted-key", keys["pub"]).exit_code == 0
    edited = dict(read, released=True, failed_checks=[])
    (tmp_path / "edited.json").write_text(json.dumps(edited, indent=2))
    with pytest.raises(SignatureError, match="does not match"):
        signing.verify_record(signing.read_audit(tmp_path / "edited.json"), keys["pub"])
    result = cli("verify", tmp_path / "edited.json", "--trusted-key", keys["pub"])
    assert result.exit_code == 7 and "does not match" in result.output
    with pytest.raises(SignatureError, match="not a trusted key"):
        signing.verify_record(read, keys["other_pub"])
    unsigned = write_audit(record, tmp_path / "unsigned.json")
    with pytest.raises(SignatureError, match="not signed"):
        signing.verify_record(signing.read_audit(unsigned), keys["pub"])
    # Broken control: a check of the stated fingerprint alone passes the edited record.
    assert edited["signature"]["fingerprint"] == signing.fingerprint(signing.load_public_key(keys["pub"]))
    result = cli("verify", path)
    assert result.exit_code == 2 and "no trusted key" in result.output


def test_cli_verify_checks_a_model_file(cli, signed_model, keys):
    result = cli("verify", signed_model, "--trusted-key", keys["pub"])
    assert result.exit_code == 0 and "model file signature OK" in result.output
    result = cli("verify", signed_model, "--trusted-key", keys["other_pub"])
    assert result.exit_code == 7 and "not a trusted key" in result.output


def test_wrong_inputs_for_trusted_keys_are_clear(keys, tmp_path, monkeypatch):
    monkeypatch.setenv(signing.TRUSTED_KEYS_ENV, str(tmp_path / "gone.pub"))
    with pytest.raises(ConfigError, match=f"not found.*{signing.TRUSTED_KEYS_ENV}"):
        signing.resolve_trusted_keys(None)
    with pytest.raises(ConfigError, match="not an Ed25519 public key"):
        signing.resolve_trusted_keys(keys["key"])  # the private key given by mistake
    with pytest.raises(SourceError, match="not found"):
        signing.read_audit(tmp_path / "none.json")


@pytest.mark.slow
def test_cli_release_signs_the_audit_record_and_verify_checks_it(cli, signed_model, keys, tmp_path):
    out = tmp_path / "release"
    result = cli("release", signed_model.parent / "job.toml", "--model", signed_model, "--out", out, "-n", "200",
                 "--trusted-key", keys["pub"])
    assert result.exit_code in (0, 10), result.output  # released or refused: the audit record is written either way
    assert "model file signature checked" in result.output
    record = signing.read_audit(out / "audit.json")
    assert record["signature"]["fingerprint"] == signing.fingerprint(signing.load_public_key(keys["pub"]))
    assert cli("verify", out / "audit.json", "--trusted-key", keys["pub"]).exit_code == 0
    assert cli("verify", out / "audit.json", "--trusted-key", keys["other_pub"]).exit_code == 7


def test_readme_signing_section_commands_work(cli, tmp_path, monkeypatch):
    from tests.conftest import REPO

    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index("## Signed model files and keys made at the site")
    section = text[start:text.find("\n## ", start + 5)]
    commands = [line.split("#")[0].split() for line in section.splitlines() if line.startswith("fedtab ")]
    assert [c[1] for c in commands] == ["signing-keygen", "site"]
    monkeypatch.chdir(tmp_path)
    for argv in commands:
        result = cli(*argv[1:])
        assert result.exit_code == 0, (argv, result.output)
    for private in ("keys/coordinator", "keys/cleveland"):
        assert (tmp_path / private).stat().st_mode & 0o777 == 0o600 and (tmp_path / f"{private}.pub").exists()
    signing.load_signing_key("keys/coordinator")  # what 'signing_key = "keys/coordinator"' reads


def test_a_consortium_configuration_names_the_coordinators_signing_key(keys, tmp_path):
    """'fedtab coordinator' builds its synthesizer with FederatedSynthesizer.from_config (deploy/server.py):
    the key named in the consortium file, relative to it, signs what the ServerApp saves."""
    import shutil

    from fedtab.api import FederatedSynthesizer
    from fedtab.deploy.consortium import load_consortium

    (tmp_path / "keys").mkdir()
    shutil.copy(keys["key"], tmp_path / "keys" / "coordinator")
    (tmp_path / "consortium.toml").write_text('signing_key = "keys/coordinator"\n[sites.a]\n[sites.b]\n')
    cfg, _ = load_consortium(tmp_path / "consortium.toml")
    assert cfg.signing_key == str(tmp_path / "keys" / "coordinator")
    synth = FederatedSynthesizer.from_config(cfg)
    assert synth.signing_key == cfg.signing_key
    (tmp_path / "keys" / "coordinator").chmod(0o640)
    with pytest.raises(ConfigError, match="readable by others"):
        load_consortium(tmp_path / "consortium.toml")
