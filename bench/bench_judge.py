"""Comparisons/s: our `JudgePool` (1 llm judge) against a plain vLLM engine scoring the same requests.

Setup: two Ray actors on one local Ray, alive at the same time, each holding one vLLM engine on
the benchmark model with the same engine arguments (ours: `judge-0` of a `JudgePool`, whose
`LLMJudgeBackend` keeps them in `engine_kwargs`; the plain actor builds `vllm.LLM` from exactly
those) and 1 CPU each. Both have vLLM's prefix cache (block 32 on CPU) and it is emptied on both
before every timed call, so neither side gains from the repeats.

Two workloads over P prompts x K candidates (synthetic-task prompts, random digit responses):
- `ranking` (OnMC-PO, iterative APO with DPO): ours is `pool.rank`, K-1 dependent rounds, both
  orders. The plain actor gets the same rendered requests (the judge's token ids) of each round
  and scores them with one `LLM.generate` per round, in the order the ranking asks them.
- `matrix` (SPPO): ours is `pool.win_rates`, K(K-1) ordered pairs per prompt in one call; the
  plain actor scores the same rendered requests in one `LLM.generate`.
Every request decodes one token with the top log-probs over the whole vocabulary (the untrained
benchmark model puts its labels anywhere); both sides turn them into P(a beats b) with `verdict`.
Ours and plain give the same probabilities (checked once before timing).

A third actor, `default_block`, is the plain one with vLLM's own KV block size on CPU (128
tokens) instead of the judge's 32: shorter requests than 128 tokens then share no cached block,
which is what the judge's block size buys (`ratio_vs_default_block`), measured in the same rounds.

Key `judge_vs_vllm` = ours / plain comparisons/s on the `ranking` workload (goal >= 0.9); the
`matrix` workload's ratio, prefix-cache hit rates (vLLM's counters) and prompt tokens are kept
beside it.
"""

from __future__ import annotations

import random
import tempfile
from typing import Any

import ray
from transformers import AutoTokenizer

from apo_pipeline.config.sections import ClusterConfig, JudgeConfig
from apo_pipeline.engine.judge_pool import JudgePool
from apo_pipeline.engine.llm_judge import verdict
from apo_pipeline.engine.placement import Placement
from apo_pipeline.engine.vllm_env import apply_engine_env
from apo_pipeline.ranking import RankingResult
from apo_pipeline.task.synthetic import SyntheticTask
from common import MAX_MODEL_LEN, SEED, build_model, interleave, model_info, ratio, start_ray, summary, write_result

NUM_PROMPTS, K = 12, 4
REPEATS = 7
JUDGE = JudgeConfig(backend="llm", max_model_len=MAX_MODEL_LEN, chat=False)  # the plain template, as measured


