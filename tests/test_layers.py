"""Layering of the edge_run packages, read from the source (ast) and checked by importing each module alone.

    edge_run.core        errors, files, manifests, quant types: imports no other edge_run package
    edge_run.converters  HF checkpoint -> GGUF / ONNX: imports core, never runtime
    edge_run.runtime     estimate, pick, run: imports core, never converters (a planned pairing's shape and
                         conversion come through src/edge_run/core/planning.py's interface, plugged in from above)
    edge_run.cli (and tools/) compose both

Every import statement counts, also one inside a function; a module-level import cycle is an error, and so
is a cycle through deferred (function-level) imports.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
# converters -> runtime edges still to remove (a debt list that may only shrink: a listed edge that no longer
# exists fails too, so the list is kept exact). Empty: the importance matrix moved to
# src/edge_run/runtime/eval/imatrix.py.
CONVERTER_DEBTS: frozenset[tuple[str, str]] = frozenset()


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    deferred: bool  # inside a function or method
    line: int


def all_modules() -> dict[str, Path]:
    mods = {}
    for path in sorted((SRC / "edge_run").rglob("*.py")):
        parts = [p for p in path.relative_to(SRC).with_suffix("").parts if p != "__init__"]
        mods[".".join(parts)] = path
    return mods


def _resolve(module: str, is_package: bool, level: int, name: str | None) -> str:
    if level == 0:
        return name or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, name] if name else base)


def import_edges(mods: dict[str, Path]) -> list[Edge]:
    """Edges from each module to the edge_run modules it imports (``from pkg import mod`` counts as mod).
    Every import counts: top-level, inside a function (``deferred``) and under ``TYPE_CHECKING``."""
    edges = []
    for mod, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        deferred_nodes: set[int] = set()
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                deferred_nodes.update(id(n) for n in ast.walk(fn) if n is not fn)
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(mod, is_package, node.level, node.module)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for t in targets:
                while t and t not in mods and "." in t:
                    t = t.rsplit(".", 1)[0]
                if t in mods and t != mod:
                    edges.append(Edge(mod, t, id(node) in deferred_nodes, node.lineno))
    return sorted(set(edges), key=lambda e: (e.src, e.line, e.dst))


def package_of(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else ""


def find_cycle(nodes: list[str], edges: list[Edge]) -> list[str] | None:
    graph: dict[str, list[str]] = {n: [] for n in nodes}
    for e in edges:
        graph[e.src].append(e.dst)
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in graph[n]:
            if state.get(m) == 1:
                return [*stack[stack.index(m):], m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in nodes:
        if n not in state and (found := visit(n)):
            return found
    return None


MODULES = all_modules()
EDGES = import_edges(MODULES)


def test_the_graph_is_read() -> None:
    assert "edge_run.core.quants" in MODULES and "edge_run.cli.main" in MODULES
    assert any(e.src == "edge_run.runtime.estimate.quant_mix" and e.dst == "edge_run.core.quants" for e in EDGES)


def test_core_imports_no_other_package() -> None:
    bad = [e for e in EDGES if package_of(e.src) == "core" and package_of(e.dst) != "core"]
    assert not bad, bad


def test_converters_never_import_runtime() -> None:
    upward = {(e.src, e.dst): e for e in EDGES
              if package_of(e.src) == "converters" and package_of(e.dst) in ("runtime", "cli")}
    new = [e for key, e in upward.items() if key not in CONVERTER_DEBTS]
    assert not new, "\n".join(f"{e.src}:{e.line} -> {e.dst}" for e in new)
    paid = CONVERTER_DEBTS - set(upward)
    assert not paid, f"remove these paid debts from CONVERTER_DEBTS: {sorted(paid)}"


def test_runtime_library_never_imports_converters() -> None:
    bad = [e for e in EDGES if package_of(e.src) == "runtime" and package_of(e.dst) == "converters"]
    assert not bad, "\n".join(f"{e.src}:{e.line} -> {e.dst}" for e in bad)


def test_the_planning_interface_is_plugged_in_from_above() -> None:
    """The converter the picker plans with is named by the command layer, and the name resolves to an object
    with every method of runtime.planning.Converter."""
    from edge_run.core import planning

    module, _, attribute = planning.GGUF_CONVERTER.partition(":")
    assert package_of(module) == "converters"
    impl = getattr(__import__(module, fromlist=[attribute]), attribute)
    methods = [m for m in vars(planning.Converter) if not m.startswith("_")]
    assert set(methods) == {"plan", "convert", "artifact_path", "f16"}
    assert all(callable(getattr(impl, m, None)) for m in methods)
    users = {e.src for e in EDGES if e.dst == "edge_run.core.planning" and package_of(e.src) in ("cli",)}
    assert "edge_run.cli.main" in users


# deferred edges tolerated for now (each closes a cycle through a function-level import); new ones fail
TOLERATED_DEFERRED: frozenset[tuple[str, str]] = frozenset()


def test_no_import_cycles() -> None:
    nodes = sorted(MODULES)
    cycle = find_cycle(nodes, [e for e in EDGES if not e.deferred])
    assert cycle is None, " -> ".join(cycle)
    # also through function-level imports: they are dependencies too (backends -> registry -> gguf ->
    # preflight -> backends was one)
    cycle = find_cycle(nodes, [e for e in EDGES if not (e.deferred and (e.src, e.dst) in TOLERATED_DEFERRED)])
    assert cycle is None, " -> ".join(cycle)


CHILD = textwrap.dedent("""
    import os, sys, traceback
    failed = []
    for name in sys.argv[1:]:
        pid = os.fork()
        if pid == 0:
            try:
                __import__(name)
            except BaseException:
                traceback.print_exc()
                os._exit(1)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        if status:
            failed.append(name)
    print("FAILED:" + ",".join(failed))
