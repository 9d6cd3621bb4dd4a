"""The `llm` judge backend: an instruct model on its own vLLM engine read through label log-probs.

Each comparison (prompt, a, b) is rendered with `JudgeConfig.template` ({prompt}, {a}, {b}; as
the user turn of the judge tokenizer's chat template when `judge.chat`, which defaults to "when the
tokenizer has one", independent of the policy's `data.chat`), and the engine returns the top
`top_logprobs` next-token log-probs. The label tokens are the spelling of `judge.labels` (with or
without a leading space) that the judge actually predicts: probed at start-up on a few rendered
comparisons (engine/judge_labels.py), logged, and reported by `metrics()`. With l_a, l_b the
log-probs of the two label tokens,
P(a beats b) = exp(l_a) / (exp(l_a) + exp(l_b)). A label missing from the top-k is given the
smallest top-k log-prob (an upper bound of its own); a reply with neither label in the top-k,
or a failed engine call, is asked again up to `max_retries` times and then returned as None
(scoring is greedy, so a top-k miss usually repeats; a retry mostly helps when the call failed).
A comparison whose rendered prompt does not fit `max_model_len` is None at once.

One `compare_batch` is one vLLM `generate` call (plus one per retry round that has work), its
requests sorted by token ids so that requests sharing a prefix (template, prompt, incumbent) are
adjacent for vLLM's prefix cache; both orders are the ranking's business
(`apo_pipeline.ranking`), not this backend's.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from apo_pipeline.config.sections import ClusterConfig, JudgeConfig
from apo_pipeline.engine.generation import encode_prompt
from apo_pipeline.engine.judge_labels import choose_variant, label_variants, probe_items
from apo_pipeline.engine.vllm_env import build_llm, llm_kwargs
from apo_pipeline.judge_backend import Comparison

log = logging.getLogger(__name__)
# vLLM's prefix cache reuses whole KV blocks. Its CPU default (128 tokens) shares nothing between
# judge requests shorter than that; 32 (the CPU backend wants multiples of 32) lets requests share
# the template and the prompt. GPU keeps vLLM's default (16).
CPU_BLOCK_SIZE = 32
VLLM_COUNTERS = {
    "vllm:prompt_tokens": "prompt_tokens",
    "vllm:prefix_cache_queries": "prefix_cache_queries",
    "vllm:prefix_cache_hits": "prefix_cache_hits",
}


def verdict(top: dict[int, float], label_ids: tuple[int, int]) -> float | None:
    """P(first label) from one step's top-k log-probs {token id: log-prob}; None if neither label is there."""
    found = [top.get(i) for i in label_ids]
    if found[0] is None and found[1] is None:
        return None
    floor = min(top.values())
    la, lb = (floor if v is None else v for v in found)
    return 1.0 / (1.0 + math.exp(lb - la))


