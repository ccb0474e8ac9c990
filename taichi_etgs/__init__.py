"""taichi-etgs: cryo-ET tomograms from adaptive 3D Gaussians, plus WBP and SIRT.

Importing this package is cheap: it neither imports nor initialises Taichi. The Python
API (:mod:`taichi_etgs.api`) loads on first use::

    import taichi_etgs

    tomo = taichi_etgs.reconstruct("TS_01.mrc", "TS_01.tlt", thickness=300, binning=4)
    wbp = taichi_etgs.wbp("TS_01.mrc", thickness=300, binning=4, output="TS_01_wbp.mrc")
    sim = taichi_etgs.simulate(shape_zyx=(64, 128, 128), seed=1)
    scores = taichi_etgs.evaluate(tomo.volume, sim.result.ground_truth)

``reconstruct``, ``wbp``, ``sirt`` and ``simulate`` are also the names of this package's
modules (``from taichi_etgs.reconstruct import GaussianReconstruction`` works as ever):
``taichi_etgs.reconstruct`` is that module, made callable, and calling it calls
:func:`taichi_etgs.api.reconstruct`.
"""

import importlib as _importlib
import sys as _sys
import types as _types

__version__ = "0.1.0"

__all__ = ["__version__", "evaluate", "reconstruct", "simulate", "sirt", "wbp"]

# Modules whose name is also an API function: calling the module calls the function.
_CALLABLE_MODULES = ("reconstruct", "wbp", "sirt", "simulate")


class _CallableModule(_types.ModuleType):
    """A module that, called, runs the API function of its name (:mod:`taichi_etgs.api`)."""

    def __call__(self, *args, **kwargs):
        from . import api

        return getattr(api, self.__name__.rpartition(".")[2])(*args, **kwargs)


def _module_property(name: str) -> property:
    key = f"_module_{name}"

    def get(package):
        module = package.__dict__.get(key)
        if module is None:  # not imported yet: importing sets it (below)
            module = _importlib.import_module(f"{__name__}.{name}")
        return module

    def set_(package, module) -> None:
        # The import system sets each submodule as an attribute of its package: make that
        # module callable, whoever imported it first.
        if isinstance(module, _types.ModuleType) and type(module) is _types.ModuleType:
            module.__class__ = _CallableModule
        package.__dict__[key] = module

    def delete(package) -> None:
        package.__dict__.pop(key, None)

    return property(get, set_, delete, f"The module taichi_etgs.{name}, callable: "
                                       f"taichi_etgs.api.{name}.")


class _Package(_types.ModuleType):
    """This package's module type: the callable module attributes above."""


for _name in _CALLABLE_MODULES:
    setattr(_Package, _name, _module_property(_name))
_sys.modules[__name__].__class__ = _Package


def __getattr__(name: str):
    if name == "evaluate":
        from .api import evaluate

        return evaluate
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
