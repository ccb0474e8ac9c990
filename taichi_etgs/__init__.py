"""taichi-etgs: cryo-ET tomograms from adaptive 3D Gaussians, plus WBP and SIRT.

Importing this package is cheap: it neither imports nor initialises Taichi. The Python
API (:mod:`taichi_etgs.api`) loads on first use::

    import taichi_etgs

    tomo = taichi_etgs.reconstruct("TS_01.mrc", "TS_01.tlt", thickness=300, binning=4)
    wbp = taichi_etgs.wbp("TS_01.mrc", thickness=300, binning=4, output="TS_01_wbp.mrc")
    sim = taichi_etgs.simulate(shape_zyx=(64, 128, 128), seed=1)
    scores = taichi_etgs.evaluate(tomo.volume, sim.result.ground_truth)

What lives where (docs/architecture.md): the methods by domain in :mod:`.classical`
(projector, WBP, SIRT), :mod:`.gaussian` (the Gaussian model, its rendering, seeding,
fitting and state), :mod:`.simulation` and :mod:`.evaluation`; files in :mod:`.io`;
Taichi kernels in :mod:`.kernels`; what a command does, with its checks, in
:mod:`.pipeline`; the command line in :mod:`.cli`.

Modules that lived at the top level before the subpackages (``taichi_etgs.reconstruct``,
``taichi_etgs.gaussians``, ``taichi_etgs.metrics``, ...) still import under their old
names, with a DeprecationWarning (:mod:`taichi_etgs._moved`); ``taichi_etgs.reconstruct``
and its siblings, as attributes of the package, are the API functions.
"""

import sys as _sys
import types as _types

from . import _moved

__version__ = "0.1.0"

__all__ = ["__version__", "evaluate", "reconstruct", "simulate", "sirt", "wbp"]

_API = ("evaluate", "reconstruct", "simulate", "sirt", "wbp")


def _api_property(name: str) -> property:
    def get(package):
        from . import api

        return getattr(api, name)

    def set_(package, value) -> None:
        # Importing an old module path of that name (taichi_etgs.reconstruct, now
        # taichi_etgs.gaussian.fit) sets it on its package: the name stays the function.
        pass

    return property(get, set_, None, f"taichi_etgs.api.{name}")


class _Package(_types.ModuleType):
    """This package's module type: the API functions as attributes nothing shadows."""


for _name in _API:
    setattr(_Package, _name, _api_property(_name))
_sys.modules[__name__].__class__ = _Package
_moved.install()


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
