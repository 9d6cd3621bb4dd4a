"""Installing prints no warning that comes from our packaging: `pip install -e .` (what
scripts/setup-venv.sh runs) and `pip wheel .`, each with pip's build isolation, so setuptools is the
release a user gets from the registry. Slow: two real builds, and the isolated build environment is
fetched from the package registry."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A copy of what a build reads (a build writes build/ and *.egg-info next to pyproject.toml)."""
    src = tmp_path_factory.mktemp("src")
    shutil.copy(REPO / "pyproject.toml", src)
    shutil.copy(REPO / "README.md", src)
    shutil.copytree(REPO / "apo_pipeline", src / "apo_pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    return src


@pytest.mark.parametrize("command", [["install", "--no-deps", "-e", "{src}", "-t", "{out}"],
                                     ["wheel", "--no-deps", "{src}", "-w", "{out}"]], ids=["editable", "wheel"])
def test_building_prints_no_warning(source, tmp_path, command):
    # --isolated: this machine's pip config (extra indexes, find-links) is not the package's business.
    args = [a.format(src=source, out=tmp_path / "out") for a in command]
    proc = subprocess.run([sys.executable, "-m", "pip", "--isolated", *args], capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert not re.search(r"warning|deprecat", out, re.IGNORECASE), out
