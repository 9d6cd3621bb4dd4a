"""An HF model directory's tokenizer read with the `tokenizers` library alone, for the checks before
Ray starts (preflight.py): importing transformers' AutoTokenizer costs about 3.5 s of CPU on this
machine, `tokenizers` about 0.05 s and `tokenizer.json` of a 49k vocabulary about 0.2 s.

`read_tokenizer(path)` reads `tokenizer.json` (the vocabulary, normalizer, pre-tokenizer, added and
special tokens, as transformers' fast tokenizers do), `tokenizer_config.json` (the unknown token)
and the chat template (`chat_template.jinja`, `chat_template.json` or tokenizer_config's key). It
returns None when the directory has no `tokenizer.json` but has other tokenizer files (a slow
SentencePiece / vocab-and-merges tokenizer): the caller loads AutoTokenizer then. A directory with
no tokenizer file at all is a ValueError at once (transformers would build an empty tokenizer).

Ours, not transformers': for a model-specific tokenizer class that transformers rebuilds from the
vocabulary with its own pre-tokenizer, the encodings could differ from tokenizer.json's in corner
cases; the checks here are early ones, and the LLM judge checks its labels again at start-up with
the tokenizer transformers loads (engine/llm_judge.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TOKENIZER_JSON = "tokenizer.json"
# files from which transformers can build a tokenizer without tokenizer.json
OTHER_TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model",
                         "vocab.json", "vocab.txt", "merges.txt", "tekken.json", "tokenizer.tiktoken")


@dataclass(frozen=True)
class FileTokenizer:
    """What the checks use of a tokenizer: `encode`, `unk_token_id` and `chat_template`, with
    transformers' names so that `engine.judge_labels` takes either."""

    backend: Any  # tokenizers.Tokenizer
    unk_token_id: int | None
    chat_template: str | dict | None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text` (with the post-processor's special tokens when `add_special_tokens`)."""
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path.name}: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path.name}: not a JSON object")
    return data


def _chat_template(path: Path, config: dict) -> str | dict | None:
    """The template transformers would find: chat_template.jinja, chat_template.json, then the config's key."""
    if (path / "chat_template.jinja").is_file():
        return (path / "chat_template.jinja").read_text()
    if (path / "chat_template.json").is_file():
        return _json(path / "chat_template.json").get("chat_template")
    return config.get("chat_template")


def _token_text(token: Any) -> str | None:
    """A special token as tokenizer_config.json stores it: a string or an AddedToken dict."""
    return token.get("content") if isinstance(token, dict) else token


def read_tokenizer(path: Path) -> FileTokenizer | None:
    """The tokenizer of HF directory `path` from its files; None when only transformers can build it
    (no tokenizer.json, other tokenizer files). ValueError with the reason when there is none."""
    if not (path / TOKENIZER_JSON).is_file():
        if any((path / name).is_file() for name in OTHER_TOKENIZER_FILES):
            return None
        raise ValueError(f"no tokenizer file: {TOKENIZER_JSON}, tokenizer_config.json, tokenizer.model, vocab.json, ...")
    from tokenizers import Tokenizer

    try:
        backend = Tokenizer.from_file(str(path / TOKENIZER_JSON))
    except Exception as exc:  # the Rust side raises a bare Exception on a malformed file
        raise ValueError(f"{TOKENIZER_JSON}: {str(exc).strip() or type(exc).__name__}") from None
    config = _json(path / "tokenizer_config.json") if (path / "tokenizer_config.json").is_file() else {}
    unk = _token_text(config.get("unk_token"))
    return FileTokenizer(backend, backend.token_to_id(unk) if unk else None, _chat_template(path, config))
