"""Prompt sources: the built-in tasks (``builtin``: synthetic digit reversal;
``builtin:instructions``: real-text instructions with verifiable constraints), a JSONL file, a
Parquet file, or a ``datasets`` directory.

Every row needs a ``prompt`` that is a non-empty string or a conversation (a non-empty
list of ``{"role": str, "content": str}`` dicts). A bad row raises ValueError naming the
file and the row (JSONL: 1-based line number; Parquet / datasets: 1-based row number),
or is skipped and counted with ``on_error="skip"``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apo_pipeline.task.instructions import instruction_prompts
from apo_pipeline.task.synthetic import Prompt, SyntheticTask

INSTRUCTIONS_SOURCE = "builtin:instructions"
PROMPT_FIELD = "prompt"
ON_ERROR = ("raise", "skip")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)


@dataclass
class PromptSet:
    """Loaded prompts (strings or conversations), the number of skipped rows, and the source."""

    prompts: list[Prompt]
    source: str
    skipped: int = 0
    errors: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.prompts)


class RowError(ValueError):
    """A row whose prompt is missing or malformed; ``str()`` names the file and row."""


def validate_prompt(value: Any) -> str | None:
    """None when ``value`` is a valid prompt, else the reason it is not."""
    if isinstance(value, str):
        return None if value.strip() else "prompt is an empty string"
    if isinstance(value, list):
        if not value:
            return "prompt is an empty conversation"
        for i, message in enumerate(value):
            if not isinstance(message, dict):
                return f"message {i} is {type(message).__name__}, not a dict"
            for key in ("role", "content"):
                if not isinstance(message.get(key), str):
                    return f"message {i} has no string {key!r}"
        return None
    if value is None:
        return f"missing {PROMPT_FIELD!r}"
    return f"{PROMPT_FIELD!r} is {type(value).__name__}, not a string or a list of messages"


def as_user_turn(prompt: Prompt) -> Prompt:
    """A plain-text prompt as a one-message conversation (rendered with the chat template); a
    conversation as it is."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt


def _as_prompt(value: Prompt) -> Prompt:
    """A plain copy: strings as-is, messages reduced to their role and content."""
    if isinstance(value, str):
        return value
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _jsonl_rows(path: Path) -> Iterator[tuple[str, Any]]:
    """(``"line N"``, prompt value or a ValueError) per non-blank line."""
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"line {number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                yield where, ValueError(f"invalid JSON ({err.msg})")
                continue
            if not isinstance(row, dict):
                yield where, ValueError(f"expected a JSON object, got {type(row).__name__}")
                continue
            yield where, row.get(PROMPT_FIELD)


def _column_rows(values: Iterable[Any]) -> Iterator[tuple[str, Any]]:
    return ((f"row {i}", value) for i, value in enumerate(values, start=1))


def _parquet_column(path: Path) -> list[Any]:
    import pyarrow.parquet as pq

    schema = pq.read_schema(path)
    if PROMPT_FIELD not in schema.names:
        raise ValueError(f"{path}: no {PROMPT_FIELD!r} column (columns: {', '.join(schema.names)})")
    return pq.read_table(path, columns=[PROMPT_FIELD]).column(PROMPT_FIELD).to_pylist()


def _dataset_column(path: Path, split: str) -> list[Any]:
    import datasets

    data = datasets.load_from_disk(str(path))
    if isinstance(data, datasets.DatasetDict):
        if split not in data:
            raise ValueError(f"{path}: no split {split!r} (splits: {', '.join(data)})")
        data = data[split]
    if PROMPT_FIELD not in data.column_names:
        raise ValueError(
            f"{path}: no {PROMPT_FIELD!r} column (columns: {', '.join(data.column_names)})"
        )
    return data[PROMPT_FIELD]


def _file_rows(path: Path, split: str) -> Iterator[tuple[str, Any]]:
    if path.is_dir():
        return _column_rows(_dataset_column(path, split))
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return _jsonl_rows(path)
    if suffix in PARQUET_SUFFIXES:
        return _column_rows(_parquet_column(path))
    raise ValueError(
        f"{path}: unsupported prompt source; expected 'builtin', '{INSTRUCTIONS_SOURCE}', a {'/'.join(JSONL_SUFFIXES)} or "
        f"{'/'.join(PARQUET_SUFFIXES)} file, or a datasets.save_to_disk directory"
    )


def load_prompts(
    source: str | Path,
    *,
    split: str = "train",
    limit: int | None = None,
    on_error: str = "raise",
    seed: int = 0,
    n: int | None = None,
) -> PromptSet:
    """Load prompts from ``source`` (see the module docstring).

    ``"builtin"``: ``n`` (or else ``limit``) prompts of the synthetic task's ``split`` for
    ``seed``. ``"builtin:instructions"``: ``n`` (or else ``limit``, else all) prompts of that
    task's ``split``, in an order shuffled by ``seed``. Files: rows in order, at most ``limit`` valid prompts; ``split`` picks the
    split of a saved ``DatasetDict``. Raises FileNotFoundError for a missing path and
    ValueError for a bad row (with ``on_error="raise"``) or a source with no valid prompt.
    """
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    if str(source) == "builtin":
        count = n if n is not None else limit
        if count is None:
            raise ValueError(
                "prompt source 'builtin' needs n (or limit): how many prompts to generate"
            )
        return PromptSet(prompts=SyntheticTask(seed).prompts(count, split), source="builtin")
    if str(source) == INSTRUCTIONS_SOURCE:
        count = n if n is not None else limit
        return PromptSet(prompts=instruction_prompts(split, count, seed), source=INSTRUCTIONS_SOURCE)
    if str(source).startswith("builtin:"):
        raise ValueError(f"unknown built-in prompt source {str(source)!r}; known: builtin, {INSTRUCTIONS_SOURCE}")
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"prompt source not found: {source}")
    result = PromptSet(prompts=[], source=str(path))
    rows = 0
    for where, value in _file_rows(path, split):
        if limit is not None and len(result.prompts) >= limit:
            break
        rows += 1
        reason = str(value) if isinstance(value, ValueError) else validate_prompt(value)
        if reason is None:
            result.prompts.append(_as_prompt(value))
            continue
        message = f"{path}: {where}: {reason}"
        if on_error == "raise":
            raise RowError(message)
        result.skipped += 1
        result.errors.append(message)
    if rows == 0:
        raise ValueError(f"{path}: empty prompt source (no rows)")
    if not result.prompts:
        raise ValueError(
            f"{path}: no valid prompts ({result.skipped} rows skipped; first: {result.errors[0]})"
        )
    return result
