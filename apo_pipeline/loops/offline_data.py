"""Offline K-candidate datasets for MC-PO: rows {prompt, candidates: [K strings], preferred: int}.

Read from JSONL, Parquet or a `datasets.save_to_disk` directory (a DatasetDict's `train` split);
every malformed row is an error naming the file and the row (1-based), or is skipped and counted
with `on_error="skip"`.
Token ids are made with the policy's tokenizer the way the engines make them: the prompt with the
tokenizer's special tokens, each candidate without them plus EOS.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from transformers import PreTrainedTokenizerBase

from apo_pipeline.rollout import TrainGroup

SPLIT = "train"  # the split read from a saved DatasetDict


@dataclass
class CandidateRow:
    prompt: str
    candidates: list[str]
    preferred: int


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


def _check(row: Any) -> CandidateRow:
    if isinstance(row, Exception):
        raise row
    if not isinstance(row, dict):
        raise ValueError("not an object with prompt / candidates / preferred")
    prompt, cands, pref = row.get("prompt"), row.get("candidates"), row.get("preferred")
    if not isinstance(prompt, str) or not prompt:
        raise ValueError("'prompt' must be a non-empty string")
    if not isinstance(cands, list) or len(cands) < 2 or not all(isinstance(c, str) for c in cands):
        raise ValueError("'candidates' must be a list of at least 2 strings")
    if not isinstance(pref, int) or isinstance(pref, bool) or not 0 <= pref < len(cands):
        raise ValueError(f"'preferred' must be an index in 0..{len(cands) - 1}")
    return CandidateRow(prompt, list(cands), pref)


def read_candidate_rows(source: str | Path, on_error: Literal["raise", "skip"] = "raise") -> tuple[list[CandidateRow], int]:
    """Validated rows of `source` and the number skipped."""
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"{path}: dataset not found")
    rows, skipped = [], 0
    for n, raw in enumerate(_rows(path), start=1):
        if raw is None:
            continue
        try:
            rows.append(_check(raw))
        except ValueError as exc:
            if on_error == "raise":
                raise ValueError(f"{path} row {n}: {exc}") from None
            skipped += 1
    if not rows:
        raise ValueError(f"{path}: no usable rows ({skipped} skipped)")
    return rows, skipped


def tokenize_rows(rows: list[CandidateRow], tokenizer: PreTrainedTokenizerBase) -> list[TrainGroup]:
    """TrainGroups (prompt ids, K candidate ids ending in EOS, preferred index)."""
    eos = tokenizer.eos_token_id
    groups = []
    for row in rows:
        prompt_ids = tokenizer(row.prompt)["input_ids"]
        cands = [tokenizer(c, add_special_tokens=False)["input_ids"] + [eos] for c in row.candidates]
        groups.append(TrainGroup(prompt_ids, cands, row.preferred))
    return groups
