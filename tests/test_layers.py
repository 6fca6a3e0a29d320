"""The import structure: no circles, and every import runs in an allowed direction.

The allowed direction, in one place (:data:`LAYERS`, lowest first): a module may import
modules of its own layer and of the layers below it. Stage packages are one layer but
never import each other, and no module imports a private (underscore) name from another
package. The walk reads the source with ``ast`` (imports inside functions count too).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "raypipe"

FOUNDATION = {"version", "errors", "spec", "store", "schema", "columns", "dates", "tasks", "runtime", "localstate",
              "localray", "datasets", "progress", "report_format", "lineage", "stage", "runner", "registry", "metrics",
              "rowchecks", "predlog", "apikey", "feedback", "spool", "executions", "transient"}
STAGES = {"ingest", "validate", "features", "train", "evaluate", "register"}
LAYERS: list[set[str]] = [
    FOUNDATION,           # imports nothing above it
    {"model", "envs"},    # the fitted artifact a version holds (features, model formats, zoo, predictor, policy) and the environments policies act in
    STAGES,               # each imports the foundation and the model, never another stage package
    {"serve", "export", "monitor"},  # build on the registry, the model and the foundation
    {"api", "cli", "__init__", "__main__", "submit"},
]


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _layer(top: str) -> int:
    return next(i for i, names in enumerate(LAYERS) if top in names)


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) of every raypipe import in a file; relative imports resolved."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([module] if module else []))
            if module.split(".")[0] == "raypipe":
                out.append((module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names if a.name.split(".")[0] == "raypipe"]
    return out


def _module_exists(module: str) -> bool:
    rel = Path(*module.split(".")[1:])
    return (ROOT / rel / "__init__.py").is_file() or (ROOT / rel).with_suffix(".py").is_file()


def _graph() -> dict[str, set[str]]:
    """Module -> the raypipe modules it imports (``from pkg import module`` counts as the module)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(ROOT.rglob("*.py")):
        edges = set()
        for module, names in _imports(path):
            subs = [f"{module}.{n}" for n in names if _module_exists(f"{module}.{n}")]
            edges.update(subs or [module])
        graph[_module_name(path)] = edges - {_module_name(path)}
    return graph


def test_every_package_is_in_a_layer() -> None:
    tops = {_top(m) for m in _graph()}
    unplaced = sorted(t for t in tops if not any(t in names for names in LAYERS))
    assert not unplaced, f"put {unplaced} in a layer of LAYERS"


def test_imports_run_downwards_and_stages_do_not_import_each_other() -> None:
    wrong = []
    for module, targets in _graph().items():
        mine = _top(module)
        for target in targets:
            theirs = _top(target)
            if target == "raypipe" and module != "raypipe":
                wrong.append(f"{module} -> raypipe (the public facade)")
            elif _layer(theirs) > _layer(mine):
                wrong.append(f"{module} -> {target} (runs up from {mine} to {theirs})")
            elif mine in STAGES and theirs in STAGES and mine != theirs:
                wrong.append(f"{module} -> {target} (one stage package into another)")
    assert not wrong, "\n".join(wrong)


def test_no_circles() -> None:
    graph = _graph()
    state: dict[str, int] = {}
    circles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                circles.append(path[path.index(nxt):] + [nxt])
            elif nxt in graph and not state.get(nxt):
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if not state.get(node):
            visit(node, [node])
    # a package's __init__ importing its own submodules is not a circle of the design
    real = [c for c in circles if not all(m.startswith(c[0]) or c[0].startswith(m) for m in c)]
    assert not real, "\n".join(" -> ".join(c) for c in real)


def test_imports_are_absolute() -> None:
    """The walks here and in ``raypipe.lineage.module_closure`` read absolute imports only."""
    relative = [str(p) for p in ROOT.rglob("*.py")
                if any(isinstance(n, ast.ImportFrom) and n.level for n in ast.walk(ast.parse(p.read_text())))]
    assert not relative, relative


def test_no_private_names_across_packages() -> None:
    wrong = []
    for path in sorted(ROOT.rglob("*.py")):
        here = _module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else _module_name(path)
        for module, names in _imports(path):
            theirs = module if _module_exists(module) and (ROOT / Path(*module.split(".")[1:]) / "__init__.py").is_file() \
                else module.rsplit(".", 1)[0]
            private = [n for n in names if n.startswith("_") and n != "__version__"]
            if private and theirs != here:
                wrong.append(f"{_module_name(path)} imports {private} from {module}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("bad, found", [
    ("from raypipe.features.stage import build\n", "one stage package into another"),
    ("from raypipe.cli import main\n", "runs up"),
])
def test_the_walk_catches_a_wrong_import(tmp_path, monkeypatch, bad, found) -> None:
    """The checks above can fail: a planted wrong import in a stage module is reported."""
    target = ROOT / "evaluate" / "stage.py"
    original = target.read_text
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: (original() + bad) if self == target
                        else Path.read_bytes(self).decode())
    with pytest.raises(AssertionError, match=found):
        test_imports_run_downwards_and_stages_do_not_import_each_other()
