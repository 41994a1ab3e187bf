#!/usr/bin/env python3
"""Import graph of the installed packages, checked against the layering.

    python scripts/import_graph.py            # print the layer edges, check
    python scripts/import_graph.py --edges    # print every module edge too

Layers (imports run one way: kernels -> op -> loss -> tools):

* tools: ``myxtts_ops.tools.*`` and ``myxtts_ops.__main__`` (the CLI entry point);
* loss:  ``myxtts_loss.*`` and ``myxtts.*``;
* op:    every other ``myxtts_ops`` module.

Every ``import`` / ``from ... import`` statement counts, wherever it is (module
level or inside a function), and so do ``importlib.import_module("literal")``
calls. Checks: no cycle; no op module imports the loss side or the tools; no
loss module imports the tools. Exit status 1 with the violations listed.
Reads the packages that ``import`` would load (the installed ones), not the
source tree, unless only the source tree is on the path.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import os
import sys

PACKAGES = ("myxtts_ops", "myxtts_loss", "myxtts")
LOSS_PACKAGES = ("myxtts_loss", "myxtts")
TOOLS_PREFIX = "myxtts_ops.tools"
TOOLS_MODULES = ("myxtts_ops.__main__",)


def layer_of(module: str) -> str:
    """ "tools", "loss" or "op" for a module of one of :data:`PACKAGES`."""
    top = module.split(".")[0]
    if module == TOOLS_PREFIX or module.startswith(TOOLS_PREFIX + ".") or module in TOOLS_MODULES:
        return "tools"
    if top in LOSS_PACKAGES:
        return "loss"
    return "op"


def package_files(package: str) -> dict[str, str]:
    """{module name: source path} of an importable package (empty if it is absent)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return {}
    if spec is None or not spec.submodule_search_locations:
        return {}
    root = list(spec.submodule_search_locations)[0]
    out = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        rel = os.path.relpath(folder, root)
        parts = [package] + ([] if rel == "." else rel.split(os.sep))
        for name in files:
            if not name.endswith(".py"):
                continue
            stem = name[:-3]
            module = ".".join(parts if stem == "__init__" else parts + [stem])
            out[module] = os.path.join(folder, name)
    return out


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    """Absolute name of a (possibly relative) ``from`` import's module."""
    if level == 0:
        return target or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def imports_of(module: str, path: str, known: set[str]) -> set[str]:
    """Modules of :data:`PACKAGES` that ``module`` imports anywhere in its source."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=path)
    is_package = os.path.basename(path) == "__init__.py"
    found: set[str] = set()

    def add(name: str) -> None:
        if name.split(".")[0] not in PACKAGES:
            return
        # The deepest known module that the name lies in (a.b.C -> a.b).
        parts = name.split(".")
        while parts and ".".join(parts) not in known:
            parts.pop()
        found.add(".".join(parts) if parts else name)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, is_package, node.level, node.module)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                add(full if full in known else base)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            add(node.args[0].value)
    found.discard(module)
    return found


def build_graph() -> dict[str, set[str]]:
    """{module: modules it imports} over every module of the installed :data:`PACKAGES`."""
    files: dict[str, str] = {}
    for package in PACKAGES:
        files.update(package_files(package))
    known = set(files)
    return {module: imports_of(module, path, known) for module, path in sorted(files.items())}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


#: Which layers each layer may import (besides itself).
ALLOWED = {"op": {"op"}, "loss": {"op", "loss"}, "tools": {"op", "loss", "tools"}}


def violations(graph: dict[str, set[str]]) -> list[str]:
    problems = []
    cycle = find_cycle(graph)
    if cycle:
        problems.append("import cycle: " + " -> ".join(cycle))
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            src, dst = layer_of(module), layer_of(target)
            if dst not in ALLOWED[src]:
                problems.append(f"{src} module {module} imports {dst} module {target}")
    return problems


def layer_edges(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    return {
        (layer_of(m), layer_of(t))
        for m, ts in graph.items()
        for t in ts
        if layer_of(m) != layer_of(t)
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--edges", action="store_true", help="print every module edge")
    args = ap.parse_args(argv)
    graph = build_graph()
    print(f"{len(graph)} modules in {', '.join(p for p in PACKAGES if package_files(p))}")
    for src, dst in sorted(layer_edges(graph)):
        print(f"layer edge: {src} -> {dst}")
    if args.edges:
        for module, targets in graph.items():
            for target in sorted(targets):
                print(f"  {module} -> {target}")
    problems = violations(graph)
    for p in problems:
        print(f"VIOLATION: {p}")
    print("import graph: " + ("OK" if not problems else f"{len(problems)} violation(s)"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
