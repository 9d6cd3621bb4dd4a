"""The code-health rules of docs/DEVELOPING.md that a script can check: no import cycle inside
`apo_pipeline/` (scripts/import_cycles.py), no module over 400 lines, the bucket format free of Ray,
the `slow` marker and the test folders agreeing."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "apo_pipeline"


def load_script():
    spec = importlib.util.spec_from_file_location("import_cycles", ROOT / "scripts" / "import_cycles.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_cycle_finder_sees_lazy_and_type_checking_imports(tmp_path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    for init in (pkg / "__init__.py", pkg / "sub" / "__init__.py"):
        init.write_text("")
    (pkg / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..c import g\n")
    (pkg / "c.py").write_text("import pkg.a\n")
    (pkg / "d.py").write_text("from pkg import c\n")
    finder = load_script()
    assert finder.cycles(finder.import_graph(finder.module_files(pkg))) == [["pkg.a", "pkg.c", "pkg.sub.b"]]


def test_no_import_cycle() -> None:
    finder = load_script()
    assert finder.cycles(finder.import_graph(finder.module_files(PACKAGE))) == []


def test_no_module_passes_400_lines() -> None:
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}


def test_the_bucket_format_imports_no_ray() -> None:
    """The learner and the engines share engine/buckets.py; it stays pure (no Ray, no vLLM)."""
    code = "import sys, apo_pipeline.engine.buckets; print(sorted({'ray', 'vllm', 'deepspeed'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def _marks(node: ast.AST) -> set[str]:
    """The `pytest.mark.<name>` names in a decorator list or a `pytestmark = ...` value."""
    return {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Attribute)
            and n.value.attr == "mark"}


def test_slow_tests_live_in_integration_and_fast_ones_in_unit() -> None:
    """tests/unit: no test marked slow; tests/integration: every test marked slow (or gpu, never run by
    `make test`). `make test-fast` selects by marker, so the folders say what it runs."""
    misplaced = []
    for folder, wanted in (("unit", False), ("integration", True)):
        for path in sorted((ROOT / "tests" / folder).glob("test_*.py")):
            tree = ast.parse(path.read_text())
            module = set().union(*(_marks(n.value) for n in tree.body if isinstance(n, ast.Assign)
                                   and any(getattr(t, "id", "") == "pytestmark" for t in n.targets)))
            for fn in tree.body:
                if isinstance(fn, ast.FunctionDef) and fn.name.startswith("test_"):
                    marks = module | set().union(*(_marks(d) for d in fn.decorator_list))
                    if bool(marks & {"slow", "gpu"}) != wanted:
                        misplaced.append(f"{path.relative_to(ROOT)}::{fn.name}")
    assert misplaced == []
