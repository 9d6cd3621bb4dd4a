"""The built-in tasks (synthetic prompts with a latent reward; real-text instructions with
verifiable constraints), a local tokenizer and tiny model, model sources (built-in, GGUF, HF
directories), a Bradley-Terry reward judge, and prompt-source loading.

Names are imported lazily, so ``from apo_pipeline.task import load_prompts`` does not
import torch or transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SyntheticTask": "synthetic",
    "latent_reward": "synthetic",
    "build_tokenizer": "tokenizer",
    "TinyModelSettings": "tiny_model",
    "build_tiny_model": "tiny_model",
    "random_tiny_model": "tiny_model",
    "is_builtin_model": "model_spec",
    "check_model": "model_spec",
    "resolve_model": "model_spec",
    "ModelSourceError": "model_sources",
    "constraint_reward": "instructions",
    "instruction_prompts": "instructions",
    "BradleyTerryRewardJudge": "reward_judge",
    "load_reward_fn": "reward_judge",
    "PromptSet": "prompts",
    "load_prompts": "prompts",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value
