"""``site.toml``: what one institution runs (``fedtab site --config site.toml``).

Example (paths are relative to the file)::

    name = "cleveland"                      # must match [sites.cleveland] in the consortium config
    source = "data/heart_cleveland.csv"     # file path or SQLAlchemy URL: read here, never sent
    # table = "patients"                    # for a database URL
    max_epsilon = 2.0                       # this site refuses jobs that ask for more
    superlink = "coordinator.example.org:9093"
    state_dir = "fedtab-site-state"         # ledger + replay cache (keep it: it is the site's memory)

    [tls]
    root_certificates = "ca.pem"            # CA that signed the SuperLink's certificate
    # insecure = true                       # loopback experiments only

    [auth]
    private_key = "keys/cleveland"          # SuperNode authentication key (OpenSSH EC private key)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fedtab.config import read_toml
from fedtab.errors import ConfigError

_KEYS = {"name", "source", "table", "max_epsilon", "superlink", "state_dir", "tls", "auth", "port"}


@dataclass(frozen=True)
class SiteConfig:
    name: str
    source: str
    superlink: str
    state_dir: Path
    table: str | None = None
    max_epsilon: float | None = None
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
    eps = data.get("max_epsilon")
    if eps is not None and (isinstance(eps, bool) or not isinstance(eps, (int, float)) or eps <= 0):
        problems.append(f"'max_epsilon' must be a number > 0. Got {eps!r} instead.")
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
                      max_epsilon=None if eps is None else float(eps),
                      root_certificates=rel(tls.get("root_certificates")), insecure=insecure,
                      private_key=rel(auth.get("private_key")), port=data.get("port"))
