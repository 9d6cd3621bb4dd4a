"""Generated tokens/s: our `GenerationPool` (1 engine) against plain `vllm.LLM.generate`.

Setup: two Ray actors on one local Ray, alive at the same time, each holding one vLLM engine on
the benchmark model with the same engine arguments (`llm_kwargs`: fp32, eager, same KV cache,
same seed; `apply_engine_env` in both) and 1 CPU each. Ours is `gen-0` of a `GenerationPool`,
driven through `pool.sample`, which tokenizes on the engine, spreads, samples and builds
`Rollout`s. The plain actor passes the prompt texts with the same per-candidate `SamplingParams`
(K = 2 per temperature x 3 temperatures, max_tokens, top_p, logprobs=0 and the per-request seeds
of `request_seed`) to one `LLM.generate` call and returns the token count. The two produce the
same tokens (checked once before timing). The driver alternates the two calls and times each.

Key `generation_vs_vllm` = ours / plain tokens/s (goal >= 0.95).
"""

from __future__ import annotations

import tempfile

import ray

from apo_pipeline.config.sections import ClusterConfig, GenerationConfig, ModelConfig
from apo_pipeline.engine.generation import request_seed
from apo_pipeline.engine.placement import Placement
from apo_pipeline.engine.pool import GenerationPool
from apo_pipeline.engine.vllm_env import apply_engine_env, llm_kwargs
from apo_pipeline.task.synthetic import SyntheticTask
from common import MAX_MODEL_LEN, SEED, build_model, interleave, model_info, ratio, start_ray, summary, write_result

NUM_PROMPTS = 12
GEN = GenerationConfig(temperatures=[0.6, 0.8, 1.0], n_per_temperature=2, max_tokens=32)
REPEATS = 5
SAMPLE_SEED = 11


@ray.remote(num_cpus=1)
class PlainVLLM:
    """What a user of vLLM alone writes: an `LLM`, a list of SamplingParams, one `generate` call."""

    def __init__(self, model_dir: str, cluster: ClusterConfig) -> None:
        apply_engine_env()
        from vllm import LLM

        self.llm = LLM(**llm_kwargs(model_dir, cluster, max_model_len=MAX_MODEL_LEN, seed=SEED))

    def sample(self, prompts: list[str], gen: GenerationConfig, seed: int) -> list[list[int]]:
        """Token ids of every candidate, prompt-major, grouped by temperature (as the pool orders them)."""
        from vllm import SamplingParams

        params = [
            SamplingParams(
                temperature=t, top_p=gen.top_p, max_tokens=gen.max_tokens, seed=request_seed(seed, p, ti, s), logprobs=0
            )
            for p in range(len(prompts))
            for ti, t in enumerate(gen.temperatures)
            for s in range(gen.n_per_temperature)
        ]
        requests = [prompt for prompt in prompts for _ in range(gen.num_candidates)]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        return [list(out.outputs[0].token_ids) for out in outputs]


def main() -> None:
    start_ray()
    cluster = ClusterConfig(num_engines=1)
    prompts = SyntheticTask(SEED).prompts(NUM_PROMPTS)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model(tmp)
        plain = PlainVLLM.remote(model_dir, cluster)  # starts while the pool's engine starts
        placement = Placement(cluster, prefix="bench-gen").create()
        pool = GenerationPool(
            model_dir, ModelConfig(path=model_dir, max_model_len=MAX_MODEL_LEN), cluster, placement, seed=SEED
        )

        ours_ids = [c.token_ids for r in pool.sample(prompts, GEN, SAMPLE_SEED) for c in r.candidates]
        plain_ids = ray.get(plain.sample.remote(prompts, GEN, SAMPLE_SEED))
        if ours_ids != plain_ids:
            raise RuntimeError("ours and plain vLLM sampled different tokens: the comparison would be unfair")
        tokens = sum(map(len, ours_ids))

        seconds = interleave(
            {
                "ours": lambda: pool.sample(prompts, GEN, SAMPLE_SEED),
                "plain_vllm": lambda: ray.get(plain.sample.remote(prompts, GEN, SAMPLE_SEED)),
            },
            repeats=REPEATS,
        )
        ours, base = summary(seconds["ours"]), summary(seconds["plain_vllm"])
        result = {
            "ratio": ratio(base["median_s"], ours["median_s"]),  # same tokens: tokens/s ratio = inverse time ratio
            "goal": ">= 0.95",
            "ours_tokens_per_s": tokens / ours["median_s"],
            "plain_vllm_tokens_per_s": tokens / base["median_s"],
            "tokens_per_call": tokens,
            "ours": ours,
            "plain_vllm": base,
            "workload": {"prompts": NUM_PROMPTS, "k": GEN.num_candidates, "temperatures": GEN.temperatures,
                         "max_tokens": GEN.max_tokens},
            "model": model_info(model_dir),
        }
        write_result("generation_vs_vllm", result)
        print(f"generation_vs_vllm = {result['ratio']:.3f} ({result['ours_tokens_per_s']:.1f} vs "
              f"{result['plain_vllm_tokens_per_s']:.1f} tokens/s)")
        ray.kill(plain)
        for engine in pool.engines:
            ray.kill(engine)
        placement.remove()
    ray.shutdown()


if __name__ == "__main__":
    main()
