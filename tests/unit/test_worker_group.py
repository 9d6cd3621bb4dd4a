"""The pure parts of the worker groups and the judge pool: sharding, gathering, merging, counts."""

from __future__ import annotations

import pytest

from apo_pipeline.config.sections import ClusterConfig, JudgeConfig
from apo_pipeline.engine.judge import count_delta
from apo_pipeline.engine.judge_pool import merge_rankings, prompt_cost
from apo_pipeline.engine.placement import Placement
from apo_pipeline.engine.vllm_env import llm_kwargs
from apo_pipeline.engine.worker_group import gather, group_spread, spread
from apo_pipeline.ranking import iterative_ranking


def test_spread_balances_cost() -> None:
    assert spread([5, 5, 5, 5], 2) == [[0, 2], [1, 3]]
    assert spread([10, 1, 1, 1], 2) == [[0], [1, 2, 3]]
    assert spread([3], 3) == [[0], [], []]
    assert spread([], 2) == [[], []]


def test_gather_restores_input_order() -> None:
    shards = spread([3, 1, 4, 1, 5, 9, 2], 3)
    parts = [[f"r{i}" for i in shard] for shard in shards]
    assert gather(shards, parts, 7) == [f"r{i}" for i in range(7)]
    with pytest.raises(ValueError, match="worker 1 returned 0 results for 2"):
        gather([[0], [1, 2]], [["a"], []], 3)
    with pytest.raises(ValueError, match="do not cover 3 items"):
        gather([[0], [0, 2]], [["a"], ["b", "c"]], 3)


def test_group_spread_keeps_a_prompt_on_one_worker() -> None:
    keys = ["p", "q", "p", "r", "q", "p"]
    shards = group_spread(keys, [1.0] * 6, 2)
    assert sorted(i for s in shards for i in s) == list(range(6))
    for shard in shards:
        assert shard == sorted(shard)
        for key in {keys[i] for i in shard}:
            assert {i for i, k in enumerate(keys) if k == key} <= set(shard)
    assert shards == [[0, 2, 5], [1, 3, 4]]  # p (cost 3) to worker 0, then q (2) and r (1) to worker 1
    assert group_spread(keys, [1.0] * 6, 1) == [list(range(6))]


def test_merge_rankings_equals_one_ranking() -> None:
    """Prompts ranked in shards and merged = ranked in one call (prompts, totals, rounds)."""
    prompts = [f"p{i}" for i in range(7)]
    cands = [[f"{i}-{j}" * (1 + (i + j) % 3) for j in range(2 + i % 3)] for i in range(7)]

    def judge(requests):  # longer text wins, ties where equal length
        return [0.5 if len(a) == len(b) else float(len(a) > len(b)) for _, a, b in requests]

    whole = iterative_ranking(prompts, cands, judge, seed=5)
    shards = [[0, 3, 4], [], [1, 2, 5, 6]]
    parts = [iterative_ranking([prompts[i] for i in s], [cands[i] for i in s], judge, seed=5) if s else None
             for s in shards]
    merged = merge_rankings(shards, parts, len(prompts))
    assert merged.prompts == whole.prompts
    assert merged.totals == whole.totals and merged.judge_calls == whole.judge_calls == 3
    assert merged.totals["ties"] > 0  # the coins were used


def test_count_delta_survives_a_restart() -> None:
    assert count_delta({"a": 5, "b": 2}, {"a": 3, "b": 2}) == {"a": 2, "b": 0}
    assert count_delta({"a": 1}, {"a": 3}) == {"a": 1}  # restarted: counts from 0 again
    assert count_delta({"a": 4}, {}) == {"a": 4}
    assert count_delta({"a": 4, "chat": True, "label_variant": "A", "masses": {"A": 0.5}}, {"a": 1}) == {"a": 3}


def test_prompt_cost_counts_the_comparisons() -> None:
    assert prompt_cost("pp", ["a", "bbb"], 2) == 2 * (2 + 2 * 2)
    assert prompt_cost("p", [], 0) == 0


def test_judge_placement_options() -> None:
    """Reward judges need no bundle (no placement groups exist); names by index."""
    reward = Placement(ClusterConfig(judge_engines=3), llm_judge=False)
    options = [reward.options("judge", i) for i in range(3)]
    assert [(o["name"], o["num_cpus"], "scheduling_strategy" in o) for o in options] == [
        (f"judge-{i}", 0, False) for i in range(3)
    ]


def test_judge_engine_settings() -> None:
    gpu = llm_kwargs("m", ClusterConfig(use_gpu=True), max_model_len=64, gpu_memory_utilization=0.85, log_stats=True)
    assert gpu["gpu_memory_utilization"] == 0.85 and gpu["disable_log_stats"] is False and gpu["enable_prefix_caching"]
    default = llm_kwargs("m", ClusterConfig(use_gpu=True, gpu_memory_utilization=0.5), max_model_len=64)
    assert default["gpu_memory_utilization"] == 0.5 and "disable_log_stats" not in default and "block_size" not in default
    assert llm_kwargs("m", ClusterConfig(), max_model_len=64, block_size=32)["block_size"] == 32
    assert JudgeConfig().gpu_memory_utilization is None
    with pytest.raises(ValueError):
        JudgeConfig(gpu_memory_utilization=1.5)
