"""tledge's modules import one another without circles, imports inside functions counted.

A ratchet: the circles issue 23 still names (the camera and its web page; the data package
and its loaders; the runtime and its probe) are listed here, and any other circle fails."""

import ast
from pathlib import Path

import tledge

ROOT = Path(tledge.__file__).parent
# Circles that remain, each as the set of its modules (issue 23 takes them apart).
KNOWN = [
    {"tledge.camera", "tledge.serve"},
    {"tledge.data", "tledge.data.builtin", "tledge.data.cache", "tledge.data.folder",
     "tledge.data.shapes"},
    {"tledge.runtime", "tledge.runtime.probe"},
]


def _modules() -> dict:
    """{module name: its file} for every module of the package but the vendored schema."""
    out = {}
    for path in ROOT.rglob("*.py"):
        if "_vendor" in path.parts:
            continue
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(path: Path, modules: dict) -> set:
    """The tledge modules a file imports anywhere in its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # "from tledge import fileio" names a module; "from tledge.x import y" the module x
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found.update(n for n in names if n in modules)
    return found


def _cycles(graph: dict) -> list:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(component)

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_circle_but_the_known_ones():
    modules = _modules()
    graph = {name: _imports(path, modules) - {name} for name, path in modules.items()}
    cycles = _cycles(graph)
    unknown = [c for c in cycles if not any(c <= known for known in KNOWN)]
    assert not unknown, f"new import circles: {unknown}"
    # export -> bench -> evaluate -> export is gone: export times with runtime.timing
    for name in ("tledge.export", "tledge.bench", "tledge.evaluate", "tledge.quantdebug"):
        assert not any(name in c for c in cycles), name
    assert "tledge.bench" not in graph["tledge.export"]
