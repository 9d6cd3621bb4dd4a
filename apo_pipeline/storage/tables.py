"""Arrow schemas and Parquet I/O for what a loop produces: rollouts, judgements and pairs.

One row per prompt. Per-candidate columns are lists of length K (the candidates of that prompt);
token ids are int32, log-probs are summed over response tokens in nats (float64, so the records
round-trip exactly). Files are written atomically and load with
`datasets.load_dataset("parquet", data_files=...)`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from apo_pipeline.rollout import Candidate, Rollout, TrainGroup
from apo_pipeline.storage.rundir import atomic_path


class TableError(ValueError):
    """A table or record that does not fit its schema; the message names the field (and row)."""


@dataclass
class Comparison:
    """One judged comparison of candidates `a` and `b`; `prob_a` = P(a beats b), NaN if it failed.
    `p_ab` / `p_ba`: the judge's verdicts in each order shown (P(a beats b) with a first; P(b beats a)
    with b first), NaN where not asked or not scored (what `apo-pipeline judge-eval` reads)."""

    a: int
    b: int
    prob_a: float
    p_ab: float = math.nan
    p_ba: float = math.nan


@dataclass
class Judgement:
    """The judge's verdict on one prompt's K candidates.

    `winner` is None when the ranking failed (the prompt is dropped, never given a default winner);
    `comparisons` is the log in the order asked; `win_matrix[i][j]` = P(i beats j), shape [K, K]
    (present when the loss needs it, e.g. SPPO); `failures` holds the messages of comparisons that
    still failed after retries.
    """

    prompt_index: int
    winner: int | None
    comparisons: list[Comparison] = field(default_factory=list)
    win_matrix: list[list[float]] | None = None
    failures: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.winner is not None and self.winner < 0:
            raise ValueError(f"winner: must be >= 0 or None (ranking failed), got {self.winner}")
        for n, c in enumerate(self.comparisons):
            if c.a == c.b or min(c.a, c.b) < 0:
                raise ValueError(f"comparisons[{n}]: needs two different indices >= 0, got ({c.a}, {c.b})")
            if not (math.isnan(c.prob_a) or 0.0 <= c.prob_a <= 1.0):
                raise ValueError(f"comparisons[{n}].prob_a: must be in [0, 1] or NaN, got {c.prob_a}")
        if self.win_matrix is not None:
            k = len(self.win_matrix)
            if any(len(row) != k for row in self.win_matrix):
                raise ValueError(f"win_matrix: must be square [K, K], got rows of {[len(r) for r in self.win_matrix]}")
            if self.winner is not None and self.winner >= k:
                raise ValueError(f"winner: {self.winner} outside 0..{k - 1} of the win_matrix")


_IDS = pa.list_(pa.int32())
_F64S = pa.list_(pa.float64())

ROLLOUTS_SCHEMA = pa.schema([
    pa.field("prompt_index", pa.int64(), nullable=False),
    pa.field("prompt", pa.string(), nullable=False),
    pa.field("prompt_ids", _IDS, nullable=False),
    pa.field("candidate_ids", pa.list_(_IDS), nullable=False),
    pa.field("texts", pa.list_(pa.string()), nullable=False),
    pa.field("finish_reasons", pa.list_(pa.string()), nullable=False),
    pa.field("temperatures", _F64S, nullable=False),
    pa.field("logprobs", _F64S, nullable=False),
    pa.field("instruction", pa.string(), nullable=True),  # added later: null in older tables
])

_COMPARISON = pa.struct([
    pa.field("a", pa.int32(), nullable=False), pa.field("b", pa.int32(), nullable=False),
    pa.field("prob_a", pa.float64(), nullable=False),
    pa.field("p_ab", pa.float64()), pa.field("p_ba", pa.float64()),  # added later: null in older tables
])
JUDGEMENTS_SCHEMA = pa.schema([
    pa.field("prompt_index", pa.int64(), nullable=False),
    pa.field("winner", pa.int32(), nullable=True),
    pa.field("comparisons", pa.list_(_COMPARISON), nullable=False),
    pa.field("win_matrix", pa.list_(_F64S), nullable=True),
    pa.field("failures", pa.list_(pa.string()), nullable=False),
])

PAIRS_SCHEMA = pa.schema([
    pa.field("prompt_ids", _IDS, nullable=False),
    pa.field("candidate_ids", pa.list_(_IDS), nullable=False),
    pa.field("preferred", pa.int32(), nullable=False),
    pa.field("ref_logps", _F64S, nullable=False),
    pa.field("win_probs", _F64S, nullable=True),
])


def _require(record: Any, cls: type, what: str) -> None:
    if not isinstance(record, cls):
        raise TableError(f"{what}: expected {cls.__name__}, got {type(record).__name__}")


def _rollout_row(r: Rollout) -> dict[str, Any]:
    _require(r, Rollout, "rollout")
    for k, c in enumerate(r.candidates):
        _require(c, Candidate, f"rollout.candidates[{k}]")
    cands = r.candidates
    return {
        "prompt_index": r.prompt_index, "prompt": r.prompt, "prompt_ids": r.prompt_ids,
        "candidate_ids": [c.token_ids for c in cands], "texts": [c.text for c in cands],
        "finish_reasons": [c.finish_reason for c in cands], "temperatures": [c.temperature for c in cands],
        "logprobs": [c.logprob for c in cands], "instruction": r.instruction or None,
    }


def _rollout_from_row(row: dict[str, Any]) -> Rollout:
    k = len(row["candidate_ids"])
    for name in ("texts", "finish_reasons", "temperatures", "logprobs"):
        if len(row[name]) != k:
            raise ValueError(f"{name}: {len(row[name])} entries for {k} candidates")
    cands = [
        Candidate(token_ids=ids, text=text, finish_reason=fr, logprob=lp, temperature=t)
        for ids, text, fr, lp, t in zip(
            row["candidate_ids"], row["texts"], row["finish_reasons"], row["logprobs"], row["temperatures"]
        )
    ]
    return Rollout(
        prompt=row["prompt"], prompt_ids=row["prompt_ids"], candidates=cands, prompt_index=row["prompt_index"],
        instruction=row["instruction"] or "",
    )


def _judgement_row(j: Judgement) -> dict[str, Any]:
    _require(j, Judgement, "judgement")
    for n, c in enumerate(j.comparisons):
        _require(c, Comparison, f"judgement.comparisons[{n}]")
    return {
        "prompt_index": j.prompt_index, "winner": j.winner,
        "comparisons": [{"a": c.a, "b": c.b, "prob_a": c.prob_a, "p_ab": c.p_ab, "p_ba": c.p_ba} for c in j.comparisons],
        "win_matrix": j.win_matrix, "failures": j.failures,
    }


def _judgement_from_row(row: dict[str, Any]) -> Judgement:
    comparisons = [Comparison(**{k: math.nan if v is None else v for k, v in c.items()}) for c in row["comparisons"]]
    return Judgement(row["prompt_index"], row["winner"], comparisons, row["win_matrix"], row["failures"])


def _pair_row(g: TrainGroup) -> dict[str, Any]:
    _require(g, TrainGroup, "pair")
    return {
        "prompt_ids": g.prompt_ids, "candidate_ids": g.candidate_ids, "preferred": g.preferred,
        "ref_logps": g.ref_logps, "win_probs": g.win_probs,
    }


def _pair_from_row(row: dict[str, Any]) -> TrainGroup:
    if row["win_probs"] is not None and len(row["win_probs"]) != len(row["candidate_ids"]):
        raise ValueError(f"win_probs: {len(row['win_probs'])} entries for {len(row['candidate_ids'])} candidates")
    return TrainGroup(**row)


@dataclass(frozen=True)
class _Spec:
    name: str
    schema: pa.Schema
    to_row: Callable[[Any], dict[str, Any]]
    from_row: Callable[[dict[str, Any]], Any]


ROLLOUTS = _Spec("rollouts", ROLLOUTS_SCHEMA, _rollout_row, _rollout_from_row)
JUDGEMENTS = _Spec("judgements", JUDGEMENTS_SCHEMA, _judgement_row, _judgement_from_row)
PAIRS = _Spec("pairs", PAIRS_SCHEMA, _pair_row, _pair_from_row)


def _null_path(array: pa.Array | pa.ChunkedArray, path: str, top_nullable: bool = False) -> str | None:
    """The dotted path of the first null inside `array` ('x[]' = list items), or None."""
    chunks = array.chunks if isinstance(array, pa.ChunkedArray) else [array]
    for chunk in chunks:
        if chunk.null_count and not top_nullable:
            return path
        if pa.types.is_list(chunk.type):
            found = _null_path(chunk.flatten(), f"{path}[]")
        elif pa.types.is_struct(chunk.type):
            found = next(
                (p for f, child in zip(chunk.type, chunk.flatten())
                 if (p := _null_path(child, f"{path}.{f.name}", top_nullable=f.nullable))),
                None,
            )
        else:
            found = None
        if found:
            return found
    return None


def _check_nulls(spec: _Spec, table: pa.Table, source: str) -> None:
    for f in spec.schema:
        found = _null_path(table.column(f.name), f.name, top_nullable=f.nullable)
        if found:
            raise TableError(f"{source}: field {found!r} holds a null")


def _to_table(spec: _Spec, records: Sequence[Any]) -> pa.Table:
    rows = []
    for i, record in enumerate(records):
        try:
            rows.append(spec.to_row(record))
        except TableError as exc:
            raise TableError(f"{spec.name} row {i}: {exc}") from None
    columns = []
    for f in spec.schema:
        try:
            columns.append(pa.array([row[f.name] for row in rows], type=f.type))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError) as exc:
            raise TableError(f"{spec.name}.{f.name}: cannot convert to {f.type}: {exc}") from None
    table = pa.Table.from_arrays(columns, schema=spec.schema)
    _check_nulls(spec, table, spec.name)
    return table


def _from_table(spec: _Spec, table: pa.Table, source: str) -> list[Any]:
    columns = []
    for f in spec.schema:
        if f.name not in table.column_names and f.nullable:  # a nullable column added after the table was written
            columns.append(pa.nulls(table.num_rows, f.type))
            continue
        if f.name not in table.column_names:
            raise TableError(f"{source}: missing column {f.name!r} of a {spec.name} table")
        try:
            columns.append(table.column(f.name).cast(f.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
            actual = table.schema.field(f.name).type
            raise TableError(f"{source}: column {f.name!r} has type {actual}, expected {f.type} ({exc})") from None
    typed = pa.Table.from_arrays(columns, schema=spec.schema)
    _check_nulls(spec, typed, source)
    records = []
    for i, row in enumerate(typed.to_pylist()):
        try:
            records.append(spec.from_row(row))
        except (ValueError, TypeError) as exc:
            raise TableError(f"{source} row {i}: {exc}") from None
    return records


def _write(spec: _Spec, path: str | Path, records: Sequence[Any]) -> Path:
    table = _to_table(spec, records)
    path = Path(path)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


def _read(spec: _Spec, path: str | Path) -> list[Any]:
    return _from_table(spec, pq.read_table(path), str(path))


def rollouts_to_table(rollouts: Sequence[Rollout]) -> pa.Table:
    """Rollouts -> Arrow table with `ROLLOUTS_SCHEMA` (one row per prompt)."""
    return _to_table(ROLLOUTS, rollouts)


def table_to_rollouts(table: pa.Table) -> list[Rollout]:
    """Arrow table (e.g. a `datasets` Dataset's `.data.table`) -> rollouts, validated."""
    return _from_table(ROLLOUTS, table, "rollouts table")


def judgements_to_table(judgements: Sequence[Judgement]) -> pa.Table:
    """Judgements -> Arrow table with `JUDGEMENTS_SCHEMA`."""
    return _to_table(JUDGEMENTS, judgements)


def table_to_judgements(table: pa.Table) -> list[Judgement]:
    """Arrow table -> judgements, validated."""
    return _from_table(JUDGEMENTS, table, "judgements table")


def pairs_to_table(groups: Sequence[TrainGroup]) -> pa.Table:
    """Train groups -> Arrow table with `PAIRS_SCHEMA`."""
    return _to_table(PAIRS, groups)


def table_to_pairs(table: pa.Table) -> list[TrainGroup]:
    """Arrow table -> train groups, validated (TrainGroup checks preferred / ref_logps)."""
    return _from_table(PAIRS, table, "pairs table")


def write_rollouts(path: str | Path, rollouts: Sequence[Rollout]) -> Path:
    """Write rollouts to Parquet atomically; returns `path`."""
    return _write(ROLLOUTS, path, rollouts)


def read_rollouts(path: str | Path) -> list[Rollout]:
    """Read a rollouts Parquet file; errors name the file, column / field and row."""
    return _read(ROLLOUTS, path)


def write_judgements(path: str | Path, judgements: Sequence[Judgement]) -> Path:
    """Write judgements to Parquet atomically; returns `path`."""
    return _write(JUDGEMENTS, path, judgements)


def read_judgements(path: str | Path) -> list[Judgement]:
    """Read a judgements Parquet file."""
    return _read(JUDGEMENTS, path)


def write_pairs(path: str | Path, groups: Sequence[TrainGroup]) -> Path:
    """Write train groups (pairs) to Parquet atomically; returns `path`."""
    return _write(PAIRS, path, groups)


def read_pairs(path: str | Path) -> list[TrainGroup]:
    """Read a pairs Parquet file."""
    return _read(PAIRS, path)
