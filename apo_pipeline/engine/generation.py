"""`GenerationEngine`: one vLLM engine in one Ray actor (`gen-<i>`).

Sampling log-probs: `Candidate.logprob` is the sum over the candidate's tokens (EOS included when
it ended the candidate) of the log-prob vLLM reports for each sampled token. With the default
`logprobs_mode="processed_logprobs"` that is log q_T(y | x), the log-prob under the distribution
actually sampled from (logits / T, then top-p), i.e. log_softmax(logits / T) at T; with
`"raw_logprobs"` it is the model's own log pi(y | x) (T = 1, no top-p). The two agree at T = 1 with
top_p = 1, and greedy candidates always carry the raw log-prob.

Seeds: every candidate is its own request with seed `request_seed(seed, prompt index,
temperature index, sample index)`, so a run is reproducible however prompts are spread over
engines (the prompt index is the caller's, carried by `EncodedPrompt.index`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import ray

from apo_pipeline.config.sections import ClusterConfig, ModelConfig
from apo_pipeline.engine.buckets import CPU_WEIGHT_TRANSFER_BACKEND
from apo_pipeline.engine.vllm_env import (
    LogprobsMode,
    apply_engine_env,
    build_llm,
    llm_kwargs,
)
from apo_pipeline.rollout import Candidate, Rollout
from apo_pipeline.seeds import derive_seed
from apo_pipeline.task.synthetic import prompt_text

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase
    from vllm import RequestOutput

Message = dict[str, str]
Prompt = str | list[Message]


@dataclass
class EncodedPrompt:
    """A prompt ready for the engine: `index` in the caller's list, rendered `text`, `token_ids`,
    and the `instruction` as written (a conversation's last user message)."""

    index: int
    text: str
    token_ids: list[int]
    instruction: str = ""


def request_seed(seed: int, prompt_index: int, temperature_index: int, sample_index: int) -> int:
    """The seed of one candidate request; depends only on its four arguments (`apo_pipeline.seeds`)."""
    return derive_seed(seed, "request", prompt_index, temperature_index, sample_index)


def encode_prompt(tokenizer: "PreTrainedTokenizerBase", prompt: Prompt) -> tuple[str, list[int]]:
    """Text and token ids of a prompt; a conversation gets the chat template + generation prompt."""
    if isinstance(prompt, str):
        return prompt, list(tokenizer(prompt)["input_ids"])
    text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    return text, list(tokenizer(text, add_special_tokens=False)["input_ids"])


def summed_logprob(output_token_ids: list[int], step_logprobs: list[dict[int, Any]]) -> float:
    """Sum of the reported log-probs of the chosen tokens (nats)."""
    return float(sum(step[token].logprob for token, step in zip(output_token_ids, step_logprobs)))


@ray.remote
class GenerationEngine:
    """vLLM `LLM` in this actor's process; samples, generates greedily, receives weights, sleeps."""

    def __init__(
        self,
        model_path: str,
        model: ModelConfig,
        cluster: ClusterConfig,
        *,
        weight_transfer_backend: str | None = None,
        logprobs_mode: LogprobsMode = "processed_logprobs",
        seed: int = 0,
    ) -> None:
        apply_engine_env()
        self.sleep_mode = cluster.use_gpu and cluster.colocate
        kwargs = llm_kwargs(
            model_path,
            cluster,
            tp=cluster.engine_tp,
            dtype=model.dtype,
            max_model_len=model.max_model_len,
            seed=seed,
            logprobs_mode=logprobs_mode,
            weight_transfer_backend=weight_transfer_backend,
            sleep_mode=self.sleep_mode,
            trust_remote_code=model.trust_remote_code,
        )
        self.llm = build_llm(kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        if weight_transfer_backend == CPU_WEIGHT_TRANSFER_BACKEND:  # nccl is initialised by the learner
            self.init_weight_transfer_engine({})

    def encode(self, prompts: list[Prompt], start_index: int = 0) -> list[EncodedPrompt]:
        """Render (chat template for conversations) and tokenize; indices start at `start_index`."""
        return [self._encode(p, start_index + i) for i, p in enumerate(prompts)]

    def _encode(self, prompt: Prompt, index: int) -> EncodedPrompt:
        return EncodedPrompt(index, *encode_prompt(self.tokenizer, prompt), instruction=prompt_text(prompt))

    def _as_encoded(self, prompts: list[Prompt | EncodedPrompt]) -> list[EncodedPrompt]:
        return [p if isinstance(p, EncodedPrompt) else self._encode(p, i) for i, p in enumerate(prompts)]

    def sample(
        self,
        prompts: list[Prompt | EncodedPrompt],
        n_per_temperature: int,
        temperatures: list[float],
        max_tokens: int,
        seed: int,
        top_p: float = 1.0,
    ) -> list[Rollout]:
        """K = n_per_temperature * len(temperatures) candidates per prompt, grouped by temperature.

        Plain prompts are numbered 0.. in the order given; pass `EncodedPrompt`s to keep the
        caller's numbering (and hence the seeds).
        """
        from vllm import SamplingParams

        encoded = self._as_encoded(prompts)
        params = [
            SamplingParams(
                temperature=t,
                top_p=top_p,
                max_tokens=max_tokens,
                seed=request_seed(seed, p.index, ti, s),
                logprobs=0,
            )
            for p in encoded
            for ti, t in enumerate(temperatures)
            for s in range(n_per_temperature)
        ]
        k = n_per_temperature * len(temperatures)
        temps = [t for t in temperatures for _ in range(n_per_temperature)]
        outputs = self._generate([p for p in encoded for _ in range(k)], params)
        return [self._rollout(p, outputs[i * k : (i + 1) * k], temps) for i, p in enumerate(encoded)]

    def generate_greedy(self, prompts: list[Prompt | EncodedPrompt], max_tokens: int) -> list[Rollout]:
        """One greedy candidate (temperature 0, raw log-prob) per prompt."""
        from vllm import SamplingParams

        encoded = self._as_encoded(prompts)
        params = SamplingParams(temperature=0.0, max_tokens=max_tokens, logprobs=0)
        outputs = self._generate(encoded, [params] * len(encoded))
        return [self._rollout(p, [out], [0.0]) for p, out in zip(encoded, outputs)]

    def _generate(self, encoded: list[EncodedPrompt], params: list) -> list["RequestOutput"]:
        from vllm.inputs import TokensPrompt

        requests = [TokensPrompt(prompt_token_ids=p.token_ids) for p in encoded]
        return self.llm.generate(requests, params, use_tqdm=False)

    @staticmethod
    def _rollout(prompt: EncodedPrompt, outputs: list["RequestOutput"], temperatures: list[float]) -> Rollout:
        candidates = []
        for out, t in zip(outputs, temperatures):
            c = out.outputs[0]
            ids = list(c.token_ids)
            candidates.append(Candidate(ids, c.text, str(c.finish_reason), summed_logprob(ids, c.logprobs), t))
        return Rollout(prompt.text, prompt.token_ids, candidates, prompt.index, prompt.instruction)

    def sleep(self, level: int = 1) -> bool:
        """vLLM sleep mode (GPU, colocated): frees the KV cache (level 1 also offloads weights).
        Returns whether the engine slept; a no-op on CPU, where there is nothing to hand over."""
        if self.sleep_mode:
            self.llm.sleep(level=level)
        return self.sleep_mode

    def wake_up(self, tags: list[str] | None = None) -> bool:
        """Undo `sleep` (all memory, or only `tags` of weights / kv_cache)."""
        if self.sleep_mode:
            self.llm.wake_up(tags)
        return self.sleep_mode

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        self.llm.collective_rpc("init_weight_transfer_engine", args=(init_info,))

    def start_weight_update(self) -> None:
        self.llm.collective_rpc("start_weight_update")

    def update_weights(self, update_info: dict[str, Any]) -> None:
        """Load one bucket (backend-specific update info) into the model."""
        self.llm.collective_rpc("update_weights", args=(update_info,))

    def finish_weight_update(self) -> None:
        self.llm.collective_rpc("finish_weight_update")
        self.llm.reset_prefix_cache()
