"""The package's import graph: no cycles between modules (lazy imports included), no private
name imported from another module, and the layering the design promises."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _module_files() -> dict[str, Path]:
    """``relaxplug.*`` module name -> file (``adapters/`` is ``relaxplug.adapters``)."""
    files = {}
    for base, prefix in ((ROOT / "relaxplug", ["relaxplug"]), (ROOT / "adapters", ["relaxplug", "adapters"])):
        for path in base.rglob("*.py"):
            parts = prefix + list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            files[".".join(parts)] = path
    return files


MODULES = _module_files()


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    package = package[: len(package) - (node.level - 1)]
    return ".".join(package + ([node.module] if node.module else []))


def _imports(module: str) -> list[tuple[str, str | None]]:
    """``(imported module, imported name or None)`` for every import statement, at any depth."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(module, node, path.name == "__init__.py")
            for alias in node.names:
                candidate = f"{source}.{alias.name}"
                found.append((candidate, None) if candidate in MODULES else (source, alias.name))
    return [(target, name) for target, name in found if target.split(".")[0] == "relaxplug"]


def _owner(target: str) -> str | None:
    """The project module a dotted import resolves to (a module, or the package above a name)."""
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module in MODULES:
        edges = set()
        for target, _ in _imports(module):
            owner = _owner(target)
            # a package's __init__ importing its own submodules is how packages re-export
            if owner and owner != module and not owner.startswith(module + "."):
                edges.add(owner)
        graph[module] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for succ in graph.get(node, ()):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return out


def _reaches(graph: dict[str, set[str]], start: str, prefix: str) -> bool:
    seen, todo = set(), [start]
    while todo:
        node = todo.pop()
        for succ in graph.get(node, ()):
            if succ.startswith(prefix):
                return True
            if succ not in seen:
                seen.add(succ)
                todo.append(succ)
    return False


def test_the_graph_sees_the_package():
    graph = _graph()
    assert "relaxplug.adapters.base" in graph and "relaxplug.cli" in graph
    assert "relaxplug.adapters.base" in graph["relaxplug.adapters.registry"]


def test_cycle_finder_finds_a_planted_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_between_modules():
    assert _cycles(_graph()) == []


def test_no_private_names_imported_from_other_modules():
    offenders = []
    for module in MODULES:
        for target, name in _imports(module):
            private_module = any(part.startswith("_") and part != "__init__" for part in target.split(".")[1:])
            if (name and name.startswith("_") and not name.startswith("__")) or private_module:
                if target != "relaxplug._compat":  # the one shim module has a public surface of its own
                    offenders.append(f"{module}: {target}{'.' + name if name else ''}")
    assert offenders == []


@pytest.mark.parametrize("layer", ["relaxplug.certifiers", "relaxplug.training", "relaxplug.evaluation",
                                   "relaxplug.attacks", "relaxplug.cli"])
def test_guarantees_do_not_depend_on_consumers(layer):
    graph = _graph()
    for module in (m for m in MODULES if m.startswith("relaxplug.adapters")):
        assert not _reaches(graph, module, layer), f"{module} reaches {layer}"


def test_nothing_imports_the_cli():
    graph = _graph()
    assert [m for m, edges in graph.items() if "relaxplug.cli" in edges and m != "relaxplug.__main__"] == []


def test_only_the_lirpa_glue_and_the_zoo_import_the_shims():
    graph = _graph()
    users = sorted(m for m, edges in graph.items() if "relaxplug._compat" in edges)
    assert all(m.startswith(("relaxplug.lirpa", "relaxplug.zoo")) for m in users), users


def test_a_bare_import_of_the_adapters_folder_is_refused():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", "import adapters"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode != 0
    assert "import relaxplug.adapters" in done.stderr
    ok = subprocess.run([sys.executable, "-c", "import relaxplug.adapters as a; print(a.RTK(2).max_k(5))"],
                        cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.strip() == "2", ok.stderr
