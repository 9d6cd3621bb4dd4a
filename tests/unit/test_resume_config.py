"""Resume refuses config changes that would make the saved state meaningless, and allows the rest."""

import subprocess
import sys
from pathlib import Path

import pytest

from apo_pipeline.config import APOConfig, ConfigError, dump_config, load_config
from apo_pipeline.loops.resume import check_resume_config, read_saved_config
from apo_pipeline.preflight import preflight

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


def checkpointed(run_dir: Path) -> None:
    """What a committed checkpoint leaves for the resume check to find: a checkpoint directory with a manifest."""
    ckpt = run_dir / "checkpoints" / "iteration_0001"
    ckpt.mkdir(parents=True)
    (ckpt / "manifest.json").write_text("{}")


def test_job_refuses_unsafe_resume_before_ray_starts(tmp_path):
    saved(tmp_path)
    checkpointed(tmp_path)
    proc = subprocess.run([sys.executable, str(REPO / "jobs" / "apo.py"), "--run-dir", str(tmp_path), "algorithm.loss=ipo"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("apo: algorithm.loss: cannot resume"), proc.stderr
    assert "(the run directory holds checkpoints/iteration_0001)" in proc.stderr and "Traceback" not in proc.stderr


def test_a_failed_start_does_not_pin_the_run_dir(tmp_path):
    """A run directory left by a start that failed (config.yaml, metrics, logs, an evaluation baseline,
    no checkpoint, no round data) accepts a corrected config; once it holds a round's tables or a
    checkpoint, unsafe changes are refused again."""
    saved(tmp_path, "data.prompts=bad.jsonl")
    (tmp_path / "metrics.jsonl").write_text('{"event": "actors", "time": 0}\n')
    (tmp_path / "logs").mkdir()
    (tmp_path / "eval_baseline_sampled.parquet").write_bytes(b"")
    fixed = load_config(APOConfig, None, [])
    assert preflight(fixed, tmp_path) == []
    (tmp_path / "iter_0001").mkdir()
    (tmp_path / "iter_0001" / "pairs.parquet").write_bytes(b"")
    assert preflight(fixed, tmp_path) == [
        "data.prompts: cannot resume a run made with 'bad.jsonl' using 'builtin'; use a new --run-dir or the old "
        "value (the run directory holds iter_0001)"]
    checkpointed(tmp_path)
    assert "(the run directory holds checkpoints/iteration_0001, iter_0001)" in preflight(fixed, tmp_path)[0]
