"""The round simulator's event simulation on closed-form cases (apo_pipeline.simulate.events)."""

from __future__ import annotations

import pytest

from apo_pipeline.simulate.events import build_tasks, run_tasks, simulate_round
from apo_pipeline.simulate.rates import StageCost, StageRates
from apo_pipeline.simulate.workload import Layout, RoundWorkload, Schedule

SEQ = Schedule("sequential")


def work(prompts: int = 16, steps: int = 4, batch: float = 4, k: int = 2, requests: int = 2, eval_prompts: int = 0,
         checkpoint: bool = False) -> RoundWorkload:
    """`k` candidates, `requests` comparisons and `k` reference sequences per prompt."""
    return RoundWorkload(prompts=prompts, candidates=prompts * k, judge_requests=prompts * requests,
                         ref_sequences=prompts * k, steps=steps, batch=batch, eval_prompts=eval_prompts,
                         checkpoint=checkpoint)


def rates(**costs: tuple[float, float]) -> StageRates:
    return StageRates({s: StageCost(*c) for s, c in costs.items()})


def streamed(chunk: int, ref_from_engines: bool = False) -> Schedule:
    return Schedule("streamed", chunk, ref_from_engines)


def test_sequential_wall_is_the_sum_of_the_stage_calls():
    r = rates(generate=(0.5, 0.1), judge=(0.2, 0.05), ref_logprobs=(0.1, 0.01), train=(0.3, 0.2), sync=(0.7, 0),
              eval=(0.4, 0.1), checkpoint=(0.6, 0), driver=(0.25, 0.01))
    w = work(prompts=16, steps=4, batch=4, eval_prompts=8, checkpoint=True)
    layout = Layout(engines=2, judges=1, learner_ranks=2)
    expected = {
        "generate": 0.5 + 0.1 * 32 / 2, "judge": 0.2 + 0.05 * 32, "ref_logprobs": 0.1 + 0.01 * 32 / 2,
        "train": 4 * (0.3 + 0.2 * 4 / 2), "sync": 0.7, "eval": 0.4 + 0.1 * 8 / 2, "checkpoint": 0.6,
        "driver": 0.25 + 0.01 * 16,
    }
    res = simulate_round(w, layout, r, SEQ)
    assert res.wall_s == pytest.approx(sum(expected.values()))
    for stage, seconds in expected.items():
        assert res.stage_s[stage] == pytest.approx(seconds), stage
    assert res.overlap == pytest.approx(1.0)


def test_sequential_tasks_never_overlap():
    res = simulate_round(work(), Layout(), rates(generate=(0, 1), judge=(0, 1), train=(0, 1)), SEQ)
    spans = sorted((t.start, t.end) for t in res.tasks)
    assert all(a_end <= b_start + 1e-12 for (_, a_end), (b_start, _) in zip(spans, spans[1:]))


@pytest.mark.parametrize("layout", [Layout(), Layout(engines=2, learner_ranks=2, colocate=True, switch_s=0.5),
                                    Layout(cores=2, role_cores={"generation": 1, "learner": 1, "judge": 1})])
def test_a_single_chunk_streamed_equals_sequential(layout):
    r = rates(generate=(0.5, 0.1), judge=(0.2, 0.05), ref_logprobs=(0.1, 0.01), train=(0.3, 0.2), sync=(0.7, 0),
              eval=(0.4, 0.1), checkpoint=(0.6, 0), driver=(0.25, 0.01))
    w = work(eval_prompts=8, checkpoint=True)
    seq = simulate_round(w, layout, r, SEQ)
    one = simulate_round(w, layout, r, streamed(chunk=w.prompts))
    assert one.wall_s == pytest.approx(seq.wall_s)
    assert one.stage_s == pytest.approx(seq.stage_s)
    assert one.busy_s == pytest.approx(seq.busy_s)


def test_infinitely_fast_stages_leave_the_others():
    """Only training costs anything: both modes take exactly the S steps."""
    w = work(steps=5, batch=4)
    r = rates(train=(0.2, 0.1))
    for schedule in (SEQ, streamed(4), streamed(1)):
        assert simulate_round(w, Layout(), r, schedule).wall_s == pytest.approx(5 * (0.2 + 0.4))
    assert simulate_round(w, Layout(), StageRates(), streamed(4)).wall_s == 0.0


def test_a_judge_bottleneck_is_the_round_plus_the_first_chunk():
    """Judge slower than generation: wall = generating one chunk + judging all prompts (closed form)."""
    g, j, c, p = 0.1, 1.0, 4, 32  # seconds per prompt (k = 1 candidate, 1 request), prompts per chunk
    w = work(prompts=p, steps=0, k=1, requests=1)
    res = simulate_round(w, Layout(), rates(generate=(0, g), judge=(0, j)), streamed(c))
    assert res.wall_s == pytest.approx(g * c + j * p)
    assert res.busy_fraction("judge") == pytest.approx(j * p / res.wall_s)


