"""Models by name: ``"ctgan"``, ``"tvae"`` and ``"diffusion"``; more register with ``register_model``."""

from __future__ import annotations

from fedtab.errors import ConfigError
from fedtab.models.base import GenerativeModel
from fedtab.models.ctgan import CTGAN
from fedtab.models.diffusion import TabDiffusion
from fedtab.models.tvae import TVAE

_MODELS: dict[str, type[GenerativeModel]] = {m.name: m for m in (CTGAN, TVAE, TabDiffusion)}


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
