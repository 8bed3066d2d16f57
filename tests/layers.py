"""The layering rules of ``fusestore/__init__.py``, as data, and a checker over a source tree.

Every import of a module (at module level or inside a function: both load
the module when they run) is checked against the rules below.
"""

from __future__ import annotations

import ast
from pathlib import Path

BASE = {"errors", "digests", "linux", "private"}

# What each layer may import of ours, besides itself and the base modules.
MAY_IMPORT: dict[str, set[str]] = {
    "base": set(),
    "client": set(),
    "pool": set(),
    "catalog": set(),
    "store": {"pool", "catalog"},
    "fs": {"store", "client", "pool"},  # pool: the types of the staging files and readers the store hands out
    "cli": {"fs", "store", "client"},
    "top": {"store", "cli"},  # fusestore/__init__.py and __main__.py
}
# Outside libraries that only some layers may import.
RESTRICTED = {"lmdb": {"catalog"}, "pyfuse3": {"fs"}, "trio": {"fs"}}


def layer_of(parts: tuple[str, ...]) -> str:
    """The layer of a module, from its dotted name below the package (``("store", "tree")``)."""
    head = parts[0] if parts else "__init__"
    if head in BASE:
        return "base"
    if head in ("__init__", "__main__"):
        return "top"
    return head


def _imported(tree: ast.AST, module: tuple[str, ...], is_package: bool) -> list[tuple[int, str]]:
    """(line, absolute dotted name) of every import in a module of the package."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                found.append((node.lineno, node.module or ""))
                continue
            here = list(module) if is_package else list(module[:-1])
            base = here[: len(here) - (node.level - 1)]
            target = ".".join(["fusestore", *base, *([node.module] if node.module else [])])
            if node.module:
                found.append((node.lineno, target))
            else:  # from . import a, b: each is a module of that package
                found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
    return found


def violations(package: Path) -> list[str]:
    """Every import in the ``fusestore`` package at ``package`` that breaks the rules."""
    problems = []
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package).with_suffix("")
        is_package = relative.name == "__init__"
        module = tuple(relative.parts[:-1]) if is_package else tuple(relative.parts)
        layer = layer_of(module)
        for line, name in _imported(ast.parse(path.read_text(), str(path)), module, is_package):
            top, *rest = name.split(".")
            where = f"{path.relative_to(package.parent)}:{line}"
            if top == "fusestore":
                target = layer_of(tuple(rest))
                if target not in ("base", layer) and target not in MAY_IMPORT[layer]:
                    problems.append(f"{where}: the {layer} layer imports {name} (layer {target})")
                if layer == "base" and target == "base" and rest and rest[0] not in BASE:
                    problems.append(f"{where}: a base module imports {name}")
            elif top in RESTRICTED and layer not in RESTRICTED[top]:
                problems.append(f"{where}: the {layer} layer imports {top}")
    return problems
