"""The judge pool on real Ray actors: one seed gives the same rankings and win-rate matrices with 1
or 2 judges (reward and llm backends), a judge killed mid-call is restarted and its shard re-sent,
and every judge's metrics reach Ray's Prometheus endpoint (what the dashboard reads)."""

from __future__ import annotations

import json
import random
import re
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import ray

from apo_pipeline.config.sections import ClusterConfig, JudgeConfig
from apo_pipeline.engine.judge_pool import JudgePool
from apo_pipeline.engine.placement import Placement
from apo_pipeline.task.synthetic import SyntheticTask

pytestmark = pytest.mark.slow

K = 6
# 40 tokens of instructions (byte-level tokenizer) fill the first 32-token KV block: every request
# shares it, so the prefix cache must hit.
LLM_TEMPLATE = "Compare both responses to the prompt now.\n{prompt} A:{a} B:{b} ->"


def workload(num_prompts: int, seed: int = 0) -> tuple[list[str], list[list[str]]]:
    """Synthetic-task prompts with K short digit candidates each (some repeated: exact ties)."""
    rng = random.Random(seed)
    prompts = SyntheticTask(seed).prompts(num_prompts)
    cands = []
    for _ in prompts:
        pool = ["".join(rng.choice("0123456789") for _ in range(rng.randint(2, 6))) for _ in range(K - 2)]
        cands.append(pool + [pool[0], pool[1]])
    return prompts, cands


def outcome(pool: JudgePool, prompts: list[str], cands: list[list[str]], seed: int) -> tuple:
    """Everything a round takes from the judge: rankings (with every comparison), matrices, probs."""
    ranking = pool.rank(prompts, cands, seed)
    rates = pool.win_rates(prompts, cands)
    asked = [(p, c[0], c[1]) for p, c in zip(prompts, cands)] + [(p, c[1], c[0]) for p, c in zip(prompts, cands)]
    return ranking, rates, pool.compare_batch(asked)


def assert_same(one: tuple, two: tuple) -> None:
    (rank1, rates1, probs1), (rank2, rates2, probs2) = one, two
    assert rank1.prompts == rank2.prompts  # winners and every comparison's probabilities
    assert rank1.totals == rank2.totals and rank1.judge_calls == rank2.judge_calls
    assert probs1 == probs2
    for a, b in zip(rates1, rates2, strict=True):
        assert np.array_equal(a.raw, b.raw) and np.array_equal(a.win_prob, b.win_prob)
        assert (a.chosen, a.rejected) == (b.chosen, b.rejected)


def reward_pool(judges: int, **kwargs) -> JudgePool:
    cluster = ClusterConfig(judge_engines=judges)
    return JudgePool(JudgeConfig(mode="sample"), cluster, Placement(cluster), seed=11, **kwargs)


def test_reward_judges_one_or_two_give_the_same_results(ray_session: None) -> None:
    """`sample` mode draws a Bernoulli per comparison and repeated candidates tie: both random
    choices must depend on the prompt and the comparison, not on which judge got the prompt."""
    prompts, cands = workload(40)
    one = reward_pool(1)
    try:
        first = outcome(one, prompts, cands, seed=3)
    finally:
        one.shutdown()
    two = reward_pool(2)
    try:
        second = outcome(two, prompts, cands, seed=3)
        counts = two.take_counts()
    finally:
        two.shutdown()
    assert first[0].totals["ties"] > 0
    assert_same(first, second)
    per_judge = counts["judged_per_judge"]
    assert len(per_judge) == 2 and min(per_judge) > 0 and counts["comparisons_per_s"] > 0
    comparisons = 40 * (2 * (K - 1) + K * (K - 1) + 2)  # ranking both orders + matrices + compare_batch
    assert sum(per_judge) == comparisons


def test_a_judge_killed_mid_call_is_restarted_and_its_shard_resent(ray_session: None, killed_on_submit) -> None:
    prompts, cands = workload(2000, seed=1)
    pool = reward_pool(2, max_restarts=1)
    judge1, pid = pool.judges[1], pool.group.pids[1]
    try:
        reference = pool.rank(prompts, cands, 5)
        killed = killed_on_submit(judge1, "rank", pid)
        pool.group.workers[1] = killed
        again = pool.rank(prompts, cands, 5)
        assert killed.fired and pool.group.restarts == 1 and pool.group.pids[1] != pid
        assert again.prompts == reference.prompts and again.totals == reference.totals
        assert pool.group.actor_pids()["judge-1"] == pool.group.pids[1]
    finally:
        pool.group.workers[1] = judge1
        pool.shutdown()


def metric_lines(name: str) -> list[str]:
    node = ray._private.worker.global_worker.node
    url = f"http://{node.node_ip_address}:{node.metrics_export_port}/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return [line for line in text.splitlines() if line.startswith(name + "{")]


def test_every_judge_reports_its_ray_metrics(ray_session: None) -> None:
    pool = reward_pool(2)
    try:
        prompts, cands = workload(20, seed=2)
        pool.rank(prompts, cands, 0)
        assert min(pool.take_counts()["judged_per_judge"]) > 0
        seen: dict[str, set[str]] = {}
        deadline = time.monotonic() + 90  # Ray exports metrics every few seconds
        while time.monotonic() < deadline:
            for name in ("ray_apo_judge_worker_comparisons_total", "ray_apo_judge_worker_comparisons_per_s"):
                seen[name] = {m.group(1) for line in metric_lines(name) if (m := re.search(r'judge="([^"]+)"', line))}
            if all({"judge-0", "judge-1"} <= judges for judges in seen.values()):
                break
            time.sleep(2)
        assert all({"judge-0", "judge-1"} <= judges for judges in seen.values()), seen
    finally:
        pool.shutdown()


def vocab_size(model_dir: str) -> int:
    """Top log-probs over the whole vocabulary: an untrained judge's labels are always among them."""
    return json.loads((Path(model_dir) / "config.json").read_text())["vocab_size"]


@pytest.fixture(scope="module")
def llm_config() -> JudgeConfig:
    """The untrained tiny model as judge: arbitrary but fixed preferences, read through two labels
    that are single tokens of its tokenizer."""
    return JudgeConfig(backend="llm", template=LLM_TEMPLATE, labels=("A", "B"), max_model_len=128, chat=False)


def test_llm_judges_one_or_two_give_the_same_results(placement: Placement, tiny_model_dir: str, llm_config) -> None:
    """Two llm judges (each its own vLLM engine and placement group) against one: same rankings,
    matrices and probabilities; every judge reports prompt tokens and prefix-cache hits from vLLM."""
    prompts, cands = workload(12, seed=4)
    results, counts = [], []
    for judges in (1, 2):
        pool = JudgePool(llm_config, ClusterConfig(judge_engines=judges), placement, model_path=tiny_model_dir,
                         top_logprobs=vocab_size(tiny_model_dir), seed=11)
        try:
            results.append(outcome(pool, prompts, cands, seed=3))
            counts.append(pool.take_counts())
            per_judge = pool.group.call("metrics")
        finally:
            pool.shutdown()
    assert_same(*results)
    assert all(p.winner is not None for p in results[0][0].prompts)
    for c in counts:
        assert c["scored"] == sum(c["judged_per_judge"]) and c["tokens_per_s"] > 0
        assert 0 < c["prefix_cache_hits"] <= c["prefix_cache_queries"] == c["prompt_tokens"]
    assert all(m["prefix_cache_hits"] > 0 and m["judged"] > 0 for m in per_judge)
