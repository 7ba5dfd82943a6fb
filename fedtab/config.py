"""Run configuration: the TOML file behind ``fedtab train`` and the settings of FederatedSynthesizer.

Example (paths are relative to the TOML file)::

    seed = 0
    schema = "heart_schema.json"      # required under DP; without DP the sites may infer and agree
    ledger_dir = "ledgers"             # optional: each site's lasting ledger (<dir>/<site>/ledger.jsonl),
                                       # so that repeated runs on the same data add up
    signing_key = "keys/coordinator"   # optional: sign the model file and audit record (Ed25519 key made
                                       # by 'fedtab signing-keygen'; fedtab.signing)
    missing_markers = ["?"]
    holdout = 0.2                      # share of each site's rows set aside for evaluation

    [model]
    name = "auto"                      # auto (the default: fedtab chooses and says why) | mst | ctgan | tvae | diffusion

    [privacy]
    epsilon = 1.0                      # per site, preprocessing included; omit for non-DP
    delta = 1e-5
    preprocessing_share = 0.3          # share of epsilon spent on the encoding statistics; omit it and
                                       # it is chosen with the model (fedtab.models.choice)

    [training]
    rounds = 5
    local_epochs = 1.0                 # local passes over a site's rows per round
    batch_size = 500

    [sampling]                         # how `fedtab release` / `fedtab evaluate` draw the table
    quantile_map = false               # map numerical columns onto the agreed marginals too

    [sites.cleveland]
    source = "data/heart_cleveland.csv"
    max_total_epsilon = 3.0            # the site's own rules (fedtab.privacy.book.SitePolicy): also
                                       # max_epsilon, max_delta, allow_non_dp (needed for a non-DP job)
    [sites.va]
    source = "sqlite:///va.db"
    table = "patients"

Every problem in a file is reported at once, naming the key, the value and what is expected.
"""

from __future__ import annotations

import re

import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedtab.errors import ConfigError

MODELS = ("auto", "ctgan", "tvae", "diffusion", "mst")


@dataclass(frozen=True)
class SiteSource:
    """Where a site's table lives: a file path or a SQLAlchemy URL (+ table)."""

    source: str
    table: str | None = None
    policy: dict | None = None  # the site's own rules (SitePolicy keys); None: the defaults


@dataclass(frozen=True)
class PrivacySettings:
    epsilon: float | None = None  # None: non-DP mode (exact statistics, still never raw rows)
    delta: float = 1e-5
    preprocessing_share: float | None = None  # None: chosen with the model (fedtab.models.choice)
    # Under DP with 2+ sites the model's measurements are summed securely and each site adds only its share
    # of the noise (fedtab.federation.secagg): the "mst" model; DP-SGD models keep each site's full noise.
    secure_aggregation: bool = True

    @property
    def enabled(self) -> bool:
        return self.epsilon is not None

    @property
    def preprocessing_epsilon(self) -> float | None:
        if self.epsilon is None:
            return None
        if self.preprocessing_share is None:
            raise ValueError("preprocessing_share is chosen with the model: resolve it first "
                             "(FederatedSynthesizer builds the job with it resolved)")
        return self.epsilon * self.preprocessing_share


AGGREGATIONS = ("mean", "trimmed_mean")
# What the coordinator does when a securely summed round fails its screen (``training.on_failed_sum``): stop
# (no site can be named), or ask the sites to show that round's updates, which it screens one by one.
ON_FAILED_SUM = ("stop", "screen_each")


@dataclass(frozen=True)
class TrainingSettings:
    rounds: int = 5
    local_epochs: float = 1.0
    batch_size: int = 500
    max_grad_norm: float = 1.0
    min_sites: int | None = None  # fewest sites that must answer a round (default: all)
    # How the DP-SGD models' rounds combine the sites' updates (fedtab.federation.coordinator.aggregate).
    aggregation: str = "mean"
    # Under secure aggregation of the updates, a round whose sum fails its screen: "screen_each" (the sites,
    # told so in the job they accept, show that round's updates: fedtab.federation.secure_updates), or "stop".
    on_failed_sum: str = "screen_each"


@dataclass(frozen=True)
class SamplingSettings:
    """How ``fedtab release`` and ``fedtab evaluate`` draw the table (``FederatedSynthesizer.sample``)."""

    quantile_map: bool = False


