"""``site.toml``: what one institution runs (``fedtab site --config site.toml``).

Example (relative paths start at this file's folder, wherever ``fedtab site`` is run from)::

    name = "cleveland"                      # must match [sites.cleveland] in the consortium config
    source = "data/heart_cleveland.csv"     # file path or SQLAlchemy URL: read here, never sent
    # table = "patients"                    # for a database URL
    # schema = "heart_schema.json"          # the consortium's schema: the table is checked against it
                                            # at startup (without it: only that it reads and parses)
    max_epsilon = 2.0                       # this site refuses jobs that ask for more
    max_total_epsilon = 4.0                 # ... and any job that would take all its jobs past this
    # max_delta = 1e-5                      # the default; a job's delta must also be < 1 / (10 x rows)
    # allow_non_dp = false                  # the default: jobs without DP (exact statistics) are refused
    # max_evaluations = 10                  # the default: synthetic tables of one job it scores
    # release_policy = "my_policy.toml"     # its own privacy thresholds: a floor under the coordinator's
    superlink = "coordinator.example.org:9093"
    state_dir = "fedtab-site-state"         # lasting ledger of every job + replay cache + the site's log
                                            # + its own evaluation reports (reports/)
                                            # (keep it: it is the site's memory of what it released)

    [tls]
    root_certificates = "ca.pem"            # CA that signed the SuperLink's certificate
    # insecure = true                       # loopback experiments only

    [auth]
    private_key = "keys/cleveland"          # SuperNode authentication key (OpenSSH EC private key)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from fedtab.config import read_toml
from fedtab.errors import ConfigError

from fedtab.privacy.book import POLICY_KEYS, SitePolicy

_KEYS = {"name", "source", "table", "schema", "superlink", "state_dir", "tls", "auth", "port", *POLICY_KEYS}


@dataclass(frozen=True)
class SiteConfig:
    name: str
    source: str
    superlink: str
    state_dir: Path
    table: str | None = None
    policy: SitePolicy = SitePolicy()
    root_certificates: Path | None = None
    insecure: bool = False
    private_key: Path | None = None
    port: int | None = None  # the SuperNode's local Runtime API port (default: a free one)
    schema: Path | None = None  # the consortium's schema file: the table is checked against it at startup


def load_site_config(path: str | Path) -> SiteConfig:
    p = Path(path)
    data = read_toml(p, what="site configuration")
    base = p.parent
    problems = [f"unknown key '{k}'; allowed: {sorted(_KEYS)}" for k in sorted(set(data) - _KEYS)]
    for key in ("name", "source", "superlink"):
        if not isinstance(data.get(key), str) or not data.get(key):
            problems.append(f"'{key}' must be a non-empty string. Got {data.get(key)!r} instead.")
    for key in ("table", "schema", "state_dir"):
        if key in data and (not isinstance(data[key], str) or not data[key]):
            problems.append(f"'{key}' must be a non-empty string. Got {data[key]!r} instead.")
    if isinstance(data.get("name"), str) and data["name"]:
        from fedtab.config import check_site_names

        problems += check_site_names([data["name"]])
    for table in ("tls", "auth"):
        if not isinstance(data.get(table, {}), dict):
            problems.append(f"'{table}' must be a table ([{table}] with keys under it). Got {data[table]!r} instead.")
            data[table] = {}
    policy = SitePolicy()
    try:
        policy = SitePolicy.from_dict(data)
    except ConfigError as e:
        problems += [line.strip()[2:] for line in str(e).splitlines()[1:]]
    tls, auth = data.get("tls", {}), data.get("auth", {})
    insecure = bool(tls.get("insecure", False))
    if not insecure and not tls.get("root_certificates"):
        problems.append("[tls] needs 'root_certificates' (the CA of the SuperLink's certificate), "
                        "or 'insecure = true' for a loopback experiment")
    if problems:
        raise ConfigError(f"{p}: {len(problems)} problem(s):\n" + "\n".join(f"  - {x}" for x in problems))

    def rel(v: str | None) -> Path | None:
        return None if not v else (Path(v) if Path(v).is_absolute() else base / v)

    source = data["source"] if "://" in data["source"] else str(rel(data["source"]))
    return SiteConfig(name=data["name"], source=source, superlink=data["superlink"],
                      state_dir=rel(data.get("state_dir") or f"fedtab-site-{data['name']}"), table=data.get("table"),
                      policy=(policy if policy.release_policy is None else
                              dataclasses.replace(policy, release_policy=str(rel(policy.release_policy)))),
                      root_certificates=rel(tls.get("root_certificates")), insecure=insecure,
                      private_key=rel(auth.get("private_key")), port=data.get("port"), schema=rel(data.get("schema")))


def check_site_source(cfg: SiteConfig, config_path: str | Path) -> str:
    """Read the site's own table as ``fedtab site`` starts: it must exist, read and parse, hold at least
    ``MIN_SITE_ROWS`` rows and, when site.toml names the consortium's ``schema``, conform to it (every
    problem listed). Raises the problem (SourceError 5, SchemaError 3, DataValidationError 4); returns a
    line for the operator. All of it stays at the site: it is the operator's own terminal."""
    from connectors import is_url, read_table
    from fedtab.errors import DataValidationError, Problem, SourceError
    from fedtab.federation.site import MIN_SITE_ROWS
    from fedtab.schema import TableSchema

    where = f"site '{cfg.name}'"
    folder = Path(config_path).resolve().parent
    if not is_url(cfg.source) and not Path(cfg.source).exists():
        raise SourceError(f"{where}: its source {Path(cfg.source).resolve()} does not exist (a relative 'source' "
                          f"in {Path(config_path).name} starts at that file's folder, {folder}); fix 'source' there.")
    schema = None
    if cfg.schema is not None:
        if not cfg.schema.is_file():
            raise SourceError(f"{where}: its schema {cfg.schema.resolve()} does not exist (a relative 'schema' in "
                              f"{Path(config_path).name} starts at that file's folder, {folder}).")
        schema = TableSchema.load(cfg.schema)
    frame = read_table(cfg.source, table=cfg.table, schema=schema)
    if len(frame) < MIN_SITE_ROWS:
        raise DataValidationError(f"{where}: {cfg.source}", [Problem(
            None, f"{len(frame)} row(s); a site needs at least {MIN_SITE_ROWS} to take part (its holdout rows and "
                  "its evaluation use them)")])
    checked = f", conforms to {cfg.schema.name}" if schema is not None else " (no 'schema' in site.toml: not checked " \
                                                                               "against the consortium's schema yet)"
    return f"{where}: read its table {cfg.source}: {len(frame)} rows, {frame.shape[1]} columns{checked}"
