"""Offline K-candidate datasets for MC-PO, read from JSONL, Parquet or a `datasets.save_to_disk`
directory (a DatasetDict's `train` split), in one of the shapes of `dataset_formats` (this
project's {prompt, candidates, preferred}, Nectar, TRL's preference format, UltraFeedback).

Every malformed row is an error naming the file and the row (1-based), or is skipped and counted
with `on_error="skip"`. Token ids are made with the policy's tokenizer the way the engines make
them (`engine.generation.encode_prompt`: a plain prompt with the tokenizer's special tokens, a
conversation through the chat template), each candidate without special tokens plus EOS.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from transformers import PreTrainedTokenizerBase

from apo_pipeline.engine.generation import encode_prompt
from apo_pipeline.loops.dataset_formats import FORMATS, CandidateRow, Options, column_names
from apo_pipeline.rollout import TrainGroup
from apo_pipeline.task.prompts import as_user_turn

SPLIT = "train"  # the split read from a saved DatasetDict
__all__ = ["CandidateRow", "read_candidate_rows", "tokenize_rows"]


def _rows(path: Path) -> list[Any]:
    """Raw rows in file order; JSONL keeps a None per blank line so row numbers are line numbers."""
    if path.is_dir():
        import datasets

        data = datasets.load_from_disk(str(path))
        if isinstance(data, datasets.DatasetDict):
            if SPLIT not in data:
                raise ValueError(f"{path}: no {SPLIT!r} split (splits: {', '.join(data)})")
            data = data[SPLIT]
        return list(data)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if suffix not in (".jsonl", ".ndjson"):
        raise ValueError(f"{path}: unsupported dataset; expected .jsonl / .ndjson / .parquet or a datasets directory")
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line) if line.strip() else None)
        except json.JSONDecodeError as exc:
            rows.append(ValueError(f"not valid JSON ({exc.msg})"))
    return rows


def read_candidate_rows(
    source: str | Path,
    on_error: Literal["raise", "skip"] = "raise",
    *,
    fmt: str = "candidates",
    columns: Mapping[str, str] | None = None,
    drop_ranks: tuple[int, ...] = (2,),
) -> tuple[list[CandidateRow], int]:
    """Validated K-candidate rows of `source` in format `fmt` (`dataset_formats.FORMATS`; `columns`
    renames its fields, {our name: the file's}; `drop_ranks`: the Nectar ranks removed) and the
    number of rows skipped."""
    path = Path(source)
    names = column_names(fmt, columns)
    convert, options = FORMATS[fmt].convert, Options(tuple(drop_ranks))
    if not path.exists():
        raise FileNotFoundError(f"{path}: dataset not found")
    rows, skipped = [], 0
    for n, raw in enumerate(_rows(path), start=1):
        if raw is None:
            continue
        try:
            if isinstance(raw, Exception):
                raise raw
            if not isinstance(raw, dict):
                raise ValueError(f"not an object with {', '.join(repr(c) for c in names.values())}")
            rows.append(convert(raw, names, options))
        except ValueError as exc:
            if on_error == "raise":
                raise ValueError(f"{path} row {n}: {exc}") from None
            skipped += 1
    if not rows:
        raise ValueError(f"{path}: no usable rows ({skipped} skipped)")
    return rows, skipped


def tokenize_rows(rows: list[CandidateRow], tokenizer: PreTrainedTokenizerBase, chat: bool = False) -> list[TrainGroup]:
    """TrainGroups (prompt ids, K candidate ids ending in EOS, preferred index). With `chat`
    (data.chat) a plain-text prompt becomes a user turn of the chat template, as online prompts do."""
    eos = tokenizer.eos_token_id
    groups = []
    for row in rows:
        prompt = as_user_turn(row.prompt) if chat and isinstance(row.prompt, str) else row.prompt
        _, prompt_ids = encode_prompt(tokenizer, prompt)
        cands = [tokenizer(c, add_special_tokens=False)["input_ids"] + [eos] for c in row.candidates]
        groups.append(TrainGroup(prompt_ids, cands, row.preferred))
    return groups
