"""Lineage: which code, libraries, data and spec a result came from (``code_hash`` of a stage: its closure)."""
from __future__ import annotations

import ast
import getpass
import hashlib
import json
import platform
import re
import subprocess
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

from raypipe.version import __version__

ROOT = Path(__file__).parent


def _file(module: str) -> Path | None:
    rel = ROOT.joinpath(*module.split(".")[1:])
    return next((f for f in (rel / "__init__.py", rel.with_suffix(".py")) if f.is_file()), None)


_FROM = re.compile(r"^[ \t]*from[ \t]+(raypipe[\w.]*)[ \t]+import[ \t]+(\([^)]*\)|[^\n]*)", re.M)
_IMPORT = re.compile(r"^[ \t]*import[ \t]+([^\n]*)", re.M)
_COMMENT = re.compile(r"#[^\n]*")


def imported_modules(path: Path) -> set[str]:
    """The raypipe modules a file imports, at the top or inside functions (raypipe imports absolutely).

    Import statements are found line by line, not by parsing the file: every stage's fingerprint
    walks its closure, and parsing ~100 files cost a new process ~0.4 s of a small run. A line in
    a docstring that looks like an import adds a module: the closure may be larger, never smaller
    (``tests/test_lineage.py`` checks this against the parsed imports of every module).
    """
    found: set[str] = set()
    text = path.read_text()
    for module, names in _FROM.findall(text):
        listed = _COMMENT.sub("", names.strip("()")).replace("\n", " ").split(",")
        found |= {module, *(f"{module}.{n.split(' as ')[0].strip()}" for n in listed if n.strip())}
    for line in _IMPORT.findall(text):
        found |= {a.split(" as ")[0].strip() for a in _COMMENT.sub("", line).split(",")
                  if a.strip().startswith("raypipe")}
    return found


def parsed_imports(path: Path) -> set[str]:
    """:func:`imported_modules` by parsing the file (the reference its line-by-line reading is tested against)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("raypipe"):
            found |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}  # `from raypipe.x import module`
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("raypipe")}
    return found


def module_closure(package: str) -> list[Path]:
    """The files of ``package`` and of every raypipe module they import, transitively.

    ``raypipe/__init__.py`` (the public facade, which imports everything) is not followed;
    the version string stands for it.
    """
    start = _file(package)
    if start is None:
        raise ValueError(f"{package!r} is not a raypipe module or package")
    todo = sorted(start.parent.rglob("*.py")) if start.name == "__init__.py" else [start]
    seen: set[Path] = set()
    while todo:
        path = todo.pop()
        if path not in seen and path != ROOT / "__init__.py":
            seen.add(path)
            for parts in (m.split(".") for m in imported_modules(path)):  # a module's packages run their __init__
                todo += [f for i in range(2, len(parts) + 1) if (f := _file(".".join(parts[:i]))) and f not in seen]
    return sorted(seen)


@lru_cache(maxsize=None)
def code_hash(package: str | None = None) -> str:
    """Hash of raypipe's source (``package`` None) or of one package's closure (:func:`module_closure`)."""
    h = hashlib.sha256(__version__.encode())
    files = sorted(ROOT.rglob("*.py")) if package is None else module_closure(package)
    for p in files:
        h.update(p.relative_to(ROOT).as_posix().encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "raypipe": __version__}
    for pkg in ("ray", "torch", "scikit-learn", "pyarrow", "pandas", "numpy", "pydantic", "gymnasium"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def spec_hash(spec: Any) -> str:
    doc = spec.model_dump(mode="json", by_alias=True)
    doc.pop("storage", None)  # where artifacts live is not what the model is
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def lineage_record(ctx: Any, inputs: dict[str, Any], parent: int | None) -> dict[str, Any]:
    """Where a model version came from: run, data, schema, spec, code, libraries, seeds, stage fingerprints."""
    validate = inputs.get("validate")
    return {
        "run_id": ctx.run_id,
        "pipeline": ctx.spec.name,
        "created": datetime.now(timezone.utc).isoformat(),
        "data_fingerprint": ctx.data_fingerprint,
        "schema_sha256": validate.store.sha256(validate.outputs.schema) if validate and validate.outputs.schema else None,
        "spec_hash": spec_hash(ctx.spec),
        "code_hash": code_hash(),
        "git_commit": git_commit(),
        "versions": library_versions(),
        "seeds": {"split": ctx.spec.data.split.seed, "train": ctx.spec.train.seed,
                  **({"data": ctx.spec.data.source.seed} if hasattr(ctx.spec.data.source, "seed") else {})},
        "stages": {name: out.fingerprint for name, out in inputs.items()},
        "register_fingerprint": ctx.fingerprint,
        "parent_champion": parent,
        "user": current_user(),
    }


def current_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return "unknown"