def test_a_generation_bottleneck_is_the_round_plus_the_last_chunk():
    g, j, c, p = 1.0, 0.1, 4, 32
    w = work(prompts=p, steps=0, k=1, requests=1)
    res = simulate_round(w, Layout(), rates(generate=(0, g), judge=(0, j)), streamed(c))
    assert res.wall_s == pytest.approx(g * p + j * c)


def test_a_learner_bottleneck_trains_as_chunks_arrive():
    """S = P steps, one chunk per prompt: step k waits for chunk k, so with fast data the round is
    one chunk's data plus all the steps."""
    p = 8
    w = work(prompts=p, steps=p, batch=1, k=1, requests=1)
    res = simulate_round(w, Layout(), rates(generate=(0, 0.1), judge=(0, 0.1), train=(1.0, 0)), streamed(1))
    assert res.wall_s == pytest.approx(0.1 + 0.1 + p * 1.0)


def test_bounds_streamed_between_bottleneck_and_sequential():
    w = work(prompts=64, steps=16, eval_prompts=8, checkpoint=True)
    r = rates(generate=(0.2, 0.05), judge=(0.1, 0.3), ref_logprobs=(0.1, 0.02), train=(0.2, 0.1), sync=(0.5, 0),
              eval=(0.2, 0.05), checkpoint=(0.3, 0))
    seq = simulate_round(w, Layout(), r, SEQ)
    res = simulate_round(w, Layout(), r, streamed(8))
    assert max(res.busy_s.values()) <= res.wall_s + 1e-9
    assert res.wall_s < seq.wall_s
    assert res.overlap > 1.0


@pytest.mark.parametrize("schedule", [SEQ, streamed(8), streamed(3, ref_from_engines=True)])
@pytest.mark.parametrize("layout", [Layout(engines=2, judges=2, judges_reserved=3, learner_ranks=2),
                                    Layout(engines=4, learner_ranks=2, colocate=True, switch_s=0.3)])
def test_busy_times_add_up_to_the_task_times(schedule, layout):
    w = work(prompts=32, steps=8, eval_prompts=4, checkpoint=True)
    r = rates(generate=(0.2, 0.05), judge=(0.1, 0.3), ref_logprobs=(0.1, 0.02), train=(0.2, 0.1), sync=(0.5, 0),
              eval=(0.2, 0.05), checkpoint=(0.3, 0), driver=(0.1, 0.01))
    res = simulate_round(w, layout, r, schedule)
    by_tasks = sum((t.end - t.start) * len(t.roles) for t in res.tasks)
    assert sum(res.busy_s.values()) == pytest.approx(by_tasks)
    assert sum(res.stage_s.values()) == pytest.approx(sum(t.end - t.start for t in res.tasks))
    for role in res.busy_s:
        assert 0.0 <= res.busy_fraction(role) <= 1.0 + 1e-9
    if schedule.mode == "sequential":
        assert sum(res.stage_s.values()) == pytest.approx(res.wall_s)


def test_smaller_chunks_never_slow_a_round_without_per_call_costs():
    """Halving the chunks only makes data ready earlier: wall time is monotonic in the chunk size."""
    w = work(prompts=64, steps=16, eval_prompts=4, checkpoint=True)
    r = rates(generate=(0, 0.05), judge=(0, 0.2), ref_logprobs=(0, 0.03), train=(0, 0.1), sync=(0.5, 0),
              eval=(0, 0.05), checkpoint=(0.3, 0))
    walls = [simulate_round(w, Layout(), r, streamed(c)).wall_s for c in (64, 32, 16, 8, 4, 2, 1)]
    assert all(a >= b - 1e-9 for a, b in zip(walls, walls[1:]))
    assert walls[-1] < walls[0]


def test_per_call_costs_make_tiny_chunks_slow():
    w = work(prompts=64, steps=16)
    r = rates(generate=(0.5, 0.05), judge=(0.5, 0.2), ref_logprobs=(0.5, 0.03), train=(0, 0.1))
    wall = {c: simulate_round(w, Layout(), r, streamed(c)).wall_s for c in (1, 16, 64)}
    assert wall[16] < wall[64] and wall[16] < wall[1]


