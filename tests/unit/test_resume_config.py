"""Resume refuses config changes that would make the saved state meaningless, and allows the rest."""

import subprocess
import sys
from pathlib import Path

import pytest

from apo_pipeline.config import APOConfig, ConfigError, dump_config, load_config
from apo_pipeline.loops.resume import check_resume_config, read_saved_config

REPO = Path(__file__).resolve().parents[2]


def saved(tmp_path, *overrides):
    dump_config(load_config(APOConfig, None, list(overrides)), tmp_path / "config.yaml")
    return read_saved_config(tmp_path / "config.yaml")


@pytest.mark.parametrize("override, key", [("algorithm.loss=ipo", "algorithm.loss"), ("model.path=/x", "model.path"),
                                           ("generation.n_per_temperature=3", "generation.n_per_temperature"),
                                           ("loop.alpha=0.1", "loop.alpha")])
def test_unsafe_changes_are_refused_naming_the_key(tmp_path, override, key):
    with pytest.raises(ConfigError, match=f"^{key}: cannot resume"):
        check_resume_config(saved(tmp_path), load_config(APOConfig, None, [override]))


def test_safe_changes_are_allowed(tmp_path):
    check_resume_config(saved(tmp_path), load_config(APOConfig, None, ["eval.every=2", "monitoring.progress=false"]))


def test_new_run_has_no_saved_config(tmp_path):
    assert read_saved_config(tmp_path / "config.yaml") is None


def test_job_refuses_unsafe_resume_before_ray_starts(tmp_path):
    saved(tmp_path)
    proc = subprocess.run([sys.executable, str(REPO / "jobs" / "apo.py"), "--run-dir", str(tmp_path), "algorithm.loss=ipo"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "algorithm.loss: cannot resume" in proc.stderr
