"""A stand-in ``torchvision`` for synthcity's TabDDPM on the CPU build of torch 2.13.

synthcity imports ``torchvision.transforms`` (its image data loader) and, through tsai and fastai,
``torchvision.models`` when any plugin loads. PyPI has no CPU build of torchvision 0.28 (the one
matching torch 2.13): its wheel links CUDA torch and fails to load. The tabular TabDDPM plugin never
calls torchvision, so ``run_method.py`` installs this import hook ONLY when the real import fails:
every ``torchvision.*`` module is then an empty module whose attributes are inert placeholders.
"""

import importlib.abc
import importlib.machinery
import sys
import types


class _Inert:
    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return _Inert()

    def __getattr__(self, name):
        return _Inert()

    def __mro_entries__(self, bases):  # a placeholder used as a base class becomes ``object``
        return (object,)


class _StubModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Inert()


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path, target=None):
        if name == "torchvision" or name.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StubModule(spec.name)
        module.__path__, module.__all__ = [], []
        return module

    def exec_module(self, module):
        pass


for _name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
    del sys.modules[_name]  # a half-imported real torchvision
sys.meta_path.insert(0, _Finder())