def test_training_steps_unlock_in_proportion_to_ready_prompts():
    """P = 8 in chunks of 2, S = 4: step k may start only after chunk k's reference pass."""
    w = work(prompts=8, steps=4, batch=1, k=1, requests=1)
    res = simulate_round(w, Layout(), rates(generate=(0, 0.1), judge=(0, 0.1), ref_logprobs=(0, 0.1),
                                            train=(0.01, 0)), streamed(2))
    refs = [t for t in res.tasks if t.stage == "ref_logprobs"]
    steps = [t for t in res.tasks if t.stage == "train"]
    assert len(refs) == 4 and len(steps) == 4
    for ref, step in zip(refs, steps):
        assert step.start >= ref.end - 1e-12


def test_floor_unlocking_with_fewer_steps_than_chunks():
    """S = 2 steps, 4 chunks: floor(2 * P_j / P) reaches 1 after chunk 2 and 2 after chunk 4."""
    tasks = build_tasks(work(prompts=8, steps=2, batch=1), Layout(), rates(train=(1, 0)), streamed(2))
    refs = [i for i, t in enumerate(tasks) if t.stage == "ref_logprobs"]
    steps = [t for t in tasks if t.stage == "train"]
    assert refs[1] in steps[0].deps and refs[3] in steps[1].deps


def test_the_judge_pool_divides_the_judge_stage():
    w = work(prompts=16)
    r = rates(judge=(1.0, 0.5))
    one = simulate_round(w, Layout(judges=1, judges_reserved=4), r, SEQ)
    four = simulate_round(w, Layout(judges=4, judges_reserved=4), r, SEQ)
    assert one.stage_s["judge"] == pytest.approx(1.0 + 0.5 * 32)
    assert four.stage_s["judge"] == pytest.approx(1.0 + 0.5 * 32 / 4)


def test_colocated_generation_and_learner_take_turns_with_sleep_and_wake():
    layout = Layout(engines=2, learner_ranks=2, colocate=True, switch_s=0.5)
    r = rates(generate=(0, 0.1), judge=(0, 0.3), ref_logprobs=(0, 0.05), train=(0, 0.2), sync=(0.1, 0))
    w = work(prompts=32, steps=8)
    seq = simulate_round(w, layout, r, SEQ)
    assert seq.switch_s == pytest.approx(2 * 0.5)  # sleep before the reference pass, wake for the sync
    res = simulate_round(w, layout, r, streamed(4))
    policy = sorted((t.start, t.end) for t in res.tasks if {"generation", "learner"} & set(t.roles))
    assert all(a_end <= b_start + 1e-12 for (_, a_end), (b_start, _) in zip(policy, policy[1:]))
    gen_end = max(t.end for t in res.tasks if t.stage == "generate")
    assert all(t.start >= gen_end - 1e-12 for t in res.tasks if t.stage in ("ref_logprobs", "train"))
    assert res.switch_s == pytest.approx(2 * 0.5)


def test_reference_from_engines_drops_the_reference_pass():
    w = work(prompts=32, steps=8)
    r = rates(generate=(0, 0.1), judge=(0, 0.1), ref_logprobs=(0, 0.5), train=(0, 0.1))
    free = simulate_round(w, Layout(), r, streamed(4, ref_from_engines=True))
    paid = simulate_round(w, Layout(), r, streamed(4))
    assert "ref_logprobs" not in free.stage_s
    assert free.wall_s < paid.wall_s


def test_shared_cores_slow_what_runs_at_once():
    """On one core every role demanding one core, streaming only shares the same core: the
    streamed round takes as long as the sequential one (work is conserved)."""
    layout = Layout(cores=1, role_cores={"generation": 1, "judge": 1, "learner": 1, "driver": 1})
    w = work(prompts=32, steps=8)
    r = rates(generate=(0, 0.1), judge=(0, 0.3), ref_logprobs=(0, 0.05), train=(0, 0.2), sync=(0.1, 0))
    seq = simulate_round(w, layout, r, SEQ)
    res = simulate_round(w, layout, r, streamed(4))
    assert res.wall_s == pytest.approx(seq.wall_s)
    two = simulate_round(w, Layout(cores=2, role_cores=layout.role_cores), r, streamed(4))
    assert two.wall_s < seq.wall_s


def test_a_dependency_cycle_is_reported():
    tasks = build_tasks(work(prompts=2, steps=1), Layout(), rates(train=(1, 0)), SEQ)
    tasks[0].deps.append(len(tasks) - 1)
    with pytest.raises(RuntimeError, match="cycle"):
        run_tasks(tasks, Layout())


def test_schedule_chunks_and_bad_values():
    assert Schedule("streamed", 3).chunks(8) == [3, 3, 2]
    assert Schedule("streamed", 16).chunks(8) == [8]
    assert Schedule("sequential", 3).chunks(8) == [8]
    with pytest.raises(ValueError, match="chunk"):
        Schedule("streamed", 0)
    with pytest.raises(ValueError, match="mode"):
        Schedule("pipelined")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="judges"):
        Layout(judges=3, judges_reserved=2)