@dataclass(frozen=True)
class RunConfig:
    sites: dict[str, SiteSource]
    model: str = "auto"
    model_options: dict = field(default_factory=dict)
    privacy: PrivacySettings = PrivacySettings()
    training: TrainingSettings = TrainingSettings()
    seed: int = 0
    schema_path: str | None = None
    missing_markers: tuple[str, ...] = ("?",)
    holdout: float = 0.2
    target: str | None = None
    site_column: str | None = None
    sampling: SamplingSettings = SamplingSettings()
    ledger_dir: str | None = None
    signing_key: str | None = None  # the coordinator's Ed25519 private key file
    # The consortium's public declarations of sites' most rows (``[sites.<name>] rows_at_most``), which the
    # coordinator checks their counts against (``fedtab.federation.screening``: declared site sizes).
    site_rows_at_most: dict[str, int] = field(default_factory=dict)


def _num(problems: list[str], where: str, v: Any, *, lo: float, hi: float = math.inf,
         integer: bool = False, lo_open: bool = False) -> Any:
    ok_type = isinstance(v, int) if integer else isinstance(v, (int, float))
    if isinstance(v, bool) or not ok_type or not math.isfinite(v) or v > hi or (v <= lo if lo_open else v < lo):
        kind = "a whole number" if integer else "a number"
        rng = f"{'(' if lo_open else '['}{lo}, {hi}{']' if math.isfinite(hi) else ')'}"
        problems.append(f"'{where}' must be {kind} in {rng}. Got {v!r} instead.")
    return v


def check_settings(*, model: str, privacy: PrivacySettings, training: TrainingSettings,
                   holdout: float, where: str = "") -> list[str]:
    """Every problem with the settings (empty when they are fine)."""
    p: list[str] = []
    pre = f"{where}." if where else ""
    if not isinstance(model, str) or model not in MODELS:
        p.append(f"'{pre}model' must be one of {list(MODELS)}. Got {model!r} instead.")
    if privacy.epsilon is not None:
        _num(p, f"{pre}epsilon", privacy.epsilon, lo=0, hi=MAX_EPSILON, lo_open=True)
    _num(p, f"{pre}delta", privacy.delta, lo=0, hi=0.1, lo_open=True)
    if privacy.preprocessing_share is not None:
        _num(p, f"{pre}preprocessing_share", privacy.preprocessing_share, lo=0, hi=0.9, lo_open=True)
    if not isinstance(privacy.secure_aggregation, bool):
        p.append(f"'{pre}secure_aggregation' must be true or false. Got {privacy.secure_aggregation!r} instead.")
    _num(p, f"{pre}rounds", training.rounds, lo=1, hi=10_000, integer=True)
    _num(p, f"{pre}local_epochs", training.local_epochs, lo=0, hi=1000, lo_open=True)
    _num(p, f"{pre}batch_size", training.batch_size, lo=2, hi=1_000_000, integer=True)
    _num(p, f"{pre}max_grad_norm", training.max_grad_norm, lo=0, lo_open=True)
    if training.min_sites is not None:
        _num(p, f"{pre}min_sites", training.min_sites, lo=1, integer=True)
    if training.aggregation not in AGGREGATIONS:
        p.append(f"'{pre}aggregation' must be one of {list(AGGREGATIONS)}. Got {training.aggregation!r} instead.")
    if training.on_failed_sum not in ON_FAILED_SUM:
        p.append(f"'{pre}on_failed_sum' must be one of {list(ON_FAILED_SUM)}. Got {training.on_failed_sum!r} instead.")
    _num(p, f"{pre}holdout", holdout, lo=0, hi=0.9)
    return p


def read_toml(path: str | Path, *, what: str = "configuration file") -> dict:
    """A TOML file as a dict, or a ConfigError naming the file and what went wrong."""
    p = Path(path)
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{p}: {what} not found.") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: cannot read the {what} ({e}).") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: not valid TOML ({e}).") from None


def load_config(path: str | Path) -> RunConfig:
    """Read and validate a run configuration TOML file."""
    p = Path(path)
    return config_from_dict(read_toml(p), base_dir=p.parent, source=str(p))


TABLE_EXAMPLES = {"model": 'name = "mst"', "privacy": "epsilon = 1.0", "training": "rounds = 5",
                  "sampling": "quantile_map = false"}
