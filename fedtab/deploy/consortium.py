"""The consortium config as the coordinator reads it in a deployment.

Same TOML as ``fedtab train`` (``fedtab.config``), except that a site's ``source`` is optional (the
coordinator never reads a table: each site names its own source in its ``site.toml``) and a site may
name ``public_key``: its SuperNode authentication public key, registered with the SuperLink.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from fedtab.config import RunConfig, config_from_dict, read_toml

AT_SITE = "(read at the site)"


def load_consortium(path: str | Path) -> tuple[RunConfig, dict[str, Path]]:
    """(run config, site name -> public key file) of a consortium TOML."""
    p = Path(path)
    data = read_toml(p)
    keys: dict[str, Path] = {}
    for name, site in (data.get("sites") or {}).items():
        if isinstance(site, dict):
            site.setdefault("source", AT_SITE)
            key = site.pop("public_key", None)
            if key is not None:
                keys[name] = Path(key) if Path(key).is_absolute() else p.parent / key
    cfg = config_from_dict(data, base_dir=p.parent, source=str(p), sources_here=False)  # min_sites checked there
    return cfg, keys


def consortium_job(cfg: RunConfig):
    """(synthesizer, job) of a consortium config: the settings ``fedtab train`` validates and builds (the
    schema file read, the model chosen and its options checked), plus ``training.min_sites``. The
    coordinator builds it before it starts anything, so a bad schema or setting is refused up front
    (with its own exit code), and again in the ServerApp."""
    from fedtab.api import FederatedSynthesizer

    synth = FederatedSynthesizer.from_config(cfg)
    job = synth._job()
    return synth, replace(job, training=replace(job.training, min_sites=cfg.training.min_sites))
