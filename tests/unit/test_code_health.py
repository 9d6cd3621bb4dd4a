"""The code-health rules of docs/DEVELOPING.md that a script can check: no import cycle inside
`apo_pipeline/` (scripts/import_cycles.py), no module over 400 lines, the bucket format free of Ray."""

from __future__ import annotations

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
