"""Reference decoding with plain transformers (the check that vLLM decodes as HF does)."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from apo_pipeline.task.warmup import single_thread


@torch.no_grad()
def hf_generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    *,
    temperature: float = 0.0,
    max_new_tokens: int = 16,
    seed: int = 0,
) -> list[list[int]]:
    """Response token ids per prompt (EOS included when emitted); greedy when ``temperature`` is 0.

    Prompts are decoded one at a time (no padding, one torch thread), so results do not
    depend on batching.
    """
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    eos = tokenizer.eos_token_id
    with single_thread():
        return [
            _decode_one(model, ids, eos, temperature, max_new_tokens, generator)
            for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]
        ]


def _decode_one(
    model: PreTrainedModel,
    prompt_ids: list[int],
    eos: int,
    temperature: float,
    max_new_tokens: int,
    generator: torch.Generator,
) -> list[int]:
    """Token-by-token decoding with a KV cache; stops after EOS or ``max_new_tokens``."""
    response: list[int] = []
    past = None
    step_input = torch.tensor([prompt_ids])
    for _ in range(max_new_tokens):
        result = model(input_ids=step_input, past_key_values=past, use_cache=True)
        past = result.past_key_values
        logits = result.logits[0, -1].float()
        if temperature > 0:
            token = int(
                torch.multinomial(
                    torch.softmax(logits / temperature, dim=-1), 1, generator=generator
                )
            )
        else:
            token = int(torch.argmax(logits))
        response.append(token)
        if token == eos:
            break
        step_input = torch.tensor([[token]])
    return response

