"""The code closure behind every stage's fingerprint: import lines read without parsing miss no import."""
from __future__ import annotations

from raypipe.lineage import ROOT, imported_modules, module_closure, parsed_imports


def test_reading_import_lines_finds_every_import_the_parser_finds():
    files = sorted(ROOT.rglob("*.py"))
    assert len(files) > 100
    for path in files:
        assert parsed_imports(path) <= imported_modules(path), path


def test_the_forms_raypipe_writes_are_found(tmp_path):
    path = tmp_path / "m.py"
    path.write_text(
        "import os\n"
        "from raypipe.errors import SpecError  # a comment\n"
        "from raypipe.ingest.files import (\n    FileRead,  # why\n    plan_read as plan,\n)\n"
        "def f():\n    import raypipe.store, raypipe.spec as s\n    from raypipe import datasets\n"
        "# from raypipe.never import this\n"
    )
    assert imported_modules(path) == parsed_imports(path) == {
        "raypipe.errors", "raypipe.errors.SpecError", "raypipe.ingest.files", "raypipe.ingest.files.FileRead",
        "raypipe.ingest.files.plan_read", "raypipe.store", "raypipe.spec", "raypipe", "raypipe.datasets"}


def test_a_stage_closure_holds_its_foundation():
    names = {p.relative_to(ROOT).as_posix() for p in module_closure("raypipe.train")}
    assert {"train/stage.py", "stage.py", "spec.py", "datasets.py"} <= names and "serve/app.py" not in names
