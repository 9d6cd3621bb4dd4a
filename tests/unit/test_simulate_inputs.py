"""The round simulator's inputs: fitted rates, measured runs, configs, the FLOP model, presets, CLI."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from apo_pipeline.cli import main
from apo_pipeline.simulate.doc_tables import segment_table, stage_table
from apo_pipeline.simulate.events import simulate_round
from apo_pipeline.simulate.flops import LLAMA_8B, LLAMA_70B, GPUModel, TokenShape, decode_tokens_per_s, gpu_rates
from apo_pipeline.simulate.measured import fit_rates, measured_result, read_run
from apo_pipeline.simulate.presets import PRESETS, run_preset, scenarios
from apo_pipeline.simulate.rates import Sample, StageCost, StageRates, fit_cost
from apo_pipeline.simulate.report import gpu_utilization
from apo_pipeline.simulate.workload import Layout, Schedule, layout_from_config, workload_from_config

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))  # bench/ is scripts, not a package
import validate_simulator  # noqa: E402

# ---- fitting -----------------------------------------------------------------------------------


def test_fit_recovers_a_fixed_cost_and_a_rate_from_two_sizes():
    cost = StageCost(0.4, 0.02)
    samples = [Sample(1, x, cost.seconds(x)) for x in (10, 50, 10, 50)]
    assert close(fit_cost(samples), 0.4, 0.02)


def close(cost: StageCost, fixed: float, per_unit: float) -> bool:
    return cost.fixed == pytest.approx(fixed) and cost.per_unit == pytest.approx(per_unit)


def test_fit_counts_calls():
    """Train: one call per step; the per-step cost and the per-pair rate come apart over batch sizes."""
    samples = [Sample(8, 128, 8 * 0.3 + 128 * 0.01), Sample(16, 128, 16 * 0.3 + 128 * 0.01)]
    assert close(fit_cost(samples), 0.3, 0.01)


def test_fit_prefers_a_rate_when_one_size_cannot_tell():
    fitted = fit_cost([Sample(1, 20, 2.0), Sample(1, 20, 2.2)])
    assert fitted.fixed == 0.0 and 2.0 / 20 < fitted.per_unit < 2.2 / 20


def test_fit_without_units_is_a_fixed_cost():
    fitted = fit_cost([Sample(1, 0, 0.5), Sample(2, 0, 1.1)])
    assert fitted.per_unit == 0.0 and 0.5 < fitted.fixed < 0.55


def test_fit_weighs_the_relative_error():
    """A 50x longer sample does not dominate: min (1 - b/2)^2 + (1 - b)^2 gives b = 1.2 (plain
    least squares would give ~1.0001 and miss the short sample by half)."""
    assert close(fit_cost([Sample(0, 1, 2.0), Sample(0, 100, 100.0)]), 0.0, 1.2)


def test_fit_never_goes_negative():
    """Bigger calls measured faster (noise): no negative rate, the best non-negative fit."""
    fitted = fit_cost([Sample(1, 10, 1.0), Sample(1, 20, 0.9)])
    assert fitted.fixed >= 0 and fitted.per_unit >= 0
    assert fit_cost([]) == StageCost()


def test_stage_costs_and_rates_validate():
    with pytest.raises(ValueError, match="negative"):
        StageCost(-1.0, 0.0)
    with pytest.raises(ValueError, match="unknown stage"):
        StageRates({"decode": StageCost()})
    with pytest.raises(ValueError, match="actors"):
        StageCost(1.0, 1.0).seconds(4, actors=0)
    assert StageRates()["judge"] == StageCost()


# ---- measured runs -----------------------------------------------------------------------------


def _stage(t: float, stage: str, seconds: float, seg: int, **extra) -> dict:
    return {"event": "stage", "time": t, "stage": stage, "seconds": seconds, "segment": seg, **extra}


def write_run(root: Path, rounds: int = 3, prompts: int = 8, steps: int = 2, judges: int = 2, scale: float = 1.0) -> Path:
    """A fake OnMC-PO run directory (K = 6) whose stage times follow fixed costs and rates."""
    root.mkdir(parents=True)
    cfg = {"job": "onmcpo", "data": {"num_prompts": prompts * rounds, "num_eval_prompts": 4},
           "generation": {"temperatures": [0.6, 0.8, 1.0], "n_per_temperature": 2},
           "judge": {"both_orders": True}, "learner": {"micro_batch_size": 4, "grad_accum": 1},
           "cluster": {"num_engines": 1, "judge_engines": judges, "learner_ranks": 1}, "loop": {"segments": rounds}}
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))
    actors = {"learner-0": 1, "gen-0": 2, **{f"judge-{i}": 10 + i for i in range(judges)}, "weight-sync": 3}
    events = [{"event": "actors", "time": 0.0, **actors}, _stage(10.0, "eval", 10.0, 0)]
    t = 10.0
    for s in range(1, rounds + 1):
        warm = 5.0 if s == 1 else 0.0
        plan = [("generate", scale * (0.1 + 0.01 * prompts * 6), {"tokens": 100}),
                ("judge", scale * 0.001 * prompts * 10 / judges, {}),
                ("ref_logprobs", scale * 0.005 * prompts * 6, {"pairs": prompts}),
                ("train", scale * steps * (0.2 + 0.05 * 4), {"pairs": steps * 4}),
                ("sync", scale * 0.1 + warm, {}), ("eval", scale * 0.3, {}), ("checkpoint", scale * 0.2, {})]
        for stage, seconds, extra in plan:
            t += seconds + 0.01  # 0.01 s of driver time before each stage
            events.append(_stage(t, stage, seconds, s, **extra))
            if stage == "judge":
                events.append({"event": "judge", "time": t, "segment": s, "comparisons": prompts * 5,
                               "asked": prompts * 10})
                events.append({"event": "data", "time": t, "segment": s, "prompts": prompts, "dropped_by_judge": 0})
            if stage == "train":
                events += [{"event": "train", "time": t, "step": i, "segment": s, "loss": 0.6} for i in range(steps)]
    (root / "metrics.jsonl").write_text("\n".join(json.dumps(e) for e in events) + "\n")
    return root


def test_read_run_measures_rounds_sizes_and_actors(tmp_path):
    run = read_run(write_run(tmp_path / "r"), cores=2)
    assert [r.index for r in run.rounds] == [1, 2, 3]
    assert run.layout.judges == 2 and run.layout.engines == 1 and run.layout.cores == 2
    r2 = run.rounds[1]
    assert r2.workload.prompts == 8 and r2.workload.candidates == 48 and r2.workload.judge_requests == 80
    assert r2.workload.ref_sequences == 48 and r2.workload.steps == 2 and r2.workload.batch == 4
    assert r2.stage_s["driver"] == pytest.approx(7 * 0.01)
    assert r2.wall_s == pytest.approx(sum(r2.stage_s.values()))
    assert run.rounds[0].wall_s == pytest.approx(r2.wall_s + 5.0)  # the warm-up sync of round 1
    assert [r.index for r in run.steady()] == [2, 3]


def test_rates_fitted_on_two_sizes_predict_a_third(tmp_path):
    """Stage times built from fixed costs and rates: fitted on 4 and 16 prompts, predicted at 8."""
    runs = [read_run(write_run(tmp_path / f"p{p}", prompts=p, steps=p // 4)) for p in (4, 16)]
    target = read_run(write_run(tmp_path / "p8", prompts=8, steps=2))
    rates = fit_rates(runs)
    assert close(rates["generate"], 0.1, 0.01)
    # every step has 4 pairs: the per-step cost cannot be told from the rate, so it is all rate
    assert close(rates["train"], 0.0, (0.2 + 0.05 * 4) / 4)
    for rnd in target.steady():
        res = simulate_round(rnd.workload, target.layout, rates, Schedule("sequential"))
        assert res.wall_s == pytest.approx(rnd.wall_s, rel=1e-6)
    assert rates.source.startswith("measured: ") and "/p4, " in rates.source and rates.source.endswith("/p16 (rounds >= 2)")


def test_measured_result_is_the_mean_round(tmp_path):
    run = read_run(write_run(tmp_path / "r"))
    res = measured_result(run.steady())
    assert res.wall_s == pytest.approx(run.rounds[1].wall_s)
    assert res.busy_s["judge"] == pytest.approx(res.stage_s["judge"])
    assert res.overlap == pytest.approx(1.0)


def test_read_run_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.yaml"):
        read_run(tmp_path)
    root = write_run(tmp_path / "bad")
    (root / "metrics.jsonl").write_text('{"event": "actors"}\nnot json\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2"):
        read_run(root)
    (root / "metrics.jsonl").write_text('{"event": "actors", "time": 0}\n')
    with pytest.raises(ValueError, match="no complete segment"):
        read_run(root)


# ---- configs, FLOP model, presets --------------------------------------------------------------


def test_workload_of_the_gpu_configs():
    w = workload_from_config(PRESETS["gpu16"].load())
    assert (w.prompts, w.candidates, w.steps, w.batch) == (20224, 20224 * 6, 158, 128)
    assert w.judge_requests == 20224 * 5 * 2 and w.ref_sequences == 20224 * 6
    assert w.eval_prompts == 512 and w.eval_judge_requests == 512 * 2 * 2


def test_workload_of_apo_sppo():
    cfg = yaml.safe_load((Path(__file__).resolve().parents[2] / "jobs/configs/gpu/apo-8b-sppo.yaml").read_text())
    w = workload_from_config(cfg)
    assert w.prompts == 20224 and w.judge_requests == 20224 * 10 * 2 and w.ref_sequences == 20224 * 2
    assert w.steps == 158
    with pytest.raises(ValueError, match="num_prompts"):
        workload_from_config({"loop": {"segments": 3}, "data": {"num_prompts": None}})


def test_layout_of_a_config_runs_one_judge_without_the_pool():
    cfg = PRESETS["gpu64"].load()
    before, after = layout_from_config(cfg), layout_from_config(cfg, judge_pool=True)
    assert (before.judges, before.judges_reserved, after.judges) == (1, 10, 10)
    assert after.total_gpus == 64 and after.gpus("judge") == 40
    colocated = layout_from_config(PRESETS["gpu8"].load())
    assert colocated.colocate and colocated.total_gpus == 8 and colocated.gpus("generation") == 0


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_fills_its_gpus(name):
    cfg = PRESETS[name].load()
    assert layout_from_config(cfg, judge_pool=True).total_gpus == cfg["cluster"]["num_gpus"]


def test_flop_model_matches_docs_scaling_arithmetic():
    tokens = TokenShape()
    assert tokens.judge_request == 1240
    # judge: 10 requests x 1,240 tokens x 2 x 70.55e9 = 1.75e15 FLOP per prompt, 4.4 GPU-s at 396 TFLOP/s
    rates = gpu_rates(judge_tp=4)
    assert rates["judge"].per_unit * 10 * 4 == pytest.approx(1.75e15 / 396e12, rel=0.01)
    # decoding: at most ~21.7k tokens/s per GPU for 256 sequences of 700 tokens
    assert decode_tokens_per_s(LLAMA_8B, GPUModel(decode_efficiency=1.0), 700) == pytest.approx(21.7e3, rel=0.01)
    # one 128-pair step: 6 x 8.03e9 x 128 x 1,400 (train) + 2 x 8.03e9 x 128 x 6 x 700 (MC scoring)
    step = 128 * rates["train"].per_unit * 296.7e12
    assert step == pytest.approx(6 * LLAMA_8B.params * 128 * 1400 + 2 * LLAMA_8B.params * 128 * 6 * 700, rel=0.01)
    assert LLAMA_70B.kv_bytes_per_token == 320 * 1024


def test_presets_before_pool_after():
    runs = {sc.name: run_preset("gpu16", sc) for sc in scenarios(chunk=1024)}
    before, pool, after = (runs[n].result for n in ("before", "pool", "after"))
    assert pool.stage_s["judge"] == pytest.approx(before.stage_s["judge"] / 2, rel=1e-3)
    assert after.wall_s < pool.wall_s < before.wall_s
    util = gpu_utilization(before, runs["before"].layout)
    assert util["judge"] <= 0.5 + 1e-9  # only judge-0 of two runs
    with pytest.raises(KeyError, match="unknown"):
        run_preset("gpu9", scenarios()[0])


# ---- CLI and the validation script -------------------------------------------------------------


def test_cli_preset_prints_before_and_after(capsys):
    assert main(["simulate", "--preset", "gpu64", "--chunk", "512"]) == 0
    out = capsys.readouterr().out
    assert "before: sequential, judge-0 only" in out and "streamed (chunks of 512)" in out
    assert "GPU util judge" in out


def test_cli_run_predicts_a_measured_round(tmp_path, capsys):
    a, b = write_run(tmp_path / "a", prompts=4, steps=1), write_run(tmp_path / "b", prompts=16, steps=4)
    target = write_run(tmp_path / "c", prompts=8, steps=2)
    assert main(["simulate", "--run", str(a), "--run", str(b), "--target", str(target), "--chunk", "2",
                 "--cores", "64", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    measured, sequential, streamed = out["rows"]
    assert sequential["wall_s"] == pytest.approx(measured["wall_s"], rel=1e-6)
    assert streamed["wall_s"] < sequential["wall_s"]
    assert main(["simulate", "--run", str(target), "--engines", "2"]) == 0
    text = capsys.readouterr().out
    assert "not an independent check" in text and "measured" not in text.split("\n", 2)[2]
    with pytest.raises(SystemExit):
        main(["simulate", "--run", str(target), "--chunk", "0"])


def test_validation_modes_map_to_schedules():
    assert validate_simulator.schedule_of(validate_simulator.MODES["sequential"]) == Schedule("sequential")
    streamed = validate_simulator.schedule_of(["loop.stream=true", "loop.stream_chunk=8"])
    assert streamed == Schedule("streamed", 8)
    assert validate_simulator.schedule_of(["loop.stream=true", "algorithm.reference_from_engines=true"]).ref_from_engines


def test_validation_predicts_each_run_from_the_others(tmp_path):
    runs = [read_run(write_run(tmp_path / f"p{p}", prompts=p, steps=p // 4)) for p in (4, 8, 16)]
    res = validate_simulator.predict([runs[1]], [runs[0], runs[2]], Schedule("sequential"))
    assert res["error"] == pytest.approx(0.0, abs=1e-6)
    assert [r["round"] for r in res["rounds"]] == [1, 2, 3]
    assert res["first_measured_s"] == pytest.approx(res["first_predicted_s"] + 5.0)  # the warm-up sync
    measured, predicted = res["stages"]["train"]
    assert measured == pytest.approx(predicted)


def test_layout_is_what_the_cli_reports():
    layout = Layout(engines=2, judges=1, judges_reserved=2, judge_tp=4, learner_ranks=4)
    assert layout.gpus("judge") == 8 and layout.busy_gpus("judge") == 4 and layout.total_gpus == 14


def test_docs_scaling_holds_the_simulated_tables():
    """docs/scaling.md's tables are the simulator's output (regenerate them with
    `python -m apo_pipeline.simulate.doc_tables` after changing the model)."""
    page = (Path(__file__).resolve().parents[2] / "docs" / "scaling.md").read_text()
    for line in segment_table() + stage_table():
        assert line in page, f"docs/scaling.md lacks: {line}"


def test_validation_reuses_a_finished_run_only_with_the_same_overrides(tmp_path, monkeypatch):
    """`execute` runs the job once, reuses it, and runs it afresh when the config's overrides change."""
    def fake(mode, config, directory):  # a "job" that finishes at once
        extra = validate_simulator.CONFIGS[config]
        return [sys.executable, "-c", f"import pathlib; pathlib.Path({str(directory)!r}, 'final').mkdir()", *extra]

    monkeypatch.setattr(validate_simulator, "command", fake)
    monkeypatch.setitem(validate_simulator.CONFIGS, "tiny", ("a=1",))
    first = validate_simulator.execute("sequential", "tiny", 0, tmp_path)
    again = validate_simulator.execute("sequential", "tiny", 0, tmp_path)
    assert first.status == "ok" and again == first  # reused: the same record, not a second run
    monkeypatch.setitem(validate_simulator.CONFIGS, "tiny", ("a=2",))
    changed = validate_simulator.execute("sequential", "tiny", 0, tmp_path)
    assert changed.command[-1] == "a=2" and changed.status == "ok"


