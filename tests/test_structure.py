"""The code's shape, read from its syntax tree: no function too long to hold in one's head, no import circle
(function-level imports included), no import that points up the layers, every import inside a function says why
it is not at the top, and every package's `__init__.py` is empty."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from conftest import ROOT

PACKAGE = ROOT / "mnist_sum"
MODULES = {"mnist_sum." + ".".join(p.relative_to(PACKAGE).with_suffix("").parts): p
           for p in sorted(PACKAGE.rglob("*.py")) if p.stem != "__init__"}
MAX_FUNCTION_LINES = 80
# The layers, bottom first (README: Layout): a module imports from its own layer or the ones below, never above.
# The top-level modules every layer needs (files, launcher, errors, config) are the floor; commands the roof.
LAYERS = ("foundation", "distributed", "data", "model", "tracking", "train", "inference", "commands")
FOUNDATION = ("files", "launcher", "errors", "config")


def _layer(module: str) -> int:
    part = module.split(".")[1]
    return LAYERS.index("foundation" if part in FOUNDATION else part)


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


@pytest.mark.parametrize("module", MODULES)
def test_no_function_is_longer_than_80_lines(module):
    long = [(node.name, node.end_lineno - node.lineno + 1) for node in ast.walk(_tree(MODULES[module]))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"{module}: {long}"


def _imports(path: Path) -> list[tuple[ast.stmt, str, bool]]:
    """(node, imported project module, inside a function?) for every import of a mnist_sum module."""
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.ImportFrom) and child.module and child.module.startswith("mnist_sum"):
                names = [child.module] if child.module != "mnist_sum" else [f"mnist_sum.{a.name}" for a in child.names]
                found.extend((child, name, in_function) for name in names)
            elif isinstance(child, ast.Import):
                found.extend((child, a.name, in_function) for a in child.names if a.name.startswith("mnist_sum."))
            visit(child, inside)

    visit(_tree(path), False)
    return found


def test_the_package_has_no_import_circle_counting_function_level_imports():
    graph = {module: {name for _, name, _ in _imports(path)} for module, path in MODULES.items()}
    assert all(target in MODULES for targets in graph.values() for target in targets), graph

    def cycle_from(start: str, path: list[str]) -> list[str] | None:
        for target in sorted(graph[start]):
            if target in path:
                return [*path[path.index(target):], target]
            found = cycle_from(target, [*path, target])
            if found:
                return found
        return None

    for module in MODULES:
        assert cycle_from(module, [module]) is None, " -> ".join(cycle_from(module, [module]))


def test_every_import_inside_a_function_says_why():
    unexplained = []
    for module, path in MODULES.items():
        lines = path.read_text().splitlines()
        tree = _tree(path)
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for child in ast.walk(node):
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    # A comment on the import's line, or on the line above it, or on an import of the same group.
                    group = range(child.lineno - 2, child.end_lineno)
                    if not any("#" in lines[i] for i in group if 0 <= i < len(lines)):
                        block = [c for c in ast.walk(node) if isinstance(c, (ast.Import, ast.ImportFrom))]
                        if not any("#" in lines[c.lineno - 1] for c in block):
                            unexplained.append(f"{module}:{child.lineno}")
    assert not unexplained, unexplained


def test_the_packages_are_the_layers_and_no_import_points_up():
    assert {m.split(".")[1] for m in MODULES if m.count(".") == 2} == set(LAYERS[1:-1])  # each layer a package
    assert {m.split(".")[1] for m in MODULES if m.count(".") == 1} == {*FOUNDATION, "commands"}
    upward = [f"{module} -> {name}" for module, path in MODULES.items() for _, name, _ in _imports(path)
              if _layer(name) > _layer(module)]
    assert not upward, upward


def test_every_init_is_empty():
    # Importing a package runs its __init__: empty ones keep `--help` from loading torch through a re-export.
    inits = sorted(PACKAGE.rglob("__init__.py"))
    assert len(inits) == len(LAYERS) - 1 and all(p.read_text() == "" for p in inits), inits


def test_the_readme_is_a_front_page_whose_links_lead_somewhere():
    # Depth lives in docs/, one page per concern; the README stays short enough to read as a front page.
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    assert len((ROOT / "README.md").read_text().splitlines()) <= 300
    broken = [f"{page.name}: {link}" for page in pages for link in re.findall(r"\]\(([^)#]+)\)", page.read_text())
              if not link.startswith("http") and not (page.parent / link).exists()]
    assert not broken, broken
    linked = set(re.findall(r"docs/([\w-]+\.md)", (ROOT / "README.md").read_text()))
    assert linked == {p.name for p in pages[1:]}  # every docs page is reachable from the front page
