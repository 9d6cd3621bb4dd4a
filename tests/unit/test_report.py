"""Report plots and summaries from a synthetic metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from matplotlib.image import imread

from apo_pipeline.report import write_comparison, write_report
from apo_pipeline.report.plots import series, stage_seconds


def _events(reward_gain: float = 0.1, dynamics: bool = True) -> list[dict]:
    events: list[dict] = [{"event": "run_start", "time": 0.0}]
    step = 0
    for it in range(4):
        events.append({"event": "eval", "time": 1.0, "iteration": it, "reward_mean": 0.2 + reward_gain * it,
                       "win_rate": 0.5 + 0.1 * it, "reward_greedy": 0.3 + reward_gain * it})
        if it == 3:
            break
        for stage, seconds in (("generate", 2.0), ("judge", 1.0), ("ref_logprobs", 0.5), ("train", 3.0),
                               ("sync", 0.2), ("checkpoint", 0.3)):
            events.append({"event": "stage", "time": 1.0, "stage": stage, "seconds": seconds, "iteration": it + 1})
        events.append({"event": "judge", "time": 1.0, "asked": 8, "scored": 8, "failed": 0, "retried": 0, "ties": 1})
        for _ in range(5):
            step += 1
            train = {"event": "train", "time": 1.0, "step": step, "iteration": it + 1, "loss": 0.7 - 0.02 * step,
                     "margin": 0.05 * step, "accuracy": 0.6, "chosen_reward": 0.01 * step,
                     "rejected_reward": -0.01 * step, "lr": 1e-5, "grad_norm": 1.0, "mc_entropy": 1.2,
                     "pairs_per_s": 10.0, "tokens_per_s": 300.0}
            if dynamics:
                train.update(dyn_pos_norm=1.0 / step, dyn_neg_norm=0.5 + 0.1 * step, dyn_weight_mean=0.5)
            events.append(train)
    events.append({"event": "stage", "time": 1.0, "stage": "eval", "seconds": 4.0})
    return events


def _run(tmp_path: Path, name: str, events: list[dict], config: dict | None = None) -> Path:
    run = tmp_path / name
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    if config is not None:
        (run / "config.yaml").write_text(yaml.safe_dump(config))
    return run


def _assert_drawn_png(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = imread(path)
    assert pixels.shape[0] > 100 and float(np.std(pixels)) > 0.01  # not a blank canvas


def test_report_writes_all_plots_and_markdown(tmp_path):
    config = {"job": "apo", "name": "r", "algorithm": {"loss": "dpo", "beta": 0.1}, "loop": {"iterations": 3, "alpha": 0.3}}
    run = _run(tmp_path, "r", _events(), config)
    written = write_report(run)
    names = [p.name for p in written]
    assert names == ["eval.png", "train.png", "stages.png", "dynamics.png", "report.md"]
    assert all(p.parent == run / "report" for p in written)
    for png in written[:-1]:
        _assert_drawn_png(png)
    md = (run / "report" / "report.md").read_text()
    assert "| mean reward (sampled) | 0.2 | 0.5 |" in md
    assert "| win-rate vs start (sampled) | 0.5 | 0.8 |" in md
    assert "| train steps |  | 15 |" in md
    assert "| train | 9.0 | " in md and "| eval | 4.0 | " in md and "| **total** | 25.0 | 100% |" in md
    assert "| algorithm.loss | dpo |" in md and "| loop.alpha | 0.3 |" in md
    for name in names[:-1]:
        assert f"]({name})" in md


def test_plots_without_data_are_skipped(tmp_path):
    events = [e for e in _events(dynamics=False) if e["event"] != "stage"]
    run = _run(tmp_path, "r", events)
    (run / "report").mkdir()
    (run / "report" / "stages.png").write_bytes(b"stale")
    names = [p.name for p in write_report(run)]
    assert names == ["eval.png", "train.png", "report.md"]
    assert sorted(p.name for p in (run / "report").iterdir()) == ["eval.png", "report.md", "train.png"]
    md = (run / "report" / "report.md").read_text()
    assert "Time by stage" not in md and "dynamics.png" not in md and "Config" not in md

    only_eval = _run(tmp_path, "e", [{"event": "eval", "time": 0, "iteration": 0, "reward_mean": 0.1, "win_rate": 0.5}])
    assert [p.name for p in write_report(only_eval)] == ["eval.png", "report.md"]
    empty = _run(tmp_path, "empty", [])
    assert [p.name for p in write_report(empty)] == ["report.md"]


def test_report_needs_metrics(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        write_report(tmp_path)


def test_series_dedupes_resumed_steps_and_stage_table():
    events = _events()
    events.append({"event": "train", "time": 2.0, "step": 3, "loss": 9.0})  # re-done after a resume
    xs, ys = series(events, "train", "step", "loss")
    assert xs == list(range(1, 16)) and ys[2] == 9.0
    table = stage_seconds(events)
    assert list(table) == ["1", "2", "3", "other"]
    assert table["1"]["generate"] == 2.0 and table["other"] == {"eval": 4.0}


def test_comparison_overlays_runs(tmp_path):
    a = _run(tmp_path / "x", "dpo", _events(0.1))
    b = _run(tmp_path / "y", "apo", _events(0.2))
    out = tmp_path / "cmp"
    written = write_comparison([a, b], out)
    assert [p.name for p in written] == ["reward.png", "win_rate.png", "loss.png", "comparison.md"]
    for png in written[:-1]:
        _assert_drawn_png(png)
    md = (out / "comparison.md").read_text()
    assert "| dpo | 0.5 | 0.8 | 25.0 |" in md and "| apo | 0.8 | 0.8 | 25.0 |" in md

    same = _run(tmp_path / "z", "dpo", _events(0.3))
    md = (write_comparison([a, same], out)[-1]).read_text()
    assert "| x/dpo |" in md and "| z/dpo |" in md


def test_comparison_legend_has_run_names(tmp_path, monkeypatch):
    from apo_pipeline.report import plots

    legends = []
    real = plots.line_panels

    def spy(path, panels, xlabel, title):
        legends.append((path.name, [[line[0] for line in lines] for _, lines in panels]))
        return real(path, panels, xlabel, title)

    monkeypatch.setattr(plots, "line_panels", spy)
    runs = [_run(tmp_path, "dpo", _events()), _run(tmp_path, "apo", _events())]
    write_comparison(runs, tmp_path / "cmp")
    assert ("reward.png", [["dpo", "apo"]]) in legends and ("loss.png", [["dpo", "apo"]]) in legends


def test_compare_cli_writes_what_it_prints(tmp_path, capsys):
    from apo_pipeline.cli import main

    a = _run(tmp_path, "dpo", _events(0.1))
    b = _run(tmp_path, "apo", _events(0.2))
    out = tmp_path / "cmp"
    assert main(["compare", str(a), str(b), "-o", str(out)]) == 0
    written = [Path(line) for line in capsys.readouterr().out.splitlines()]
    assert [p.name for p in written] == ["reward.png", "win_rate.png", "loss.png", "comparison.md"]
    assert all(p.parent == out for p in written)
    for png in written[:-1]:
        _assert_drawn_png(png)
    md = written[-1].read_text()
    assert "| dpo |" in md and "| apo |" in md


def test_report_shows_sample_responses_scored_by_the_task_reward(tmp_path):
    from apo_pipeline.rollout import Candidate, Rollout
    from apo_pipeline.storage import write_rollouts

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"event": "eval", "time": 0.0, "iteration": 0}) + "\n")
    (run / "config.yaml").write_text(yaml.safe_dump(
        {"judge": {"backend": "llm"}, "data": {"eval_prompts": "builtin:instructions"}}))
    prompt = 'Give some advice about baking bread. Do not use any commas.'

    def responses(text: str) -> list[Rollout]:
        return [Rollout(f"<|im_start|>user\n{prompt}", [1], [Candidate([2], text, "stop", -1.0, 0.0)], 4, prompt)]

    write_rollouts(run / "eval" / "greedy_0.parquet", responses("Flour, water, salt."))
    write_rollouts(run / "eval" / "greedy_2.parquet", responses("Flour and water and salt."))
    write_rollouts(run / "eval" / "sampled_2.parquet", responses("ignored: greedy is shown"))
    text = (run / "report" / "report.md").read_text() if write_report(run) else ""
    assert "## Sample responses (greedy, held-out; start vs evaluation 2)" in text
    assert f"**Prompt 4:** {prompt}" in text  # the prompt as written, not the chat rendering
    assert "*start* (reward 0):" in text and "> Flour, water, salt." in text
    assert "*after 2* (reward 1):" in text and "> Flour and water and salt." in text


def test_report_splits_apo_policies_and_shows_round_means(tmp_path, monkeypatch):
    """APO logs each evaluation twice (policy hat / extrapolated): both get their lines and rows; the
    per-round means of the train events (MC-kernel entropy, G) make a table; G is plotted."""
    from apo_pipeline.report import plots

    events = []
    for e in _events():
        if e["event"] == "eval":
            events.append({**e, "policy": "hat", "reward_mean": e["reward_mean"] - 0.05})
            events.append({**e, "policy": "extrapolated"})
        elif e["event"] == "train":
            events.append({**e, "mc_entropy": 1.0 + e["iteration"], "dyn_G_total": 0.1 * e["step"],
                           "dyn_top_G_total": 0.05, "dyn_top_loss_share": 0.5})
        else:
            events.append(e)
    last = [e for e in events if e["event"] == "train"][-1]
    events.append({**last, "mc_entropy": 9.0})  # the last step again after a resume: it wins
    assert plots.round_means(events, "mc_entropy") == {1: 2.0, 2: 3.0, 3: pytest.approx((4.0 * 4 + 9.0) / 5)}
    assert plots.eval_policies(events) == ["extrapolated", "hat"]
    legends = []
    real = plots.line_panels

    def spy(path, panels, xlabel, title):
        legends.append((path.name, [[line[0] for line in lines if line[1]] for _, lines in panels]))
        return real(path, panels, xlabel, title)

    monkeypatch.setattr(plots, "line_panels", spy)
    run = _run(tmp_path, "apo", events)
    write_report(run)
    eval_legend = dict(legends)["eval.png"]
    assert eval_legend[0] == ["extrapolated sampled", "extrapolated greedy", "hat sampled", "hat greedy"]
    assert dict(legends)["dynamics.png"][1] == ["TOT"] and dict(legends)["dynamics.png"][2] == ["TOP"]
    md = (run / "report" / "report.md").read_text()
    assert "| mean reward (sampled, hat) | 0.15 | 0.45 |" in md
    assert "| mean reward (sampled, extrapolated) | 0.2 | 0.5 |" in md
    assert "| round | MC kernel entropy (nats) | loss | chosen reward | G (TOT) | TOP loss share |" in md
    assert "| 1 | 2 | " in md