""")


@pytest.mark.slow
def test_every_module_imports_alone() -> None:
    """Each module imported first, in an interpreter that has imported nothing of edge_run (a forked child of
    a bare one): catches import cycles and modules that only work after another one was imported."""
    names = sorted(m for m in MODULES if m != "edge_run.cli.__main__")
    out = subprocess.run([sys.executable, "-c", CHILD, *names], capture_output=True, text=True, timeout=600,
                         cwd=ROOT)
    assert out.stdout.strip().endswith("FAILED:"), out.stdout[-2000:] + out.stderr[-4000:]


def test_planning_without_a_converter_says_what_to_plug_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edge_run.core import planning
    from edge_run.core.errors import UsageError

    monkeypatch.setattr(planning, "_SPEC", [])
    planning.converter.cache_clear()
    try:
        with pytest.raises(UsageError, match="no converter is plugged in"):
            planning.checkpoint_plan(tmp_path)
    finally:
        planning.converter.cache_clear()


# ------------------------------------------------------------------------------------- the layers table
# docs/development/layers.md holds one row per package: its job and the edge_run packages it may import. Every
# import counts (top-level, deferred, TYPE_CHECKING); the table is exact (no missing and no unused entry) and acyclic.
LAYERS_DOC = ROOT / "docs" / "development" / "layers.md"


def group_of(mod: str) -> str:
    """The table row a module belongs to: a runtime sub-package, the runtime's flat modules, or a top package."""
    parts = mod.split(".")
    if len(parts) >= 3 and parts[1] == "runtime" and (SRC / "edge_run" / "runtime" / parts[2]).is_dir():
        return ".".join(parts[:3])
    return ".".join(parts[:2])


def layers_table() -> dict[str, set[str]]:
    text = LAYERS_DOC.read_text(encoding="utf-8")
    rows: dict[str, set[str]] = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("edge_run"):
            rows[cells[0]] = set() if cells[2] == "-" else {c.strip() for c in cells[2].split(",")}
    return rows


def group_edges() -> dict[tuple[str, str], list[Edge]]:
    out: dict[tuple[str, str], list[Edge]] = {}
    for e in EDGES:
        if e.src == "edge_run" or e.dst == "edge_run":
            continue
        a, b = group_of(e.src), group_of(e.dst)
        if a != b:
            out.setdefault((a, b), []).append(e)
    return out


def test_the_layers_table_names_every_package() -> None:
    table = layers_table()
    groups = {group_of(m) for m in MODULES if m != "edge_run"}
    assert set(table) == groups, \
        f"rows to add: {sorted(groups - set(table))}, rows to drop: {sorted(set(table) - groups)}"


def test_every_import_is_allowed_by_the_layers_table() -> None:
    table = layers_table()
    used = group_edges()
    bad = [f"{e.src}:{e.line} -> {e.dst}" for (a, b), es in used.items() if b not in table.get(a, set()) for e in es]
    assert not bad, "imports the layers table does not allow (docs/development/layers.md):\n" + "\n".join(bad)
    unused = sorted(f"{a} -> {b}" for a, bs in table.items() for b in bs if (a, b) not in used)
    assert not unused, f"the layers table allows imports nothing makes (remove them): {unused}"


def test_the_layers_table_is_acyclic() -> None:
    table = layers_table()
    edges = [Edge(a, b, False, 0) for a, bs in table.items() for b in bs if b in table]
    cycle = find_cycle(sorted(table), edges)
    assert cycle is None, " -> ".join(cycle)
