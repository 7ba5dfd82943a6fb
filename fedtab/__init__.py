"""fedtab: federated, differentially private synthetic tables."""

__version__ = "0.1.0"
