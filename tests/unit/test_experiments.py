"""Aggregation of bench/experiments.py on synthetic metric events (no jobs are run)."""

from __future__ import annotations

import shutil
import statistics
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))  # bench/ is scripts, not a package
import experiment_specs as specs  # noqa: E402
import experiment_runs  # noqa: E402
import experiments  # noqa: E402
import paired_stats  # noqa: E402


def stdev(*values: float) -> float:
    return statistics.stdev(values)


def _run(rewards: list[float], win: float = 0.6, chosen: list[float] | None = None, hat: float | None = None) -> list[dict]:
    """Eval events at iterations 0..len-1 (win-rate `win` at the last) and train events of `chosen`;
    with `hat`, APO's two lines: "extrapolated" = `rewards`, "hat" = `rewards` + `hat`."""
    events = [{"event": "eval", "time": 0.0, "iteration": i, "reward_mean": r, "reward_greedy": r + 0.1,
               "win_rate": 0.5 if i == 0 else win} for i, r in enumerate(rewards)]
    if hat is not None:
        events = [{**e, "policy": "extrapolated"} for e in events] + [
            {**e, "policy": "hat", "reward_mean": e["reward_mean"] + hat} for e in events]
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
        runs[str(tmp_path / "apo_vs_dpo" / "dpo_alpha0.3" / f"seed{seed}")] = _run([0.2, 0.5, 0.6, 0.7, 0.8], hat=-0.1)
        runs[str(tmp_path / "apo_vs_dpo" / "dpo_alpha0" / f"seed{seed}")] = _run([0.2, 0.3, 0.4, 0.5, 0.6], hat=0.0)
    summary = experiments.summarize(runs, specs.EXPERIMENTS)["apo_vs_dpo"]
    assert list(summary["variants"]) == [f"{v.name}/{p}" for v in exp.variants for p in ("extrapolated", "hat")]
    assert summary["variants"]["ipo_alpha0.3/hat"]["runs"] == 0  # no run directories: present, empty
    assert summary["variants"]["dpo_alpha0.3/hat"]["reward_mean"][4]["mean"] == pytest.approx(0.7)
    dpo = summary["reach"][0]
    assert (dpo["variant"], dpo["baseline"], dpo["baseline_final_iteration"]) == (
        "dpo_alpha0.3/extrapolated", "dpo_alpha0/extrapolated", 4)
    assert dpo["target"] == pytest.approx(0.6)
    assert (dpo["variant_iterations"], dpo["baseline_iterations"]) == (2, 4)
    ipo = summary["reach"][1]
    assert (ipo["target"], ipo["variant_iterations"], ipo["baseline_iterations"]) == (None, None, None)
    env = {"command": "python bench/experiments.py", "seeds": [0, 1], "git_commit": "0" * 40, "git_dirty": False,
           "machine": {"cpus": 2}, "versions": {"python": "3.11"}}
    md = experiments.markdown({"apo_vs_dpo": summary}, env)
    assert "| dpo_alpha0.3/extrapolated | 2/2 | 0.200 ± 0.000 | 0.500 ± 0.000 |" in md
    assert "| dpo_alpha0.3/extrapolated | dpo_alpha0/extrapolated | 0.600 (it 4) | 2 | 4 |" in md
    assert "| ipo_alpha0.3/hat | 0/0 | - |" in md
    # the same per-seed difference on both seeds: sd 0, the interval collapses onto +0.2 (resolved)
    assert "| dpo_alpha0.3/extrapolated | dpo_alpha0/extrapolated | reward_mean | 2 | +0.200 | [+0.200, +0.200] | yes |" in md
    assert "| dpo_alpha0.3/extrapolated | dpo_alpha0.3/hat | reward_mean | 2 | +0.100 |" in md
    assert "| ipo_alpha0.3/hat | ipo_alpha0/hat | reward_mean | 0 | - | - | - |" in md


