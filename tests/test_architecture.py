"""The import rule of ARCHITECTURE.md, enforced: layers import only downwards, probe families and
the two libraries (`probes/`, `exporters/`) stay out of each other, and no module or package
imports itself round a cycle. Imports inside functions and under TYPE_CHECKING count too."""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("auditd", "probes", "exporters")

# Lowest first. A module may import its own layer and the layers listed for it.
LIBRARIES = ("probes", "exporters")  # know nothing of the daemon, nor of each other
LAYERS = (
    "auditd.model",
    "auditd.config",
    "auditd.kernel",
    "auditd.audit",
    "auditd.signals",
    "auditd.policy",
    "auditd.daemon",
    "auditd.commands",
    "auditd",  # the package itself: __init__ and __main__
)
# Inside signals: one package per probe family; they share only these modules.
SIGNALS = "auditd.signals"
SIGNALS_SHARED = ("auditd.signals.monitor", "auditd.signals.repeats", "auditd.signals.totals")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def find_modules(root: Path) -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            found[module_name(path, root)] = path
    return found


def imports_of(path: Path, name: str, modules: Iterable[str]) -> set[str]:
    """Our modules that `name` imports (absolute and relative, anywhere in the file)."""
    known = set(modules)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            # `from a import b` imports module a.b when there is one, else a name of a.
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            module = target
            while module and module not in known:
                module = module.rpartition(".")[0]
            if module and module != name:
                found.add(module)
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    modules = find_modules(root)
    return {name: imports_of(path, name, modules) for name, path in modules.items()}


def layer_of(module: str) -> str:
    for library in LIBRARIES:
        if module == library or module.startswith(library + "."):
            return library
    for layer in LAYERS:
        if module == layer or module.startswith(layer + "."):
            return layer
    raise AssertionError(f"{module} belongs to no layer of ARCHITECTURE.md")


def violations(graph: Mapping[str, set[str]]) -> list[str]:
    """Every import that breaks the rule, as `importer -> imported: why`."""
    out = []
    for importer, imported in sorted(graph.items()):
        mine = layer_of(importer)
        for target in sorted(imported):
            theirs = layer_of(target)
            if mine in LIBRARIES:
                if theirs != mine:
                    out.append(f"{importer} -> {target}: {mine}/ is a library of its own")
                continue
            if theirs in LIBRARIES or theirs == mine:
                if mine == SIGNALS and theirs == SIGNALS:
                    family = _family(importer)
                    other = _family(target)
                    if family and other and family != other:
                        out.append(f"{importer} -> {target}: probe families stay apart")
                    elif family is None and other is not None:
                        out.append(f"{importer} -> {target}: shared signal code names no family")
                continue
            if LAYERS.index(theirs) > LAYERS.index(mine):
                out.append(f"{importer} -> {target}: {mine} may not import {theirs} (above it)")
    return out


def _family(module: str) -> str | None:
    """`auditd.signals.denials.x` → `denials`; None for the shared signal modules."""
    if module in SIGNALS_SHARED or module == SIGNALS:
        return None
    return module.split(".")[2]


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def collapsed(graph: Mapping[str, set[str]], depth: int) -> dict[str, set[str]]:
    """The graph between packages `depth` dots deep (module names cut to that many parts)."""

    def cut(name: str) -> str:
        return ".".join(name.split(".")[:depth])

    out: dict[str, set[str]] = {}
    for importer, imported in graph.items():
        edges = out.setdefault(cut(importer), set())
        edges.update(cut(t) for t in imported if cut(t) != cut(importer))
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(ROOT)


def test_every_module_sits_in_a_layer(graph: dict[str, set[str]]) -> None:
    for module in graph:
        layer_of(module)


def test_layers_import_only_downwards(graph: dict[str, set[str]]) -> None:
    assert violations(graph) == []


def test_no_import_cycle_between_modules(graph: dict[str, set[str]]) -> None:
    assert cycles(graph) == []


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_no_import_cycle_between_packages(graph: dict[str, set[str]], depth: int) -> None:
    assert cycles(collapsed(graph, depth)) == []


def test_the_checks_catch_what_they_forbid(tmp_path: Path) -> None:
    # A tree that breaks each rule once: the checks must say so (they are not vacuous).
    files = {
        "auditd/__init__.py": "",
        "auditd/model/__init__.py": "",
        "auditd/model/a.py": "from auditd.daemon import b\n",
        "auditd/daemon/__init__.py": "",
        "auditd/daemon/b.py": "def f():\n    from auditd.model import a\n",
        "auditd/signals/__init__.py": "",
        "auditd/signals/denials/__init__.py": "",
        "auditd/signals/denials/x.py": "from ..namespaces import y\n",
        "auditd/signals/namespaces/__init__.py": "",
        "auditd/signals/namespaces/y.py": "",
        "probes/__init__.py": "import exporters.out\n",
        "exporters/__init__.py": "",
        "exporters/out.py": "from auditd.model import a\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    bad = import_graph(tmp_path)
    said = violations(bad)
    assert any(v.startswith("auditd.model.a -> auditd.daemon.b") for v in said)
    assert any("probe families stay apart" in v for v in said)
    assert any(v.startswith("probes -> exporters.out") for v in said)
    assert any(v.startswith("exporters.out -> auditd.model.a") for v in said)
    assert ["auditd.daemon.b", "auditd.model.a"] in cycles(bad)
    assert ["auditd.daemon", "auditd.model"] in cycles(collapsed(bad, 2))
