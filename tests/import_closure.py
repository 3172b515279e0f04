"""Which project source files a stage script can execute: the transitive closure of its imports.

Imports inside functions count (stages import lazily), and so do the names that a package
exports lazily (`weaving.__init__._EXPORTS`) and the modules a registry names
(`weaving/catalogue.py`, loaded by `weaving.methods`). Two exceptions, where only
module-level imports are followed: `weaving_pipeline/params.py` imports the registries inside
its validator only to check names, and `weaving/catalogue.py` imports `weaving.methods` only
when a method is registered at run time; neither makes a stage's outputs depend on that code.
"""

from __future__ import annotations

import ast
from pathlib import Path

MODULE_LEVEL_ONLY = {"weaving_pipeline/params.py", "weaving/catalogue.py"}
REGISTRY_LOADERS = {"weaving/methods/__init__.py": "weaving/catalogue.py"}
"""Packages that load the modules a registry names by string ("weaving.methods.ties")."""
SECTION_REGISTRY = "weaving/report/sections.py"
"""Loads `weaving.report.<module>` for every value of its `SECTIONS` dict (the families' report sections)."""


def _section_modules(path: Path) -> set[str]:
    for node in ast.parse(path.read_text()).body:
        target = node.target if isinstance(node, ast.AnnAssign) else (node.targets[0] if isinstance(node, ast.Assign)
                                                                       else None)
        if isinstance(target, ast.Name) and target.id == "SECTIONS" and node.value is not None:
            return {f"weaving.report.{name}" for name in ast.literal_eval(node.value).values()}
    return set()


def module_file(src: Path, module: str) -> Path | None:
    base = src / Path(*module.split("."))
    if (base / "__init__.py").exists():
        return base / "__init__.py"
    if base.with_suffix(".py").exists():
        return base.with_suffix(".py")
    return None


def _lazy_exports(path: Path) -> dict[str, str]:
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in node.targets):
            return ast.literal_eval(node.value)
    return {}


def _imported_modules(path: Path, src: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    relative = path.relative_to(src).as_posix() if path.is_relative_to(src) else ""
    nodes = tree.body if relative in MODULE_LEVEL_ONLY else ast.walk(tree)
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            package_init = module_file(src, node.module)
            exports = _lazy_exports(package_init) if package_init and package_init.name == "__init__.py" else {}
            for alias in node.names:
                found.add(exports.get(alias.name, f"{node.module}.{alias.name}"))
    if relative == SECTION_REGISTRY:
        found.update(_section_modules(path))
    if relative in REGISTRY_LOADERS:
        registry = ast.parse((src / REGISTRY_LOADERS[relative]).read_text())
        found.update(node.value for node in ast.walk(registry) if isinstance(node, ast.Constant)
                     and isinstance(node.value, str) and node.value.startswith("weaving.")
                     and module_file(src, node.value) is not None)
    return found


def closure(script: Path, src: Path, extra: tuple[Path, ...] = ()) -> set[Path]:
    """Project files reachable from `script` (plus `extra` files, e.g. `stages/_common.py`)."""
    seen: set[Path] = set()
    todo = [script, *extra]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for module in _imported_modules(path, src):
            parts = module.split(".")
            for i in range(1, len(parts) + 1):  # a package's __init__ runs before its submodules
                found = module_file(src, ".".join(parts[:i]))
                if found is not None and found not in seen:
                    todo.append(found)
    return seen


# C2M3 (issue 13): the c2m3 params block checks dataset names against the registry inside its validator,
# as params.py does; that makes no stage's outputs depend on the datasets code.
MODULE_LEVEL_ONLY.add("weaving_pipeline/params_c2m3.py")
