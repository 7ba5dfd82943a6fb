"""``site.toml``: what one institution runs (``fedtab site --config site.toml``).

Example (paths are relative to the file)::

    name = "cleveland"                      # must match [sites.cleveland] in the consortium config
    source = "data/heart_cleveland.csv"     # file path or SQLAlchemy URL: read here, never sent
    # table = "patients"                    # for a database URL
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

_KEYS = {"name", "source", "table", "superlink", "state_dir", "tls", "auth", "port", *POLICY_KEYS}


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


def load_site_config(path: str | Path) -> SiteConfig:
    p = Path(path)
    data = read_toml(p, what="site configuration")
    base = p.parent
    problems = [f"unknown key '{k}'; allowed: {sorted(_KEYS)}" for k in sorted(set(data) - _KEYS)]
    for key in ("name", "source", "superlink"):
        if not isinstance(data.get(key), str) or not data.get(key):
            problems.append(f"'{key}' must be a non-empty string. Got {data.get(key)!r} instead.")
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
                      private_key=rel(auth.get("private_key")), port=data.get("port"))