@ray.remote(num_cpus=1)
class PlainVLLM:
    """What a user of vLLM alone writes: an `LLM` and one `generate` call per batch of requests."""

    def __init__(self, engine_kwargs: dict[str, Any], label_ids: tuple[int, int], top_logprobs: int) -> None:
        apply_engine_env()
        from vllm import LLM

        self.llm = LLM(**engine_kwargs)
        self.label_ids, self.top_logprobs = label_ids, top_logprobs

    def score(self, batches: list[list[list[int]]]) -> list[list[float | None]]:
        """P(first label) per request, one `generate` per batch (token ids), in order."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(temperature=0.0, max_tokens=1, logprobs=self.top_logprobs)
        out = []
        for batch in batches:
            outputs = self.llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in batch], params, use_tqdm=False)
            out.append([verdict({t: lp.logprob for t, lp in o.outputs[0].logprobs[0].items()}, self.label_ids)
                        for o in outputs])
        return out

    def reset_prefix_cache(self) -> None:
        self.llm.reset_prefix_cache()

    def prefix_cache(self) -> dict[str, int]:
        return {m.name: int(m.value) for m in self.llm.get_metrics() if m.name.startswith("vllm:prefix_cache_")}


def workload() -> tuple[list[str], list[list[str]]]:
    """P synthetic-task prompts, K random digit responses each."""
    prompts = SyntheticTask(SEED).prompts(NUM_PROMPTS)
    rng = random.Random(SEED)
    cands = [["".join(rng.choice("0123456789") for _ in range(rng.randint(3, 8))) for _ in range(K)] for _ in prompts]
    return prompts, cands


def ranking_rounds(prompts: list[str], cands: list[list[str]], result: RankingResult) -> list[list[tuple]]:
    """The (prompt, a, b) requests of every ranking round, in the order the ranking asks them."""
    rounds: list[list[tuple]] = [[] for _ in range(K - 1)]
    for p, c, ranking in zip(prompts, cands, result.prompts):
        for comp in ranking.comparisons:
            a, b = c[comp.a], c[comp.b]
            rounds[comp.round - 1] += [(p, a, b), (p, b, a)]
    return rounds


def matrix_requests(prompts: list[str], cands: list[list[str]]) -> list[tuple]:
    return [(p, c[i], c[j]) for p, c in zip(prompts, cands) for i in range(K) for j in range(K) if i != j]


def on_judge(pool: JudgePool, fn, *args):
    """Run `fn(judge actor, *args)` inside `judge-0`."""
    return ray.get(pool.judges[0].__ray_call__.remote(fn, *args))


def check_same(pool: JudgePool, plain, prompts: list[str], cands: list[list[str]], rounds: list) -> None:
    """Ours and `plain` must score the same probabilities, or the comparison would be unfair."""
    ranked = pool.rank(prompts, cands, SEED)
    ours = [p for c in ranked.prompts for comp in c.comparisons for p in (comp.p_ab, comp.p_ba)]
    answers, offset, theirs = ray.get(plain.score.remote(rounds)), [0] * len(rounds), []
    for c in ranked.prompts:  # plain answers in the order the ranking asked them
        for comp in c.comparisons:
            r = comp.round - 1
            theirs += answers[r][offset[r] : offset[r] + 2]
            offset[r] += 2
    if len(ours) != len(theirs) or max(abs(a - b) for a, b in zip(ours, theirs)) > 1e-5:
        raise RuntimeError("ours and plain vLLM scored different probabilities: the comparison would be unfair")


def measure(pool: JudgePool, plains: dict[str, Any], ours_call, batches: list[list[list[int]]]) -> dict[str, Any]:
    """Interleaved timing of ours against each plain actor scoring `batches`, every prefix cache
    emptied before every call; comparisons/s, prefix-cache hit rates (vLLM's counters)."""

    def fresh(call):
        def run():
            ray.get([plain.reset_prefix_cache.remote() for plain in plains.values()])
            on_judge(pool, lambda judge: judge.backend.llm.reset_prefix_cache())
            return call()

        return run

    def score(plain):
        return lambda: ray.get(plain.score.remote(batches))

    pool.take_counts()
    before = {name: ray.get(plain.prefix_cache.remote()) for name, plain in plains.items()}
    cases = {"ours": fresh(ours_call), **{name: fresh(score(plain)) for name, plain in plains.items()}}
    seconds = {name: summary(s) for name, s in interleave(cases, repeats=REPEATS).items()}
    counts = pool.take_counts()
    comparisons = sum(map(len, batches))
    out: dict[str, Any] = {
        "ratio": ratio(seconds["plain_vllm"]["median_s"], seconds["ours"]["median_s"]),  # inverse time ratio
        "ratio_vs_default_block": ratio(seconds["default_block"]["median_s"], seconds["ours"]["median_s"]),
        "comparisons_per_call": comparisons,
        "ours_prompt_tokens_per_call": counts["prompt_tokens"] / (REPEATS + 1),
        "prefix_cache_hit_rate": {"ours": counts["prefix_cache_hits"] / max(counts["prefix_cache_queries"], 1)},
    }
    for name, plain in plains.items():
        after = ray.get(plain.prefix_cache.remote())
        hits, queries = (after[k] - before[name][k] for k in ("vllm:prefix_cache_hits", "vllm:prefix_cache_queries"))
        out["prefix_cache_hit_rate"][name] = hits / max(queries, 1)
    for name, times in seconds.items():
        out[name] = times
        out[f"{name}_comparisons_per_s"] = comparisons / times["median_s"]
    return out


def main() -> None:
    start_ray()
    cluster = ClusterConfig(judge_engines=1)
    prompts, cands = workload()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model(tmp)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        vocab = len(tokenizer)
        placement = Placement(cluster, llm_judge=True, prefix="bench-judge").create()
        pool = JudgePool(JUDGE, cluster, placement, model_path=model_dir, top_logprobs=vocab, seed=SEED)
        kwargs = on_judge(pool, lambda judge: judge.backend.engine_kwargs)
        labels = on_judge(pool, lambda judge: judge.backend.label_ids)  # the spelling the judge chose at start-up
        default_kwargs = {k: v for k, v in kwargs.items() if k != "block_size"}
        plains = {"plain_vllm": PlainVLLM.remote(kwargs, labels, vocab),
                  "default_block": PlainVLLM.remote(default_kwargs, labels, vocab)}

        def encode(items: list[tuple]) -> list[list[int]]:
            return on_judge(pool, lambda judge, xs: [judge.backend.encode(x) for x in xs], items)

        rounds = [encode(r) for r in ranking_rounds(prompts, cands, pool.rank(prompts, cands, SEED))]
        for plain in plains.values():
            check_same(pool, plain, prompts, cands, rounds)
        results = {
            "ranking": measure(pool, plains, lambda: pool.rank(prompts, cands, SEED), rounds),
            "matrix": measure(pool, plains, lambda: pool.win_rates(prompts, cands), [encode(matrix_requests(prompts, cands))]),
        }
        result = {
            "ratio": results["ranking"]["ratio"],
            "goal": ">= 0.9",
            "ours_comparisons_per_s": results["ranking"]["ours_comparisons_per_s"],
            "plain_vllm_comparisons_per_s": results["ranking"]["plain_vllm_comparisons_per_s"],
            "ratio_vs_default_block": results["ranking"]["ratio_vs_default_block"],
            "workloads": results,
            "workload": {"prompts": NUM_PROMPTS, "k": K, "both_orders": JUDGE.both_orders, "top_logprobs": vocab,
                         "block_size": kwargs.get("block_size"), "judges": cluster.judge_engines},
            "model": model_info(model_dir),
        }
        write_result("judge_vs_vllm", result)
        print(f"judge_vs_vllm = {result['ratio']:.3f} ({result['ours_comparisons_per_s']:.1f} vs "
              f"{result['plain_vllm_comparisons_per_s']:.1f} comparisons/s; matrix {results['matrix']['ratio']:.3f}; "
              f"vs vLLM's default block {result['ratio_vs_default_block']:.3f})")
        for plain in plains.values():
            ray.kill(plain)
        pool.shutdown()
        placement.remove()
    ray.shutdown()


if __name__ == "__main__":
    main()
