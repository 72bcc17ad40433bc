"""The package's layers (jaxreg/layers.py): no import circle, and no module imports one of a higher layer.

Every import counts, at module level or inside a function: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from jaxreg.layers import LAYERS, layer_of

PACKAGE = Path(__file__).resolve().parent.parent / "jaxreg"
DOC = PACKAGE.parent / "docs" / "architecture.md"


def modules() -> list[str]:
    return sorted(p.stem for p in PACKAGE.glob("*.py"))


def jaxreg_imports(module: str) -> set[str]:
    """The jaxreg modules `module` imports anywhere in its file ("__init__" for `import jaxreg`)."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))
    known, found = set(modules()), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.ImportFrom):  # relative: from . import x / from .x import y
            base = ["jaxreg"] + ([node.module] if node.module else [])
            names = [".".join(base)] + [".".join(base + [a.name]) for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] != "jaxreg":
                continue
            found.add(parts[1] if len(parts) > 1 and parts[1] in known else "__init__")
    found.discard(module)
    return found


def graph() -> dict[str, set[str]]:
    return {m: jaxreg_imports(m) for m in modules()}


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The import circles: strongly connected sets of more than one module (Tarjan), each sorted."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    return out


def test_every_module_has_exactly_one_layer():
    listed = [m for _, ms in LAYERS for m in ms]
    assert len(listed) == len(set(listed)), "a module is listed in two layers"
    assert sorted(listed) == modules(), "jaxreg/layers.py must list every module of jaxreg/ and nothing else"


def test_no_import_circle():
    assert circles(graph()) == []


def test_no_module_imports_a_higher_layer():
    upward = [
        f"jaxreg.{m} ({LAYERS[layer_of(m)][0]}) imports jaxreg.{d} ({LAYERS[layer_of(d)][0]})"
        for m, deps in graph().items()
        for d in sorted(deps)
        if layer_of(d) > layer_of(m)
    ]
    assert upward == []


def test_the_run_folder_layer_does_not_know_the_sweeps_config():
    for module in ("runfolder", "outfolders", "checkpoint", "params", "events", "live", "runs"):
        assert "config" not in jaxreg_imports(module), module


def test_the_checker_sees_upward_and_lazy_imports(tmp_path, monkeypatch):
    """The checks above can fail: a lazy import inside a function, upward and circular, is caught."""
    fake = tmp_path / "jaxreg"
    fake.mkdir()
    for m in modules():
        (fake / f"{m}.py").write_text((PACKAGE / f"{m}.py").read_text(encoding="utf-8"), encoding="utf-8")
    (fake / "selection.py").write_text("def f():\n    from jaxreg import sweep\n", encoding="utf-8")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    assert "sweep" in jaxreg_imports("selection")
    assert any("selection" in c for c in circles(graph()))
    assert layer_of("sweep") > layer_of("selection")


def test_docs_architecture_describes_every_module_in_its_layer():
    """docs/architecture.md has a section per layer, in order, naming each of its modules as `module`."""
    doc = DOC.read_text(encoding="utf-8")
    sections = doc.split("\n## ")[1:]
    assert [s.splitlines()[0].split(":")[0].strip().lower() for s in sections] == [name for name, _ in LAYERS]
    for (name, members), section in zip(LAYERS, sections):
        missing = [m for m in members if f"`{m}`" not in section]
        assert not missing, f"docs/architecture.md's {name!r} section does not describe {missing}"