def test_validation_runs_a_configs_modes_back_to_back(tmp_path, monkeypatch):
    """Both modes of a config run in turn (a slow phase of the machine hits both); odd repeats reverse
    the configs and the modes."""
    seen = []
    monkeypatch.setattr(validate_simulator, "execute", lambda mode, name, repeat, out: seen.append((repeat, name, mode))
                        or validate_simulator.Measured(mode, name, repeat, "", [], "ok", 0.0, 0.0, 0.0))
    validate_simulator.run_all(["a", "b"], 2, tmp_path, analyze_only=False)
    assert seen == [(0, "a", "sequential"), (0, "a", "streamed"), (0, "b", "sequential"), (0, "b", "streamed"),
                    (1, "b", "streamed"), (1, "b", "sequential"), (1, "a", "streamed"), (1, "a", "sequential")]


def test_validation_pairs_the_modes_repeat_by_repeat():
    report = [{"mode": "sequential", "config": "a", "per_repeat_s": [1.0, 2.0], "predicted_s": 1.0},
              {"mode": "streamed", "config": "a", "per_repeat_s": [1.5, 2.0], "predicted_s": 0.8},
              {"mode": "sequential", "config": "b", "per_repeat_s": [1.0], "predicted_s": 1.0}]  # no streamed: left out
    (row,) = validate_simulator.paired_ratios(report)
    assert row["config"] == "a" and row["per_repeat"] == [1.5, 1.0]
    assert row["measured"] == pytest.approx(1.25) and row["predicted"] == pytest.approx(0.8)