def test_every_planned_command_names_its_job_run_dir_scale_and_seed(tmp_path):
    runs = experiment_runs.plan(list(specs.EXPERIMENTS), [0, 1], tmp_path)
    assert len(runs) == 2 * sum(len(e.variants) for e in specs.EXPERIMENTS.values())
    run = next(r for r in runs if r.variant.name == "cdpo" and r.seed == 1)
    assert run.directory == tmp_path / "spo_cdpo" / "cdpo" / "seed1"
    assert run.command[1:4] == ["jobs/onmcpo.py", "--run-dir", str(run.directory)]
    assert run.command[4:] == [*specs.ONMCPO_SCALE, *run.variant.overrides, "seed=1"]
    assert "algorithm.cdpo=[24,48]" in run.command


def test_t_quantiles_match_published_tables():
    for df, want in ((1, 12.7062047), (2, 4.3026527), (4, 2.7764451), (9, 2.2621572), (29, 2.0452296)):
        assert paired_stats.t_quantile(0.975, df) == pytest.approx(want, abs=1e-6)
    assert paired_stats.t_quantile(0.5, 3) == pytest.approx(0.0, abs=1e-12)
    assert paired_stats.t_quantile(0.025, 4) == pytest.approx(-2.7764451, abs=1e-6)
    assert paired_stats.t_cdf(1.0, 1) == pytest.approx(0.75)  # Cauchy: 1/2 + atan(1)/pi
    with pytest.raises(ValueError, match="df >= 1"):
        paired_stats.t_quantile(0.975, 0)


def test_paired_difference_uses_common_seeds_and_a_t_interval():
    a = {"seed0": 0.70, "seed1": 0.62, "seed2": 0.75, "seed3": 0.66, "seed4": 0.71, "seed5": 0.9}
    b = {"seed0": 0.64, "seed1": 0.60, "seed2": 0.69, "seed3": 0.66, "seed4": 0.65}
    got = paired_stats.paired_difference(a, b)
    diffs = [0.06, 0.02, 0.06, 0.0, 0.06]
    half = 2.7764451 * statistics.stdev(diffs) / 5 ** 0.5
    assert got["seeds"] == ["seed0", "seed1", "seed2", "seed3", "seed4"] and got["n"] == 5
    assert got["mean"] == pytest.approx(0.04) and got["sd"] == pytest.approx(statistics.stdev(diffs))
    assert (got["low"], got["high"]) == (pytest.approx(0.04 - half, abs=1e-7), pytest.approx(0.04 + half, abs=1e-7))
    assert got["resolved"] is True  # 0.04 +- 0.0367 excludes 0
    noisy = paired_stats.paired_difference({0: 0.1, 1: -0.1, 2: 0.05}, {0: 0.0, 1: 0.0, 2: 0.0})
    assert noisy["resolved"] is False and noisy["low"] < 0 < noisy["high"]
    one = paired_stats.paired_difference({0: 1.0}, {0: 0.5})
    assert (one["mean"], one["low"], one["resolved"]) == (0.5, None, None)


