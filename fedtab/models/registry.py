"""Models by name: ``"ctgan"``, ``"tvae"`` and ``"diffusion"`` (trained by rounds of DP-SGD; more register with
``register_model``), and the models trained by measurement (``MEASURED``: noisy marginals summed across sites,
``fedtab.federation.marginals``), each named with the module that holds its options and fitted model."""

from __future__ import annotations

import importlib
from types import ModuleType

from fedtab.errors import ConfigError
from fedtab.models.base import GenerativeModel
from fedtab.models.ctgan import CTGAN
from fedtab.models.diffusion import TabDiffusion
from fedtab.models.tvae import TVAE

_MODELS: dict[str, type[GenerativeModel]] = {m.name: m for m in (CTGAN, TVAE, TabDiffusion)}


# A model trained by measurement, and its module: ``model_options(options)`` (defaults filled in, unknown keys
# refused) and ``MODEL`` (``from_weights(transformer, weights, options)``, ``sample_frame(n, seed=..., relabel=...)``:
# typed rows drawn from its own marginals, no calibration).
MEASURED = {"mst": "fedtab.models.marginal"}


def is_measured(name: str) -> bool:
    """Whether the model ``name`` is trained by measurement (no DP-SGD rounds, no encoding of rows)."""
    return name in MEASURED


def measured_module(name: str) -> ModuleType:
    return importlib.import_module(MEASURED[name])


def register_model(cls: type[GenerativeModel]) -> type[GenerativeModel]:
    """Class decorator: make ``cls`` available under ``cls.name``."""
    if not cls.name:
        raise ConfigError(f"Model class {cls.__name__} needs a non-empty 'name' to be registered.")
    _MODELS[cls.name] = cls
    return cls


def available_models() -> tuple[str, ...]:
    return tuple(sorted(_MODELS))


def get_model_class(name: str) -> type[GenerativeModel]:
    try:
        return _MODELS[name]
    except KeyError:
        raise ConfigError(
            f"The 'model' parameter must be one of {list(available_models())}. Got {name!r} instead."
        ) from None


def create_model(name: str, config=None) -> GenerativeModel:
    """An unbuilt model of this name (call ``build(spans, condition_spans, seed=...)`` next)."""
    return get_model_class(name)(config)
