"""The generation pool on 2 real in-process vLLM engines (Ray actors) with the tiny model."""

from __future__ import annotations

import math
import os
import signal

import pytest
import ray
from transformers import AutoModelForCausalLM, AutoTokenizer

from apo_pipeline.config.sections import GenerationConfig

PROMPTS = [
    "reverse 3 1 4 =",
    "reverse 2 7 1 8 =",
    [{"role": "user", "content": "reverse 5 5 ="}],
    "reverse 9 0 =",
    "reverse 1 2 3 4 5 =",
]
GEN = GenerationConfig(temperatures=[0.6, 0.8, 1.0], n_per_temperature=2, max_tokens=8)


@pytest.fixture(scope="module")
def rollouts(gen_pool):
    return gen_pool.sample(PROMPTS, GEN, seed=7)


@pytest.mark.slow
def test_sample_shapes_order_and_spread(gen_pool, rollouts) -> None:
    assert [r.prompt_index for r in rollouts] == list(range(len(PROMPTS)))
    for r in rollouts:
        assert [c.temperature for c in r.candidates] == [0.6, 0.6, 0.8, 0.8, 1.0, 1.0]
        for c in r.candidates:
            assert 1 <= len(c.token_ids) <= GEN.max_tokens
            assert c.finish_reason in ("length", "stop")
            assert math.isfinite(c.logprob) and c.logprob < 0
    assert rollouts[0].prompt == PROMPTS[0]
    assert rollouts[2].prompt.startswith("<|im_start|>user\nreverse 5 5 =")
    last = gen_pool.metrics()["last"]
    assert all(n > 0 for n in last["prompts_per_engine"]) and sum(last["prompts_per_engine"]) == len(PROMPTS)
    assert last["candidates"] == len(PROMPTS) * GEN.num_candidates
    assert last["tokens"] == sum(len(c.token_ids) for r in rollouts for c in r.candidates)
    assert last["tokens_per_s"] > 0


@pytest.mark.slow
def test_sampling_logprob_is_the_tempered_sum(rollouts, tiny_model_dir, hf_reference, one_torch_thread) -> None:
    """Candidate.logprob = sum_t log_softmax(logits_t / T)[y_t] (processed log-probs)."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    for r in rollouts:
        for c in r.candidates:
            want = hf_reference.logprob(model, r.prompt_ids, c.token_ids, c.temperature)
            assert c.logprob == pytest.approx(want, abs=1e-3 * len(c.token_ids))


@pytest.mark.slow
def test_seeds_reproduce_and_do_not_depend_on_spread(gen_pool, rollouts) -> None:
    def ids(rs):
        return [[c.token_ids for c in r.candidates] for r in rs]

    assert ids(gen_pool.sample(PROMPTS, GEN, seed=7)) == ids(rollouts)
    assert ids(gen_pool.sample(PROMPTS, GEN, seed=8)) != ids(rollouts)
    encoded = ray.get(gen_pool.engines[0].encode.remote(PROMPTS))
    one_engine = ray.get(
        gen_pool.engines[1].sample.remote(encoded, GEN.n_per_temperature, GEN.temperatures, GEN.max_tokens, 7)
    )
    assert ids(one_engine) == ids(rollouts)


@pytest.mark.slow
def test_greedy_matches_transformers(gen_pool, tiny_model_dir, hf_reference, one_torch_thread) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    eos = AutoTokenizer.from_pretrained(tiny_model_dir).eos_token_id
    greedy = gen_pool.generate_greedy(PROMPTS, max_tokens=8)
    assert [r.prompt_index for r in greedy] == list(range(len(PROMPTS)))
    for r in greedy:
        (c,) = r.candidates
        assert c.temperature == 0.0
        assert c.token_ids == hf_reference.greedy(model, r.prompt_ids, 8, eos)
        assert c.logprob == pytest.approx(hf_reference.logprob(model, r.prompt_ids, c.token_ids, 1.0), abs=1e-3)


@pytest.mark.slow
def test_overlong_prompts_skip_or_truncate(gen_pool) -> None:
    prompts = ["reverse 1 =", "reverse 1 2 3 4 5 6 7 8 9 0 1 2 3 4 =", "reverse 2 ="]
    gen = GenerationConfig(temperatures=[1.0], n_per_temperature=1, max_tokens=4)
    gen_pool.max_prompt_tokens = 12
    try:
        gen_pool.overlong = "skip"
        kept = gen_pool.sample(prompts, gen, seed=0)
        assert [r.prompt_index for r in kept] == [0, 2]
        assert gen_pool.metrics()["last"]["overlong"] == [1] and gen_pool.metrics()["last"]["skipped"] == 1
        gen_pool.overlong = "truncate"
        cut = gen_pool.sample(prompts, gen, seed=0)
        assert [r.prompt_index for r in cut] == [0, 1, 2]
        assert len(cut[1].prompt_ids) == 12 and gen_pool.metrics()["last"]["truncated"] == 1
        assert gen_pool.metrics()["totals"]["skipped"] >= 1
    finally:
        gen_pool.max_prompt_tokens = None
        gen_pool.overlong = "skip"


@pytest.mark.slow
def test_sleep_is_a_no_op_on_cpu(gen_pool) -> None:
    assert gen_pool.sleep() is False
    assert gen_pool.wake_up() is False
    assert len(gen_pool.generate_greedy(["reverse 1 ="], max_tokens=2)) == 1


def _ids(rollouts) -> list:
    return [(r.prompt_index, [c.token_ids for c in r.candidates]) for r in rollouts]


@pytest.mark.slow
def test_dead_engines_restart_and_their_prompts_are_resent(gen_pool, rollouts, killed_on_submit) -> None:
    """SIGKILL an engine between two calls, then another one during a call: Ray restarts each, the
    pool re-syncs (its hook) and re-sends their shards, and every prompt comes back once, exactly
    as without the failure."""
    hooks: list[float] = []
    gen_pool.restart_hook = lambda: hooks.append(gen_pool.totals["engine_restarts"])
    before = gen_pool.totals["engine_restarts"]
    engine0 = gen_pool.engines[0]
    try:
        first = gen_pool.group.pids[1]
        os.kill(first, signal.SIGKILL)
        assert _ids(gen_pool.sample(PROMPTS, GEN, seed=7)) == _ids(rollouts)
        assert gen_pool.group.pids[1] != first

        killed = killed_on_submit(engine0, "sample", gen_pool.group.pids[0])
        gen_pool.engines[0] = killed
        again = gen_pool.sample(PROMPTS, GEN, seed=7)
        assert killed.fired and _ids(again) == _ids(rollouts)
        assert gen_pool.group.pids[0] != killed.pid
        assert gen_pool.totals["engine_restarts"] == before + 2 and hooks == [before + 1, before + 2]
    finally:
        gen_pool.engines[0] = engine0
        gen_pool.restart_hook = None
