"""The built-in policy: a tiny Qwen2 model with a local tokenizer, warmed up and cached on disk."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from apo_pipeline.task.cache import build_once, default_cache_dir
from apo_pipeline.task.synthetic import SyntheticTask
from apo_pipeline.task.tokenizer import build_tokenizer
from apo_pipeline.task.warmup import sft_warmup

# Part of the cache key: bump it whenever the tokenizer, the task or the warm-up changes.
FORMAT_VERSION = 2
TASK_INFO_FILE = "apo_task.json"


@dataclass(frozen=True)
class TinyModelSettings:
    """Architecture and warm-up; hidden_size / num_heads must be 64 (vLLM CPU attention)."""

    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 2
    num_kv_heads: int = 1
    intermediate_size: int = 512
    max_position_embeddings: int = 128
    warmup_steps: int = 600
    batch_size: int = 64
    learning_rate: float = 3e-3

    def __post_init__(self) -> None:
        if self.hidden_size != 64 * self.num_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be 64 * num_heads ({self.num_heads}): "
                "vLLM's CPU attention needs head_dim 64"
            )


def cache_key(seed: int, settings: TinyModelSettings) -> str:
    """Hex digest of (format version, seed, every setting)."""
    payload = json.dumps(
        {"format": FORMAT_VERSION, "seed": seed, **dataclasses.asdict(settings)}, sort_keys=True
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def _init_model(
    tokenizer: PreTrainedTokenizerFast, settings: TinyModelSettings, seed: int
) -> Qwen2ForCausalLM:
    """A randomly initialised float32 Qwen2ForCausalLM (init seeded by ``seed``)."""
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=settings.hidden_size,
        num_hidden_layers=settings.num_layers,
        num_attention_heads=settings.num_heads,
        num_key_value_heads=settings.num_kv_heads,
        intermediate_size=settings.intermediate_size,
        max_position_embeddings=settings.max_position_embeddings,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        dtype="float32",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Qwen2ForCausalLM(config).float()


def _save(
    model: Qwen2ForCausalLM, tokenizer: PreTrainedTokenizerFast, path: Path, info: dict
) -> None:
    """Write config, safetensors weights, tokenizer, generation config and task info to ``path``."""
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    (path / TASK_INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True))


def random_tiny_model(
    path: str | Path, seed: int = 0, settings: TinyModelSettings | None = None
) -> Path:
    """Write an untrained tiny model (no warm-up; for fast tests) to ``path``; returns it."""
    settings = settings or TinyModelSettings()
    path = Path(path)
    tokenizer = build_tokenizer()
    info = {"seed": seed, "settings": dataclasses.asdict(settings), "warmup": None}
    _save(_init_model(tokenizer, settings, seed), tokenizer, path, info)
    return path


def build_tiny_model(
    cache_dir: str | Path | None = None,
    seed: int = 0,
    warmup_steps: int | None = None,
    settings: TinyModelSettings | None = None,
) -> Path:
    """Build (or fetch from the cache) the warmed-up tiny model; returns its HF model directory.

    ``warmup_steps`` overrides ``settings.warmup_steps``. The directory is
    ``<cache_dir>/tiny-<key>``; it is built in a temporary sibling and renamed into place
    under a file lock, so concurrent builders of one key never see a partial model.
    """
    settings = settings or TinyModelSettings()
    if warmup_steps is not None:
        settings = dataclasses.replace(settings, warmup_steps=warmup_steps)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    final = root / f"tiny-{cache_key(seed, settings)}"
    return build_once(final, TASK_INFO_FILE, lambda tmp: _build_into(tmp, seed, settings))


def _build_into(path: Path, seed: int, settings: TinyModelSettings) -> None:
    tokenizer = build_tokenizer()
    model = _init_model(tokenizer, settings, seed)
    stats = sft_warmup(
        model,
        tokenizer,
        SyntheticTask(seed),
        steps=settings.warmup_steps,
        batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        seed=seed,
    )
    info = {
        "seed": seed,
        "settings": dataclasses.asdict(settings),
        "warmup": dataclasses.asdict(stats),
    }
    _save(model, tokenizer, path, info)
