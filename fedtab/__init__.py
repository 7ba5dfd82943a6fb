"""fedtab: federated, differentially private synthetic tables.

Public API: ``FederatedSynthesizer``, ``SitePolicy`` (a site's own rules), ``load``, ``evaluate``,
``datasets``; errors in ``fedtab.errors``.
Imported lazily, so that ``import fedtab`` (and data commands such as ``fedtab inspect``) do not
pay for importing torch and the federation engine.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["FederatedSynthesizer", "SitePolicy", "load", "evaluate", "datasets", "__version__"]

_LAZY = {"FederatedSynthesizer": "fedtab.api", "load": "fedtab.api", "evaluate": "fedtab.assess",
         "datasets": "fedtab.datasets", "SitePolicy": "fedtab.privacy.book"}

if TYPE_CHECKING:  # pragma: no cover
    from fedtab import datasets
    from fedtab.api import FederatedSynthesizer, load
    from fedtab.assess import evaluate
    from fedtab.privacy.book import SitePolicy


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name])
        value = module if name == "datasets" else getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fedtab' has no attribute {name!r}")