# A site's name names its folders (ledgers, reports, keys): letters, digits, '_', '-' and '.', not
# starting with '.' or '-', at most 64 characters; unique without regard to case (folders on some systems).
SITE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
MAX_EPSILON = 1000.0  # per site: beyond it the accountant's figures mean nothing (no DP in practice)


def check_site_names(names, *, where: str = "") -> list[str]:
    """Problems with a list of site names: unsafe characters (a name becomes a folder: '../b' would
    write outside it), empty, or the same name twice (without regard to case)."""
    problems, seen = [], {}
    for name in names:
        if not isinstance(name, str) or not SITE_NAME.fullmatch(name):
            problems.append(f"{where}site name {name!r} is not allowed: use letters, digits, '_', '-' and '.' (not "
                            "first), at most 64 characters (it names the site's folders)")
            continue
        key = name.casefold()
        if key in seen:
            problems.append(f"{where}site names {seen[key]!r} and {name!r} are the same name (case is ignored: "
                            "each names a folder); rename one")
        seen.setdefault(key, name)
    return problems


_TOP = {"seed", "schema", "missing_markers", "holdout", "target", "site_column", "model", "privacy", "training",
        "sampling", "sites", "ledger_dir", "signing_key"}


def config_from_dict(data: dict, *, base_dir: Path = Path("."), source: str = "config",
                     sources_here: bool = True) -> RunConfig:
    """A validated run configuration; every problem at once (ConfigError). ``sources_here``: the sites'
    sources are read here (not a consortium's, whose sources live at the sites): one file may not be
    two sites."""
    problems: list[str] = []
    for k in sorted(set(data) - _TOP):
        problems.append(f"unknown key '{k}'; allowed: {sorted(_TOP)}")
    tables = {}
    for key, example in TABLE_EXAMPLES.items():  # [model], [privacy], [training], [sampling] are tables
        value = data.get(key, {})
        if not isinstance(value, dict):
            problems.append(f"'{key}' must be a table ([{key}] with keys under it), not {value!r}; for example:\n"
                            f"      [{key}]\n      {example}")
            value = {}
        tables[key] = value
    model_tbl = dict(tables["model"])
    model = model_tbl.pop("name", "auto")
    priv_tbl, train_tbl, sampling_tbl = tables["privacy"], tables["training"], tables["sampling"]
    for tbl, name, allowed in ((priv_tbl, "privacy", PrivacySettings.__dataclass_fields__),
                               (train_tbl, "training", TrainingSettings.__dataclass_fields__),
                               (sampling_tbl, "sampling", SamplingSettings.__dataclass_fields__)):
        for k in sorted(set(tbl) - set(allowed)):
            problems.append(f"unknown key '{name}.{k}'; allowed: {sorted(allowed)}")
    for k, v in sampling_tbl.items():
        if k in SamplingSettings.__dataclass_fields__ and not isinstance(v, bool):
            problems.append(f"'sampling.{k}' must be true or false. Got {v!r} instead.")
    sampling = SamplingSettings(**{k: v for k, v in sampling_tbl.items() if k in SamplingSettings.__dataclass_fields__})
    privacy = PrivacySettings(**{k: v for k, v in priv_tbl.items() if k in PrivacySettings.__dataclass_fields__})
    training = TrainingSettings(**{k: v for k, v in train_tbl.items() if k in TrainingSettings.__dataclass_fields__})
    holdout = data.get("holdout", 0.2)
    problems += check_settings(model=model, privacy=privacy, training=training, holdout=holdout)
    seed = data.get("seed", 0)
    _num(problems, "seed", seed, lo=0, hi=2**32 - 1, integer=True)
    sites: dict[str, SiteSource] = {}
    raw_sites = data.get("sites")
    if not isinstance(raw_sites, dict) or not raw_sites:
        problems.append("'sites' must name at least one site, e.g. [sites.cleveland] source = \"cleveland.csv\"")
        raw_sites = {}
    from fedtab.privacy.book import POLICY_KEYS, SitePolicy  # here: data commands never import the privacy stack

    problems += check_site_names(list(raw_sites))
    declared: dict[str, int] = {}  # [sites.<name>] rows_at_most
    for name, s in raw_sites.items():
        if not isinstance(s, dict) or not isinstance(s.get("source"), str):
            problems.append(f"site '{name}': needs a 'source' (a file path or a SQLAlchemy URL)")
            continue
        allowed = {"source", "table", "rows_at_most", *POLICY_KEYS}
        extra = sorted(set(s) - allowed)
        if extra:
            problems.append(f"site '{name}': unknown key(s) {extra}; allowed: {sorted(allowed)}")
        policy = {k: s[k] for k in POLICY_KEYS if k in s} or None
        if policy is not None and isinstance(policy.get("release_policy"), str):
            policy["release_policy"] = _resolve(policy["release_policy"], base_dir)
        if policy is not None:
            try:
                SitePolicy.from_dict(policy)
            except ConfigError as e:
                problems += [f"site '{name}': {line.strip()[2:]}" for line in str(e).splitlines()[1:]]
        if "rows_at_most" in s:
            declared[name] = _num(problems, f"sites.{name}.rows_at_most", s["rows_at_most"], lo=1, integer=True)
        sites[name] = SiteSource(source=_resolve(s["source"], base_dir), table=s.get("table"), policy=policy)
    by_source: dict[tuple, str] = {}
    for name, src in (sites.items() if sources_here else ()):  # one table read by two sites would count its rows twice
        key = (src.source if "://" in src.source else str(Path(src.source).resolve()), src.table)
        if key in by_source:
            problems.append(f"sites '{by_source[key]}' and '{name}' read the same source ({src.source}"
                            f"{'' if src.table is None else ', table ' + src.table}); each site has its own table")
        by_source.setdefault(key, name)
    if training.min_sites is not None and isinstance(training.min_sites, int) and sites \
            and training.min_sites > len(sites):
        problems.append(f"'training.min_sites' is {training.min_sites} but only {len(sites)} site(s) are named; "
                        "lower it or name more sites")
    ledger_dir = data.get("ledger_dir")
    if ledger_dir is not None and (not isinstance(ledger_dir, str) or not ledger_dir):
        problems.append(f"'ledger_dir' must be a directory path. Got {ledger_dir!r} instead.")
    schema = data.get("schema")
    if schema is not None and (not isinstance(schema, str) or not schema):
        problems.append(f"'schema' must be the path of a schema JSON file (e.g. \"schema.json\"). Got {schema!r} instead.")
    markers = data.get("missing_markers", ["?"])
    if not isinstance(markers, list) or not all(isinstance(m, str) for m in markers):
        problems.append(f"'missing_markers' must be a list of strings. Got {markers!r} instead.")
        markers = ["?"]
    if privacy.epsilon is not None and schema is None:
        problems.append("'schema' must name the consortium's schema file under DP (privacy.epsilon is set): sites "
                        "never infer a schema for the coordinator; run 'fedtab schema infer' at a site, review it "
                        "(declare public bounds and categories) and name it here")
    signing_key = data.get("signing_key")
    if signing_key is not None:
        if not isinstance(signing_key, str) or not signing_key:
            problems.append(f"'signing_key' must be the path of an Ed25519 private key file. Got {signing_key!r} instead.")
            signing_key = None
        else:
            from fedtab.signing import load_signing_key

            signing_key = _resolve(signing_key, base_dir)
            try:  # refused here, before any site is asked, not when the model file is written
                load_signing_key(signing_key)
            except ConfigError as e:
                problems.append(f"'signing_key': {e}")
    site_column = data.get("site_column")
    if site_column is not None and (not isinstance(site_column, str) or not site_column):
        problems.append(f"'site_column' must be a column name (e.g. \"hospital\"). Got {site_column!r} instead.")
    if problems:
        raise ConfigError(f"{source}: {len(problems)} problem(s):\n" + "\n".join(f"  - {x}" for x in problems))
    return RunConfig(
        sites=sites, model=model, model_options=model_tbl, privacy=privacy, training=training,
        seed=seed, schema_path=_resolve(schema, base_dir) if isinstance(schema, str) else None,
        missing_markers=tuple(markers), holdout=float(holdout), target=data.get("target"), site_column=site_column,
        sampling=sampling, ledger_dir=_resolve(ledger_dir, base_dir) if isinstance(ledger_dir, str) else None,
        signing_key=signing_key, site_rows_at_most=declared,
    )


def _resolve(source: str, base_dir: Path) -> str:
    if "://" in source:
        return source
    path = Path(source)
    return str(path if path.is_absolute() else (base_dir / path))
