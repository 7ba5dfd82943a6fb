"""fedtab: federated, differentially private synthetic tables.

Public API: ``FederatedSynthesizer``, ``load``, ``datasets``; errors in ``fedtab.errors``.
"""

__version__ = "0.1.0"

from fedtab import datasets  # noqa: E402
from fedtab.api import FederatedSynthesizer, load  # noqa: E402

__all__ = ["FederatedSynthesizer", "load", "datasets", "__version__"]
