"""The package's shape: no import cycles between steerkit modules, and no import that runs upward.

Rooms, from the ground up (docs: /DESIGN.md "Rooms"):
errors/io/version -> stats/validate/runs -> models -> capture/corpus -> vectors/phase/textio -> quality/steering
-> generation/training -> experiments -> serve -> api (`steerkit/__init__.py`, `steerkit/api.py`) -> cli.

Every `import steerkit.x` / `from steerkit.x import y` / relative `from .x import y` counts, wherever it
stands: at module level, inside a function, or under `if TYPE_CHECKING:` (a type-only import still says
that this module depends on that one; moving the shared type down is the fix, not hiding the import).

Run `python tests/test_structure.py [PACKAGE_DIR]` to print the counts and every cycle and upward import.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "steerkit"

# Level of each room, from the ground up. Rooms on one level may import each other (unless in a cycle).
LEVELS: list[tuple[str, ...]] = [
    (
        "errors",
        "io",
        "version",
        "threads",
        "dist",
    ),  # version.py: __version__, stamped into files by every room; dist.py: torchrun
    ("stats", "validate", "runs"),
    ("models",),
    ("capture", "corpus"),
    ("vectors", "phase", "textio"),
    ("quality", "steering"),
    ("generation", "training"),
    ("experiments",),
    ("serve",),
    ("api",),
    ("cli", "__main__"),  # __main__.py: `python -m steerkit` runs the command line
]
LEVEL = {room: i for i, rooms in enumerate(LEVELS) for room in rooms}


def module_files(package: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file in the package (`pkg/__init__.py` is `pkg`)."""
    out: dict[str, Path] = {}
    for path in sorted(package.rglob("*.py")):
        parts = [package.name, *path.relative_to(package).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def room_of(module: str) -> str:
    """`steerkit.capture.engine` -> capture, `steerkit.steering` -> steering, `steerkit` -> api."""
    parts = module.split(".")
    if len(parts) == 1:
        return "api"  # steerkit/__init__.py: the notebook API
    return parts[1]


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The steerkit module that `name` names, or the nearest enclosing package that exists."""
    parts = name.split(".")
    while parts:
        cand = ".".join(parts)
        if cand in modules:
            return cand
        parts.pop()
    return None


def _imports(module: str, path: Path, modules: dict[str, Path]) -> Iterator[tuple[str, int]]:
    """(imported steerkit module, line) for every import in `path`, anywhere in the file."""
    root = module.split(".")[0]
    is_pkg = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == root or alias.name.startswith(root + "."):
                    target = _resolve(alias.name, modules)
                    if target is not None:
                        yield target, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                if not is_pkg:
                    base = base[:-1]  # a module's package
                if node.level > 1:
                    base = base[: len(base) - (node.level - 1)]
                pkg = ".".join([*base, node.module] if node.module else base)
            else:
                pkg = node.module or ""
                if not (pkg == root or pkg.startswith(root + ".")):
                    continue
            for alias in node.names:
                # `from pkg import sub` imports the submodule when there is one, else a name of pkg
                sub = f"{pkg}.{alias.name}"
                target = sub if sub in modules else _resolve(pkg, modules)
                if target is not None:
                    yield target, node.lineno


def import_graph(package: Path = PACKAGE) -> dict[str, dict[str, int]]:
    """module -> {imported module: first line}, steerkit modules only, self-imports left out."""
    modules = module_files(package)
    graph: dict[str, dict[str, int]] = {}
    for module, path in modules.items():
        edges: dict[str, int] = {}
        for target, line in _imports(module, path, modules):
            if target != module:
                edges.setdefault(target, line)
        graph[module] = edges
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components of more than one module (each one cycle or more), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def one_cycle(graph: dict[str, dict[str, int]], comp: list[str]) -> list[str]:
    """A concrete loop inside one strongly connected component: a -> b -> ... -> a."""
    members = set(comp)
    start = comp[0]
    prev: dict[str, str] = {}
    frontier = [start]
    while frontier:  # breadth-first, so the loop reported is a shortest one through `start`
        nxt = []
        for v in frontier:
            for w in sorted(graph[v]):
                if w not in members:
                    continue
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(prev[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    return comp


def upward(graph: dict[str, dict[str, int]]) -> list[str]:
    """`a (room, level) -> b (room, level) line N` for every import of a higher room."""
    out = []
    for src, edges in sorted(graph.items()):
        ls = LEVEL[room_of(src)]
        for dst, line in sorted(edges.items()):
            ld = LEVEL[room_of(dst)]
            if ld > ls:
                out.append(f"{src} ({room_of(src)}, level {ls}) -> {dst} ({room_of(dst)}, level {ld}) line {line}")
    return out


def test_every_module_has_a_room() -> None:
    unknown = sorted({room_of(m) for m in module_files(PACKAGE)} - set(LEVEL))
    assert not unknown, f"modules in rooms the layer order does not name: {unknown} (add them to LEVELS)"


def test_graph_sees_module_and_function_level_imports() -> None:
    graph = import_graph()
    assert sum(len(e) for e in graph.values()) > 300  # the parser found the package's imports
    loop = graph["steerkit.training.loop"]
    assert "steerkit.training.protocol" in loop  # module level, relative
    assert "steerkit.models" in loop  # inside a method: `from ..models import load`
    assert "steerkit.training.ce" in loop  # inside make_objective, resolved to the module
    assert "steerkit.experiments.measures" in graph["steerkit.experiments.intervene.analysis"]  # from .. import m


def test_no_import_cycles() -> None:
    graph = import_graph()
    found = [" -> ".join(one_cycle(graph, comp)) for comp in cycles(graph)]
    assert not found, "import cycles:\n" + "\n".join(found)


def test_no_upward_imports() -> None:
    found = upward(import_graph())
    assert not found, "upward imports:\n" + "\n".join(found)


def test_detects_a_cycle_and_an_upward_import(tmp_path: Path) -> None:
    """The machinery itself: a planted loop and a planted upward import are found."""
    pkg = tmp_path / "steerkit"
    (pkg / "vectors").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "errors.py").write_text("def f():\n    from .vectors import a\n")
    (pkg / "vectors" / "__init__.py").write_text("")
    (pkg / "vectors" / "a.py").write_text("from . import b\n")
    (pkg / "vectors" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from steerkit.vectors.a import x\n"
    )
    graph = import_graph(pkg)
    assert cycles(graph) == [["steerkit.vectors.a", "steerkit.vectors.b"]]
    assert one_cycle(graph, cycles(graph)[0]) == [
        "steerkit.vectors.a",
        "steerkit.vectors.b",
        "steerkit.vectors.a",
    ]
    assert upward(graph) == ["steerkit.errors (errors, level 0) -> steerkit.vectors.a (vectors, level 4) line 2"]


if __name__ == "__main__":
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else PACKAGE
    g = import_graph(root)
    cyc = cycles(g)
    up = upward(g)
    print(f"{len(g)} modules, {sum(len(e) for e in g.values())} imports")
    print(f"{len(cyc)} cycles (strongly connected components):")
    for comp in cyc:
        print("  " + " -> ".join(one_cycle(g, comp)), f"[{len(comp)} modules]")
    print(f"{len(up)} upward imports:")
    for u in up:
        print("  " + u)
