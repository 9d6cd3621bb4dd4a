"""Aggregation of bench/experiments.py on synthetic metric events (no jobs are run)."""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))  # bench/ is scripts, not a package
import experiment_specs as specs  # noqa: E402
import experiments  # noqa: E402


def stdev(*values: float) -> float:
    return statistics.stdev(values)


def _run(rewards: list[float], win: float = 0.6, chosen: list[float] | None = None) -> list[dict]:
    """Eval events at iterations 0..len-1 (win-rate `win` at the last) and train events of `chosen`."""
    events = [{"event": "eval", "time": 0.0, "iteration": i, "reward_mean": r, "reward_greedy": r + 0.1,
               "win_rate": 0.5 if i == 0 else win} for i, r in enumerate(rewards)]
    events += [{"event": "train", "time": 0.0, "step": s, "iteration": 1, "chosen_reward": c, "loss": 0.7}
               for s, c in enumerate(chosen or [])]
    return events


def test_stats_mean_and_sample_std():
    expected = {"mean": pytest.approx(7 / 3), "std": pytest.approx(statistics.stdev([1, 2, 4])), "n": 3}
    assert experiments.stats([1.0, 2.0, 4.0]) == expected
    assert experiments.stats([0.5]) == {"mean": 0.5, "std": None, "n": 1}
    assert experiments.stats([]) == {"mean": None, "std": None, "n": 0}


def test_eval_curve_keeps_the_last_event_per_iteration_and_skips_missing_values():
    events = [*_run([0.1, 0.2]), {"event": "eval", "iteration": 1, "reward_mean": 0.3, "win_rate": None}]
    assert experiments.eval_curve(events, "reward_mean") == {0: 0.1, 1: 0.3}
    assert experiments.eval_curve(events, "win_rate") == {0: 0.5, 1: 0.6}


def test_last_steps_mean_uses_the_last_steps_by_step_number():
    events = _run([0.0], chosen=[float(s) for s in range(15)])
    assert experiments.last_steps_mean(list(reversed(events)), "chosen_reward", last=4) == pytest.approx(12.5)
    assert experiments.last_steps_mean(_run([0.0]), "chosen_reward") is None


def test_summarize_variant_mean_std_per_iteration_with_a_short_and_a_missing_seed():
    runs = {"seed0": _run([0.2, 0.4, 0.6], win=0.7, chosen=[1.0, 2.0]),
            "seed1": _run([0.2, 0.6, 0.8], win=0.9, chosen=[3.0]),
            "seed2": _run([0.2, 0.5]),  # stopped after iteration 1
            "seed3": []}  # failed before logging anything
    v = experiments.summarize_variant(runs)
    assert (v["expected"], v["runs"], v["iterations"]) == (4, 3, [0, 1, 2])
    assert v["reward_mean"][1] == {"mean": pytest.approx(0.5), "std": pytest.approx(0.1), "n": 3}
    assert v["reward_mean"][2] == {"mean": pytest.approx(0.7), "std": pytest.approx(stdev(0.6, 0.8)), "n": 2}
    assert v["win_rate"][2]["mean"] == pytest.approx(0.8)
    assert v["chosen_reward_last_steps"] == {"mean": pytest.approx(2.25), "std": pytest.approx(stdev(1.5, 3.0)), "n": 2}


def test_iterations_to_reach():
    curve = {0: 0.2, 1: 0.5, 2: 0.7, 3: 0.65}
    assert experiments.iterations_to_reach(curve, 0.6) == 2
    assert experiments.iterations_to_reach(curve, 0.7) == 2
    assert experiments.iterations_to_reach(curve, 0.1) == 0
    assert experiments.iterations_to_reach(curve, 0.9) is None


def test_summarize_groups_run_directories_and_computes_reach_on_seed_means(tmp_path):
    exp = specs.EXPERIMENTS["apo_vs_dpo"]
    runs = {}
    for seed in (0, 1):
        runs[str(tmp_path / "apo_vs_dpo" / "dpo_alpha0.3" / f"seed{seed}")] = _run([0.2, 0.5, 0.6, 0.7, 0.8])
        runs[str(tmp_path / "apo_vs_dpo" / "dpo_alpha0" / f"seed{seed}")] = _run([0.2, 0.3, 0.4, 0.5, 0.6])
    summary = experiments.summarize(runs, specs.EXPERIMENTS)["apo_vs_dpo"]
    assert list(summary["variants"]) == [v.name for v in exp.variants]
    assert summary["variants"]["ipo_alpha0.3"]["runs"] == 0  # no run directories: present, empty
    dpo = summary["reach"][0]
    assert (dpo["variant"], dpo["baseline"], dpo["baseline_final_iteration"]) == ("dpo_alpha0.3", "dpo_alpha0", 4)
    assert dpo["target"] == pytest.approx(0.6)
    assert (dpo["variant_iterations"], dpo["baseline_iterations"]) == (2, 4)
    ipo = summary["reach"][1]
    assert (ipo["target"], ipo["variant_iterations"], ipo["baseline_iterations"]) == (None, None, None)
    env = {"command": "python bench/experiments.py", "seeds": [0, 1], "git_commit": "0" * 40, "git_dirty": False,
           "machine": {"cpus": 2}, "versions": {"python": "3.11"}}
    md = experiments.markdown({"apo_vs_dpo": summary}, env)
    assert "| dpo_alpha0.3 | 2/2 | 0.200 ± 0.000 | 0.500 ± 0.000 |" in md
    assert "| dpo_alpha0.3 | dpo_alpha0 | 0.600 (it 4) | 2 | 4 |" in md
    assert "| ipo_alpha0.3 | 0/0 | - |" in md


def test_every_planned_command_names_its_job_run_dir_scale_and_seed(tmp_path):
    runs = experiments.plan(list(specs.EXPERIMENTS), [0, 1], tmp_path)
    assert len(runs) == 2 * sum(len(e.variants) for e in specs.EXPERIMENTS.values())
    run = next(r for r in runs if r.variant.name == "cdpo" and r.seed == 1)
    assert run.directory == tmp_path / "spo_cdpo" / "cdpo" / "seed1"
    assert run.command[1:4] == ["jobs/onmcpo.py", "--run-dir", str(run.directory)]
    assert run.command[4:] == [*specs.ONMCPO_SCALE, *run.variant.overrides, "seed=1"]
    assert "algorithm.cdpo=[24,48]" in run.command