class LLMJudgeBackend:
    """A `judge_backend.JudgeBackend` over a vLLM engine built in this process (the judge actor's)."""

    def __init__(
        self,
        model_path: str,
        judge: JudgeConfig,
        cluster: ClusterConfig,
        *,
        top_logprobs: int = 20,
        chat: bool | None = None,
        seed: int = 0,
    ) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.variants = label_variants(self.tokenizer, judge.labels)
        self.template = judge.template
        chat = judge.chat if chat is None else chat
        self.chat = bool(self.tokenizer.chat_template) if chat is None else chat
        self.max_retries = judge.max_retries
        self.max_model_len = judge.max_model_len
        self.top_logprobs = top_logprobs
        self.engine_kwargs = llm_kwargs(
            model_path,
            cluster,
            tp=cluster.judge_tp,
            max_model_len=judge.max_model_len,
            seed=seed,
            logprobs_mode="raw_logprobs",
            max_logprobs=top_logprobs,
            gpu_memory_utilization=judge.gpu_memory_utilization,
            block_size=None if cluster.use_gpu else CPU_BLOCK_SIZE,
            log_stats=True,  # prefix-cache hits and prompt tokens, read by `metrics`
        )
        self.llm = build_llm(self.engine_kwargs)
        self.counts = {"asked": 0, "scored": 0, "retried": 0, "failed": 0, "overlong": 0, "errors": 0, "calls": 0}
        self.label_ids, self.setup = self._probe_labels()

    def _probe_labels(self) -> tuple[tuple[int, int], dict[str, Any]]:
        """Pick the label spelling whose tokens carry the most probability on the probe comparisons."""
        encoded = [ids for ids in map(self.encode, probe_items()) if len(ids) < self.max_model_len]
        tops = self._top_logprobs(encoded) if encoded else []
        variant, masses = choose_variant(self.variants, tops)
        setup = {"chat": self.chat, "label_variant": variant.name, "label_mass": masses[variant.name],
                 "label_masses": masses, "probes": len(tops)}
        log.info("judge labels %s (probability mass on %d probes: %s), chat template %s",
                 variant.name, len(tops), ", ".join(f"{k} {v:.3f}" for k, v in masses.items()), "on" if self.chat else "off")
        if masses[variant.name] < 0.1:
            log.warning("the judge's labels carry only %.3f of the probability on the probes: most comparisons will "
                        "fail (check judge.template / judge.labels / judge.chat)", masses[variant.name])
        return variant.ids, setup

    def encode(self, item: Comparison) -> list[int]:
        """Token ids of one rendered comparison."""
        prompt, a, b = item
        text = self.template.format(prompt=prompt, a=a, b=b)
        return encode_prompt(self.tokenizer, [{"role": "user", "content": text}] if self.chat else text)[1]

    def compare_batch(self, items: list[Comparison]) -> list[float | None]:
        """P(a beats b) for each (prompt, a, b), or None where it could not be scored."""
        self.counts["asked"] += len(items)
        encoded = [self.encode(item) for item in items]
        results: list[float | None] = [None] * len(items)
        todo = [i for i, ids in enumerate(encoded) if len(ids) < self.max_model_len]
        todo.sort(key=lambda i: encoded[i])  # shared prefixes (template, prompt, incumbent) adjacent
        self.counts["overlong"] += len(items) - len(todo)
        for attempt in range(self.max_retries + 1):
            if not todo:
                break
            if attempt:
                self.counts["retried"] += len(todo)
            scores = self._score([encoded[i] for i in todo])
            for i, p in zip(todo, scores):
                results[i] = p
            todo = [i for i in todo if results[i] is None]
        self.counts["scored"] += sum(p is not None for p in results)
        self.counts["failed"] += sum(p is None for p in results)
        return results

    def _score(self, prompts: list[list[int]]) -> list[float | None]:
        """One generate call: a verdict per prompt (all None if the engine failed: a vLLM error or a
        RuntimeError from the model's forward; any other exception is a bug and propagates)."""
        from vllm.exceptions import VLLMError

        self.counts["calls"] += 1
        try:
            tops = self._top_logprobs(prompts)
        except (VLLMError, RuntimeError) as err:  # an engine failure is a failed round of comparisons, retried
            self.counts["errors"] += 1
            log.warning("judge generate call failed for %d comparisons: %s", len(prompts), err)
            return [None] * len(prompts)
        return [verdict(top, self.label_ids) for top in tops]

    def _top_logprobs(self, prompts: list[list[int]]) -> list[dict[int, float]]:
        """One greedy one-token generate call: the top-k {token id: log-prob} at the verdict position."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(temperature=0.0, max_tokens=1, logprobs=self.top_logprobs)
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        return [{tok: lp.logprob for tok, lp in out.outputs[0].logprobs[0].items()} for out in outputs]

    def metrics(self) -> dict[str, Any]:
        """Counts (asked, scored, retried, failed = returned None, overlong, errors, calls), the
        start-up choices (chat, label_variant, label_mass, label_masses, probes), and vLLM's own
        counters since start (`LLM.get_metrics`): prompt_tokens, prefix_cache_queries and
        prefix_cache_hits (tokens looked up in / found in the prefix cache)."""
        engine = dict.fromkeys(VLLM_COUNTERS.values(), 0)
        for metric in self.llm.get_metrics():
            if metric.name in VLLM_COUNTERS:
                engine[VLLM_COUNTERS[metric.name]] += int(metric.value)
        return {**self.counts, **self.setup, **engine}