def test_paired_rows_and_entropy_per_round_in_the_summary(tmp_path):
    def with_entropy(reward, entropies):
        events = _run([0.6, reward])
        events += [{"event": "train", "time": 0.0, "step": s, "segment": 1 + s // 2, "mc_entropy": h}
                   for s, h in enumerate(entropies)]
        return events

    runs = {}
    for seed, (gain, h) in enumerate(((0.1, 1.2), (0.05, 1.3), (0.08, 1.1))):
        root = tmp_path / "reference"
        runs[str(root / "initial" / f"seed{seed}")] = with_entropy(0.6 + gain, [1.6, 1.6, h, h])
        runs[str(root / "round" / f"seed{seed}")] = with_entropy(0.6, [1.6, 1.6, 1.6, 1.6])
    summary = experiments.summarize(runs, specs.EXPERIMENTS)["reference"]
    entropy = summary["variants"]["initial"]["mc_entropy_by_round"]
    assert entropy[1]["mean"] == pytest.approx(1.6) and entropy[2]["mean"] == pytest.approx(1.2)
    row = next(r for r in summary["paired"] if (r["variant"], r["baseline"], r["metric"]) == ("initial", "round", "reward_mean"))
    assert row["n"] == 3 and row["mean"] == pytest.approx(0.23 / 3) and row["resolved"] is True
    env = {"command": "x", "seeds": [0, 1, 2], "git_commit": "0" * 40, "git_dirty": False, "machine": {"cpus": 2},
           "versions": {}}
    md = experiments.markdown({"reference": summary}, env)
    assert "| initial | 1.600 ± 0.000 | 1.200 ± 0.100 |" in md
    assert "| initial | round | reward_mean | 3 | +0.077 |" in md


def test_dry_run_plans_five_seeds_by_default_and_validates_every_config(tmp_path, capsys):
    args = ["--dry-run", "--only", "reference", "spo_cdpo", "--out", str(tmp_path), "--archive", str(tmp_path / "archive")]
    assert experiments.main(args) == 0  # an empty archive: the repository's holds finished runs
    out = capsys.readouterr().out
    assert "# 35 of 35 runs to do" in out  # (3 + 4 variants) x seeds 0..4
    assert "algorithm.reference=round" in out and "algorithm.cdpo_shape=phases" in out and "seed=4" in out


def test_runs_with_the_same_resolved_config_are_run_once_and_copied(tmp_path):
    """OnMC-PO's default arm (MC negatives, M = 1, dpo, pi_ref initial) appears in four experiments
    (`algorithm.reference=initial` spelled out resolves to the same config), offline MC-PO's in two."""
    runs = experiment_runs.plan(list(specs.EXPERIMENTS), [0], tmp_path / "out", tmp_path / "archive")
    by_dir = {r.directory.relative_to(tmp_path / "out").parts[:2]: r for r in runs}
    same = {a.directory: b.directory for a, b in experiment_runs.same_runs(runs).items()}
    online, offline = by_dir["online_vs_offline", "online_mc"], by_dir["mc_samplers", "mc_m1"]
    assert same == {by_dir["reference", "initial"].directory: online.directory,
                    by_dir["spo_cdpo", "dpo"].directory: online.directory,
                    by_dir["streaming", "sequential"].directory: online.directory,
                    by_dir["online_vs_offline", "offline_mc"].directory: offline.directory}
    (online.directory / "final").mkdir(parents=True)
    (online.directory / "metrics.jsonl").write_text('{"event": "eval", "iteration": 0}\n')
    experiment_runs.archive(online)
    copy = by_dir["reference", "initial"]
    assert not copy.finished
    assert experiment_runs.copy_run(copy, online) == f"same as {online.directory}"
    assert copy.finished and copy.directory.is_symlink()
    assert experiment_runs.load_events(copy) == [{"event": "eval", "iteration": 0}]


def test_an_archived_run_is_finished_and_read_without_its_directory(tmp_path):
    """The archive (kept in git) is what carries a batch over to another machine."""
    run = experiment_runs.plan(["reference"], [3], tmp_path / "out", tmp_path / "archive")[0]
    assert not run.finished and experiment_runs.load_events(run) == []
    run.directory.mkdir(parents=True)
    (run.directory / "metrics.jsonl").write_text('{"event": "train", "step": 0}\n{"event": "train", "step": 1}\n')
    assert experiment_runs.load_events(run) == [{"event": "train", "step": 0}, {"event": "train", "step": 1}]
    experiment_runs.archive(run)
    first = run.archive.read_bytes()
    experiment_runs.archive(run)
    assert run.archive.read_bytes() == first, "archiving the same metrics twice changed the file"
    shutil.rmtree(tmp_path / "out")
    assert run.finished and run.archive == tmp_path / "archive" / "reference" / "initial" / "seed3.jsonl.gz"
    assert [e["step"] for e in experiment_runs.load_events(run)] == [0, 1]
