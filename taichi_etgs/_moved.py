"""The old module paths: modules that lived at the top level of the package before the
domain subpackages still import under their old names (with a DeprecationWarning), so
that scripts written against them keep working.

``import taichi_etgs.reconstruct`` gives the module :mod:`taichi_etgs.gaussian.fit`
itself (not a copy): its classes and functions are the same objects under both names.
"""

from __future__ import annotations

import importlib
import sys
import warnings

__all__ = ["MOVED", "install"]

_PACKAGE = __name__.rpartition(".")[0]

#: Old module (under taichi_etgs) -> where it lives now.
MOVED = {
    "projector": "classical.projector",
    "wbp": "classical.wbp",
    "sirt": "classical.sirt",
    "gaussians": "gaussian.params",
    "init": "gaussian.seeding",
    "loss": "gaussian.loss",
    "optim": "gaussian.optim",
    "densify": "gaussian.densify",
    "reconstruct": "gaussian.fit",
    "background": "gaussian.background",
    "transfer": "gaussian.transfer",
    "regularize": "gaussian.regularize",
    "state": "gaussian.state",
    "convert": "gaussian.gaussianize",
    "simulate": "simulation.simulate",
    "specimen": "simulation.specimen",
    "phantom": "simulation.phantom",
    "noise": "simulation.imaging",
    "metrics": "evaluation.metrics",
    "figures": "evaluation.figures",
}


class _OldPaths:
    """A meta-path finder and loader that answers an old module name with the new module."""

    def find_spec(self, fullname: str, path=None, target=None):
        package, _, name = fullname.rpartition(".")
        if package != _PACKAGE or name not in MOVED:
            return None
        from importlib.machinery import ModuleSpec

        return ModuleSpec(fullname, self)

    def create_module(self, spec):
        new = f"{_PACKAGE}.{MOVED[spec.name.rpartition('.')[2]]}"
        warnings.warn(f"{spec.name} is now {new}", DeprecationWarning, stacklevel=2)
        module = importlib.import_module(new)
        spec.loader_state = module.__spec__  # the import system sets ours on the module
        return module

    def exec_module(self, module) -> None:
        """Nothing to run (the module was imported under its new name): give it back its
        own spec, so that its relative imports resolve where it lives."""
        module.__spec__ = module.__spec__.loader_state


_FINDER = _OldPaths()


def install() -> None:
    """Answer the old names (after every other finder: a real module always wins)."""
    if _FINDER not in sys.meta_path:
        sys.meta_path.append(_FINDER)
