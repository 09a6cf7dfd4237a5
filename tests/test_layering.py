"""The import structure of the product code (issue 13): no circles between project modules,
counting imports inside functions; `optimize/` never imports `passes/`; no private name imported
from another project module.

No function over 100 lines and no file over 600 lines in the product code (a function a reader can
hold at once).

Run as a script (`python tests/test_layering.py`) to print the edges of every circle.
"""

from __future__ import annotations

import ast
import functools
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("optimize", "passes", "cli")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


@functools.cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute name `from ... import` refers to (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


@functools.cache
def _imports(path: Path, module: str) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import, function-local ones too,
    `if TYPE_CHECKING:` blocks excluded (they never run)."""
    tree = _tree(path)
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for child in node.body for n in ast.walk(child))
    found = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = _absolute(node, module, path.name == "__init__.py")
            found.append((target, [a.name for a in node.names], node.lineno))
    return found


def import_edges() -> dict[str, dict[str, int]]:
    """module -> {imported project module: line}. `from pkg import mod` is an edge to `pkg.mod`
    when that is a module (as import-linter's grimp counts it); parent packages are not edges."""
    modules = project_modules()
    edges: dict[str, dict[str, int]] = {m: {} for m in modules}
    for module, path in modules.items():
        for target, names, line in _imports(path, module):
            subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in modules]
            for dest in subs or ([target] if target in modules else []):
                if dest != module:
                    edges[module].setdefault(dest, line)
    return edges


def circles(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    result: list[list[str]] = []
    counter = 0
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, {})))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    result.append(sorted(component))
    return result


def describe(component: list[str], edges: dict[str, dict[str, int]]) -> str:
    members = set(component)
    lines = [f"circle of {len(component)}: {', '.join(component)}"]
    for src in component:
        for dest, line in sorted(edges[src].items()):
            if dest in members:
                lines.append(f"  {src}:{line} -> {dest}")
    return "\n".join(lines)


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _module_aliases(path: Path, module: str, modules: dict[str, Path]) -> dict[str, str]:
    """Local names bound to project modules in a file: `import a.b as B`, `from a import b`."""
    aliases = {}
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            aliases.update({a.asname: a.name for a in node.names if a.asname and a.name in modules})
        elif isinstance(node, ast.ImportFrom):
            target = _absolute(node, module, path.name == "__init__.py")
            for a in node.names:
                if f"{target}.{a.name}" in modules:
                    aliases[a.asname or a.name] = f"{target}.{a.name}"
    return aliases


def private_imports() -> list[str]:
    """`from project.module import _name`, and `module._name` through an imported project module,
    across modules."""
    modules = project_modules()
    found = []
    for module, path in modules.items():
        for target, names, line in _imports(path, module):
            if target in modules and target != module:
                found += [f"{module}:{line}: {target}.{n}" for n in names if _private(n)]
        aliases = _module_aliases(path, module, modules)
        for node in ast.walk(_tree(path)):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and _private(node.attr)
                    and aliases.get(node.value.id, module) != module):
                found.append(f"{module}:{node.lineno}: {aliases[node.value.id]}.{node.attr}")
    return found


def library_imports_of_passes() -> list[str]:
    edges = import_edges()
    return [
        f"{src}:{line} -> {dest}"
        for src, dests in edges.items()
        if src.split(".")[0] == "optimize"
        for dest, line in dests.items()
        if dest.split(".")[0] == "passes"
    ]


def test_no_import_circles():
    edges = import_edges()
    assert "optimize.pipeline" in edges and edges["optimize.pipeline"], "the checker found nothing"
    found = circles(edges)
    assert not found, "\n".join(describe(c, edges) for c in found)


def test_library_never_imports_passes():
    assert not (found := library_imports_of_passes()), "\n".join(found)


def test_no_private_names_across_modules():
    assert not (found := private_imports()), "\n".join(found)


MAX_FUNCTION_LINES, MAX_FILE_LINES = 100, 600


def oversized(modules: dict[str, Path]) -> list[str]:
    """Files over MAX_FILE_LINES and functions (methods, nested ones) over MAX_FUNCTION_LINES."""
    found = []
    for module, path in modules.items():
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_FILE_LINES:
            found.append(f"{module}: {lines} lines (limit {MAX_FILE_LINES})")
        for node in ast.walk(_tree(path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                if size > MAX_FUNCTION_LINES:
                    found.append(f"{module}.{node.name} (line {node.lineno}): {size} lines (limit {MAX_FUNCTION_LINES})")
    return found


def test_no_oversized_function_or_file():
    modules = project_modules()
    assert len(modules) > 50, "the checker found too few modules"
    assert not (found := oversized(modules)), "\n".join(found)


def test_size_checker_counts_nested_functions(tmp_path):
    body = "\n".join(f"        x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    path = tmp_path / "big.py"
    path.write_text(f"def outer():\n    def inner():\n{body}\n    return inner\n")
    found = oversized({"big": path})
    assert any("big.inner" in f for f in found) and any("big.outer" in f for f in found)


def test_checker_sees_function_local_imports_and_circles(tmp_path):
    edges = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3}, "d": {"a": 4}}
    assert circles(edges) == [["a", "b", "c"]]
    source = "def f():\n    from optimize.errors import ConfigError\n"
    path = tmp_path / "m.py"
    path.write_text(source)
    assert _imports(path, "optimize.m") == [("optimize.errors", ["ConfigError"], 2)]


if __name__ == "__main__":
    edges = import_edges()
    found = circles(edges)
    for component in found:
        print(describe(component, edges))
    print(f"{len(found)} circle(s)")
    for line in library_imports_of_passes():
        print("library imports passes:", line)
    for line in private_imports():
        print("private import:", line)
    sys.exit(1 if found else 0)
