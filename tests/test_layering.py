"""tledge's modules import one another without circles and only downwards, floor by floor,
imports inside functions counted."""

import ast
from pathlib import Path

import tledge

ROOT = Path(tledge.__file__).parent
# The floors, lowest first: a module imports from its own floor or those below, never above.
# What a Pi runs (runtime, camera, the CLI's TF-free commands) needs nothing of the floors
# between the runtime and the camera but `evaluate`'s TF-free reader, imported on use.
FLOORS = [
    ("base", ["tledge", "tledge.core"]),
    ("runtime", ["tledge.runtime"]),
    ("data", ["tledge.data"]),
    ("models", ["tledge.models"]),
    ("training", ["tledge.training"]),
    ("export", ["tledge.quantize", "tledge.export"]),
    ("bench and evaluate", ["tledge.measure"]),
    ("camera", ["tledge.camera"]),
    ("device", ["tledge.device"]),
    ("tune", ["tledge.tune"]),
    ("commands", ["tledge.cli"]),
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


def _floor(module: str) -> int:
    best = None
    for number, (_, prefixes) in enumerate(FLOORS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and \
                    (best is None or len(prefix) > best[1]):
                best = (number, len(prefix))
    assert best is not None, f"{module} is on no floor: add it to FLOORS"
    return best[0]


def _graph() -> dict:
    return _graph_with(set())


def _graph_with(extra: set) -> dict:
    """{module: the tledge modules it imports}, counting also imports of the names in extra."""
    modules = _modules()
    known = {**modules, **{name: None for name in extra}}
    return {name: _imports(path, known) - {name} for name, path in modules.items()}


def test_no_import_circle():
    assert _cycles(_graph()) == []


def test_every_module_imports_only_its_floor_or_below():
    upward = [f"{name} ({FLOORS[_floor(name)][0]}) imports {other} "
              f"({FLOORS[_floor(other)][0]})"
              for name, imports in sorted(_graph().items()) for other in sorted(imports)
              if _floor(other) > _floor(name)]
    assert not upward, upward


def test_the_top_holds_only_the_stage_packages():
    """Every module lives in its stage's package; the flat names of before are aliases only
    (tledge.MOVED), which tledge's own code never uses."""
    flat = sorted(p.name for p in ROOT.glob("*.py") if p.name != "__init__.py")
    assert flat == []
    stages = {prefix for _, prefixes in FLOORS for prefix in prefixes} - {"tledge"}
    packages = {f"tledge.{p.name}" for p in ROOT.iterdir()
                if (p / "__init__.py").exists() and p.name != "_vendor"}
    assert packages == stages
    old = {f"tledge.{name}" for name in tledge.MOVED}
    users = {name: imports & old for name, imports in _graph_with(old).items() if imports & old}
    assert not users, users


def test_the_old_paths_give_the_new_modules():
    import importlib

    for name, new in tledge.MOVED.items():
        if name in ("fitting", "features", "qat", "train", "distribution", "runmodel",
                    "conversion", "biascorrect", "graph_rewrite", "quantdebug"):
            continue  # these import TensorFlow; the cheap ones prove the mechanism
        assert importlib.import_module(f"tledge.{name}") is importlib.import_module(new)


def test_the_ratchet_catches_a_circle_and_an_upward_import():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert _cycles(graph) == [{"a", "b", "c"}]
    assert _floor("tledge.runtime.probe") < _floor("tledge.camera.serve")


def test_rooms_stay_small():
    """Issue 23's measure: no module over 500 lines, no function over 60 (the vendored schema
    aside), docstrings counted."""
    too_long = []
    for name, path in _modules().items():
        text = path.read_text()
        if text.count("\n") > 500:
            too_long.append(f"{name}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > 60:
                    too_long.append(f"{name}.{node.name}: {length} lines")
    assert not too_long, too_long