def test_the_core_count_is_fitted_without_the_target_config(tmp_path, monkeypatch):
    """`Runs.fit_cores` scores each core count on the other configs only: the target's runs are neither
    fitted on nor simulated, and the count comes from the grid 1 .. the machine's cores."""
    measured = [validate_simulator.Measured(mode, name, 0, str(write_run(tmp_path / mode / name, prompts=p, steps=p // 4,
                                                                         scale=10.0 if name == "t" else 1.0)),
                                            [], "ok", 0.0, 0.0, 0.0)
                for mode in validate_simulator.MODES for name, p in (("a", 4), ("b", 8), ("t", 16))]
    fitted_on, simulated = [], []
    real_fit, real_sim = validate_simulator.fit_rates, validate_simulator.simulate_round
    monkeypatch.setattr(validate_simulator, "fit_rates", lambda runs: fitted_on.extend(runs) or real_fit(runs))
    monkeypatch.setattr(validate_simulator, "simulate_round",
                        lambda work, layout, rates, schedule: simulated.append(work.prompts) or real_sim(work, layout, rates, schedule))
    runs = validate_simulator.Runs(measured)
    cores = runs.fit_cores("t", 2.0)
    assert 1.0 <= cores <= 2.0 and cores == pytest.approx(round(cores, 1))
    assert fitted_on and all(r.path.name != "t" for r in fitted_on)
    assert simulated and 16 not in simulated and {4, 8} <= set(simulated)
    assert len(runs.cache) == 11  # every count of the grid was tried
