"""Offline preference datasets in their published shapes, turned into K-candidate rows (pure Python).

Every format yields `CandidateRow(prompt, candidates, preferred)`; a malformed row raises a
ValueError whose message the reader prefixes with the file and row. Field names are the format's
own and can be renamed with a column mapping ({our name: the file's name}).

- `candidates`: {prompt, candidates: [K strings], preferred: index} (this project's own).
- `nectar`: {prompt, answers: [{answer, rank}, ...]} (Nectar). The MC-PO paper's base setup: the
  rank-1 answer is preferred, the rank-2 answer is removed (`drop_ranks`, default (2,)) "to
  minimize noises in preference pairs", negatives come from the rest (drawn at train time by the
  sampler; `negatives: random` with M = 1 is the paper's random dispreferred completion).
- `trl`: TRL's preference format {prompt, chosen, rejected}: strings, or conversations (lists of
  {role, content}); without a prompt column the prompt is the messages chosen and rejected share.
- `ultrafeedback`: {instruction, completions: [{response, overall_score}, ...]}; the
  highest-scored completion is preferred (the first on ties), every scored one is a candidate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable

Message = dict[str, str]
Prompt = str | list[Message]


@dataclass
class CandidateRow:
    prompt: Prompt
    candidates: list[str]
    preferred: int


@dataclass(frozen=True)
class Format:
    """A dataset shape: its fields with their default column names, and the row converter."""

    fields: Mapping[str, str]
    convert: Callable[[dict, Mapping[str, str], "Options"], CandidateRow]


@dataclass(frozen=True)
class Options:
    """Format-specific choices (only `nectar` has one today)."""

    drop_ranks: tuple[int, ...] = field(default=(2,))


def _get(row: dict, columns: Mapping[str, str], key: str) -> Any:
    return row.get(columns[key])


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string")
    return value


def _conversation(value: Any, what: str) -> list[Message]:
    if not isinstance(value, list) or not value or not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
    ):
        raise ValueError(f"{what} must be a non-empty list of {{role, content}} messages")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def candidates_row(row: dict, columns: Mapping[str, str], options: Options) -> CandidateRow:
    prompt, cands, pref = (_get(row, columns, k) for k in ("prompt", "candidates", "preferred"))
    name = columns["preferred"]
    _text(prompt, repr(columns["prompt"]))
    if not isinstance(cands, list) or len(cands) < 2 or not all(isinstance(c, str) for c in cands):
        raise ValueError(f"{columns['candidates']!r} must be a list of at least 2 strings")
    if not isinstance(pref, int) or isinstance(pref, bool) or not 0 <= pref < len(cands):
        raise ValueError(f"{name!r} must be an index in 0..{len(cands) - 1}")
    return CandidateRow(prompt, list(cands), pref)


def nectar_row(row: dict, columns: Mapping[str, str], options: Options) -> CandidateRow:
    prompt = _text(_get(row, columns, "prompt"), repr(columns["prompt"]))
    answers = _get(row, columns, "answers")
    if not isinstance(answers, list) or not answers or not all(isinstance(a, dict) for a in answers):
        fields = f"{columns['answer']!r} and {columns['rank']!r}"
        raise ValueError(f"{columns['answers']!r} must be a list of objects with {fields}")
    ranked = {}
    for i, answer in enumerate(answers):
        text, rank = answer.get(columns["answer"]), answer.get(columns["rank"])
        if not isinstance(rank, (int, float)) or isinstance(rank, bool) or rank != int(rank):
            raise ValueError(f"answer {i}: {columns['rank']!r} must be an integer rank")
        if int(rank) in ranked:
            raise ValueError(f"answer {i}: rank {int(rank)} appears twice")
        ranked[int(rank)] = _text(text, f"answer {i}: {columns['answer']!r}")
    if 1 not in ranked:
        raise ValueError("no rank-1 answer (the preferred completion)")
    kept = [ranked[r] for r in sorted(ranked) if r not in options.drop_ranks]
    if len(kept) < 2:
        raise ValueError(f"{len(ranked)} answers leave no candidate once ranks {list(options.drop_ranks)} are removed")
    return CandidateRow(prompt, kept, 0)


def _response(value: Any, what: str) -> tuple[list[Message] | None, str]:
    """(the conversation, the final assistant message's content) or (None, the string)."""
    if isinstance(value, str):
        return None, _text(value, what)
    messages = _conversation(value, what)
    if messages[-1]["role"] != "assistant":
        raise ValueError(f"{what} must end with an assistant message")
    return messages, messages[-1]["content"]


def trl_row(row: dict, columns: Mapping[str, str], options: Options) -> CandidateRow:
    chosen_conv, chosen = _response(_get(row, columns, "chosen"), repr(columns["chosen"]))
    rejected_conv, rejected = _response(_get(row, columns, "rejected"), repr(columns["rejected"]))
    prompt = _get(row, columns, "prompt")
    if prompt is None:  # implicit prompt: the messages both conversations share
        shared = chosen_conv is not None and rejected_conv is not None and chosen_conv[:-1] == rejected_conv[:-1]
        if not shared or len(chosen_conv) < 2:
            raise ValueError(f"no {columns['prompt']!r}: chosen and rejected must be conversations sharing every "
                             "message but the last (the implicit-prompt format)")
        return CandidateRow(chosen_conv[:-1], [chosen, rejected], 0)
    if isinstance(prompt, str):
        return CandidateRow(_text(prompt, repr(columns["prompt"])), [chosen, rejected], 0)
    messages = _conversation(prompt, repr(columns["prompt"]))
    for conv, name in ((chosen_conv, "chosen"), (rejected_conv, "rejected")):
        if conv is not None and len(conv) != 1:
            raise ValueError(f"{columns[name]!r} must be the one assistant message answering {columns['prompt']!r}")
    return CandidateRow(messages, [chosen, rejected], 0)


def ultrafeedback_row(row: dict, columns: Mapping[str, str], options: Options) -> CandidateRow:
    prompt = _text(_get(row, columns, "prompt"), repr(columns["prompt"]))
    completions = _get(row, columns, "completions")
    if not isinstance(completions, list) or len(completions) < 2 or not all(isinstance(c, dict) for c in completions):
        raise ValueError(f"{columns['completions']!r} must be a list of at least 2 objects")
    texts, scores = [], []
    for i, completion in enumerate(completions):
        score = completion.get(columns["score"])
        if not isinstance(score, (int, float)) or isinstance(score, bool) or not math.isfinite(score):
            raise ValueError(f"completion {i}: {columns['score']!r} must be a finite number")
        texts.append(_text(completion.get(columns["response"]), f"completion {i}: {columns['response']!r}"))
        scores.append(float(score))
    return CandidateRow(prompt, texts, scores.index(max(scores)))


FORMATS: dict[str, Format] = {
    "candidates": Format({"prompt": "prompt", "candidates": "candidates", "preferred": "preferred"}, candidates_row),
    "nectar": Format({"prompt": "prompt", "answers": "answers", "answer": "answer", "rank": "rank"}, nectar_row),
    "trl": Format({"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"}, trl_row),
    "ultrafeedback": Format(
        {"prompt": "instruction", "completions": "completions", "response": "response", "score": "overall_score"},
        ultrafeedback_row,
    ),
}


def column_names(fmt: str, mapping: Mapping[str, str] | None = None) -> dict[str, str]:
    """The columns of format `fmt` with `mapping` ({our field: the file's name}) applied; a
    ValueError names an unknown format or field."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown dataset format {fmt!r}; choose one of {', '.join(FORMATS)}")
    fields = dict(FORMATS[fmt].fields)
    for key, name in (mapping or {}).items():
        if key not in fields:
            raise ValueError(f"{key}: not a field of format {fmt!r} (its fields: {', '.join(fields)})")
        fields[key] = name
    return fields
