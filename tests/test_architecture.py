"""The package's layout rules (docs/architecture.md), checked on the sources' imports."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "taichi_etgs"
DOMAIN = ("classical", "gaussian", "alignment", "simulation", "evaluation", "io", "kernels")


def _imports(path: Path, names: bool = False) -> list:
    """Every module a source file imports (top level or inside functions), absolute; with
    ``names``, ``(module, [imported names])`` pairs."""
    package = ["taichi_etgs", *path.relative_to(PACKAGE).parent.parts]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module or ""
            else:
                parent = package[:len(package) - (node.level - 1)]
                base = ".".join(parent + ([node.module] if node.module else []))
            imported = [a.name for a in node.names]
            # `from . import x` may import the module x
            found += ([(base, imported)] if node.module
                      else [(f"{base}.{name}", []) for name in imported])
    return found if names else [module for module, _ in found]


def _sources(folder: str) -> list[Path]:
    return sorted((PACKAGE / folder).rglob("*.py"))


@pytest.mark.parametrize("path", _sources("kernels"), ids=lambda p: p.name)
def test_kernels_import_nothing_but_taichi_numpy_and_the_runtime(path):
    allowed_package = {"taichi_etgs._ti", "taichi_etgs.runtime"}
    for name in _imports(path):
        top = name.split(".")[0]
        if top in ("taichi", "numpy") or (top in sys.stdlib_module_names and top != "taichi_etgs"):
            continue
        assert name in allowed_package or name.startswith("taichi_etgs.kernels"), \
            f"{path.name} imports {name}"


@pytest.mark.parametrize("folder", DOMAIN)
def test_domain_packages_do_not_import_the_application_layers(folder):
    """Methods, files and kernels know nothing of commands, sessions or the API; of the
    pipeline they use only its two leaves, the output guard and the JSON encoder."""
    allowed = {"taichi_etgs.pipeline", "taichi_etgs.pipeline.outputs",
               "taichi_etgs.pipeline.jsonio"}
    for path in _sources(folder):
        for name in _imports(path):
            if name.startswith(("taichi_etgs.cli", "taichi_etgs.api", "taichi_etgs.demo")):
                pytest.fail(f"{path.relative_to(PACKAGE)} imports {name}")
            if name.startswith("taichi_etgs.pipeline") and name not in allowed:
                pytest.fail(f"{path.relative_to(PACKAGE)} imports {name}")


def test_command_modules_stay_thin():
    """cli/: parse, call the pipeline, report; no module over ~400 lines. Of the methods
    a command may name only settings (``...Config`` classes)."""
    for path in _sources("cli"):
        lines = len(path.read_text().splitlines())
        assert lines <= 400, f"{path.name} has {lines} lines"
        for module, imported in _imports(path, names=True):
            if module.split(".")[1:2] and module.split(".")[1] in DOMAIN[:4]:
                assert imported and all(n.endswith("Config") for n in imported), \
                    f"cli/{path.name} imports {imported} from {module}: commands go " \
                    f"through the pipeline"


def test_docstrings_point_at_documents_in_the_repository():
    """Docstrings cite docs/method.md, docs/conventions.md, docs/architecture.md: files
    that exist, and no design notes that are not in the repository."""
    docs = PACKAGE.parent / "docs"
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        assert "design.md" not in text, path.relative_to(PACKAGE)
        for name in ("method.md", "conventions.md", "architecture.md"):
            if f"docs/{name}" in text:
                assert (docs / name).is_file(), name
