"""Imports inside `sam_peft` flow one way, down the layers that `sam_peft`'s docstring lists.

A static check: every `.py` file of `sam_peft/` is parsed with `ast`, and each import (relative ones resolved, those
inside functions and `if TYPE_CHECKING:` blocks included) is checked against the layer of the importing file. Nothing
is imported, so a violation is found however lazily it is written.
"""

from __future__ import annotations

import ast
from pathlib import Path

import sam_peft

PACKAGE = Path(sam_peft.__file__).resolve().parent

# The layer of each top-level part of `sam_peft/`, lowest first (the order of `sam_peft`'s docstring). A module may
# import its own layer and those below it. `metrics` stands apart: it imports no other part of sam_peft, and only the
# top tier imports it (rank 3 gives exactly that to the others; `test_metrics_stand_alone` checks the rest).
RANKS = {
    "tuners": 0,
    "_registration": 0,
    "modeling": 1,
    "data": 2,
    "training": 3,
    "continual": 3,
    "prediction": 3,
    "prompted_prediction": 3,
    "hub": 3,
    "convert": 3,
    "export": 3,
    "metrics": 3,
}
TOP = 4  # `sam_peft/__init__.py`, which imports everything: no part of the package may import it


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    """Whether the dotted `name` is a module or package of `sam_peft/` (what `from package import name` can mean)."""
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) of every import in `path` that names `sam_peft` or one of its modules.

    `from package import name` counts as an import of `package.name` when that is a module, else of `package`.
    """
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module
            submodules = [f"{target}.{alias.name}" for alias in node.names]
            found += [(node.lineno, module) for module in submodules if is_module(module)]
            if not all(is_module(module) for module in submodules):
                found.append((node.lineno, target))
    return [(line, module) for line, module in found if module == "sam_peft" or module.startswith("sam_peft.")]


def layer(module: str) -> str | None:
    """The top-level part of `sam_peft` that `module` belongs to (None for the package itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def tuner_package(module: str) -> str | None:
    """The tuner a module of `sam_peft.tuners` belongs to (`cad` for `sam_peft.tuners.cad.layer`), None for the
    package's own `__init__` and for the shared modules directly under `tuners/` (`base`, `side_layers`, ...)."""
    parts = module.split(".")
    if len(parts) < 3 or parts[1] != "tuners":
        return None
    return parts[2] if (PACKAGE / "tuners" / parts[2] / "__init__.py").is_file() else None


def rank(module: str) -> int:
    return RANKS[layer(module)] if layer(module) else TOP


def source_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def offending(check) -> list[str]:
    """`file:line -> module` for every import for which `check(importer, imported)` is true."""
    found = []
    for path in source_files():
        importer = module_name(path)
        for line, imported in imports(path):
            if check(importer, imported):
                found.append(f"{path.relative_to(PACKAGE.parent)}:{line} -> {imported}")
    return found


def test_every_part_of_the_package_has_a_layer():
    parts = {path.relative_to(PACKAGE).parts[0].removesuffix(".py") for path in source_files()} - {"__init__"}
    assert parts <= RANKS.keys(), f"Place {sorted(parts - RANKS.keys())} in the layers (sam_peft's docstring, RANKS)."


def test_the_package_docstring_names_every_layer():
    missing = [name for name in RANKS if f"`{name}`" not in sam_peft.__doc__]
    assert not missing, f"sam_peft's docstring does not name the layers {missing}."


def test_no_module_imports_a_higher_layer():
    """tuners (and _registration) < modeling < data < training, continual, prediction, hub, convert, metrics."""
    found = offending(lambda importer, imported: rank(imported) > rank(importer))
    assert not found, "Imports against the layer order (sam_peft's docstring):\n" + "\n".join(found)


def test_no_tuner_imports_another_tuner():
    """A tuner's package imports only itself and the shared modules directly under `tuners/`; those shared modules
    import no tuner's package; none of them imports `sam_peft.tuners` itself (which imports every tuner)."""

    def crosses(importer: str, imported: str) -> bool:
        if layer(importer) != "tuners" or layer(imported) != "tuners" or importer == "sam_peft.tuners":
            return False
        target = tuner_package(imported)
        return imported == "sam_peft.tuners" or (target is not None and target != tuner_package(importer))

    found = offending(crosses)
    assert not found, "Imports across tuners (shared code goes directly under tuners/):\n" + "\n".join(found)


def test_metrics_stand_alone():
    found = offending(lambda importer, imported: layer(importer) == "metrics" and layer(imported) != "metrics")
    assert not found, "sam_peft.metrics imports no other part of sam_peft:\n" + "\n".join(found)
