"""The built-in tiny model loads in transformers and vLLM; both greedy-decode the same tokens."""

from __future__ import annotations

import gc
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from apo_pipeline.task import SyntheticTask, build_tiny_model
from apo_pipeline.task.hf_decode import hf_generate

pytestmark = pytest.mark.slow

MAX_NEW_TOKENS = 16


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return build_tiny_model()


@pytest.fixture(scope="module")
def prompts(model_dir: Path) -> list[str]:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    chat = [{"role": "user", "content": "reverse:2718="}]
    return [
        *SyntheticTask(0).prompts(8, "eval"),
        tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True),
    ]


@pytest.fixture(scope="module")
def llm(model_dir: Path) -> Iterator[object]:
    """An in-process vLLM engine (no worker process) with a 1 GiB KV cache."""
    import vllm
    with pytest.MonkeyPatch.context() as env:
        env.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
        env.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        engine = vllm.LLM(
            model=str(model_dir),
            dtype="float32",
            enforce_eager=True,
            max_model_len=128,
            distributed_executor_backend="uni",
            seed=0,
        )
        yield engine
        del engine
        gc.collect()


def test_transformers_and_vllm_greedy_tokens_match(
    model_dir: Path, prompts: list[str], llm
) -> None:
    from vllm import SamplingParams

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    expected = hf_generate(
        model, tokenizer, prompts, temperature=0.0, max_new_tokens=MAX_NEW_TOKENS
    )

    params = SamplingParams(temperature=0.0, max_tokens=MAX_NEW_TOKENS, logprobs=0)
    outputs = llm.generate(prompts, params, use_tqdm=False)

    assert all(ids[-1] == tokenizer.eos_token_id for ids in expected[:-1])
    for prompt, want, out in zip(prompts, expected, outputs):
        completion = out.outputs[0]
        assert list(out.prompt_token_ids) == tokenizer(prompt)["input_ids"], prompt
        assert list(completion.token_ids) == want, prompt
        assert completion.text == tokenizer.decode(want, skip_special_tokens=True), prompt
        hf_logprob = _greedy_logprob(model, out.prompt_token_ids, want)
        vllm_logprob = sum(step[tok].logprob for step, tok in zip(completion.logprobs, want))
        assert math.isclose(vllm_logprob, hf_logprob, abs_tol=1e-3), prompt


@torch.no_grad()
def _greedy_logprob(model, prompt_ids: list[int], response_ids: list[int]) -> float:
    """Sum of log p(response token | prefix) under ``model`` (nats)."""
    ids = torch.tensor([list(prompt_ids) + list(response_ids)])
    logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
    targets = ids[0, len(prompt_ids) :]
    return float(logp[len(prompt_ids) - 1 :].gather(1, targets[:, None]).sum())
