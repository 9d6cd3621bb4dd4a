"""Offline MC-PO data: K-candidate rows from JSONL / Parquet / datasets, row errors, tokenization."""

from __future__ import annotations

import json
import re
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from apo_pipeline.loops.offline_data import CandidateRow, read_candidate_rows, tokenize_rows
from apo_pipeline.task import SyntheticTask
from apo_pipeline.task.tokenizer import build_tokenizer

ROWS = [
    {"prompt": "reverse:12=", "candidates": ["21", "12", "2"], "preferred": 0},
    {"prompt": "reverse:345=", "candidates": ["543", "345"], "preferred": 1},
]
EXPECTED = [CandidateRow(r["prompt"], r["candidates"], r["preferred"]) for r in ROWS]


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_jsonl_rows_in_order(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [ROWS[0], "", {**ROWS[1], "source": "extra fields are ignored"}])
    assert read_candidate_rows(path) == (EXPECTED, 0)


def test_parquet_rows(tmp_path):
    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), path)
    assert read_candidate_rows(path) == (EXPECTED, 0)


def test_datasets_directory_and_its_train_split(tmp_path):
    columns = {key: [r[key] for r in ROWS] for key in ROWS[0]}
    datasets.Dataset.from_dict(columns).save_to_disk(str(tmp_path / "ds"))
    assert read_candidate_rows(tmp_path / "ds") == (EXPECTED, 0)
    bad = {**columns, "preferred": [0, 7]}
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(columns), "test": datasets.Dataset.from_dict(bad)}).save_to_disk(
        str(tmp_path / "dict")
    )
    assert read_candidate_rows(tmp_path / "dict") == (EXPECTED, 0)
    datasets.DatasetDict({"test": datasets.Dataset.from_dict(columns)}).save_to_disk(str(tmp_path / "notrain"))
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'notrain'}: no 'train' split (splits: test)")):
        read_candidate_rows(tmp_path / "notrain")


@pytest.mark.parametrize(
    "row, reason",
    [
        ({"prompt": "p", "candidates": ["a", "b"]}, "'preferred' must be an index in 0..1"),
        ({"candidates": ["a", "b"], "preferred": 0}, "'prompt' must be a non-empty string"),
        ({"prompt": "p", "candidates": "ab", "preferred": 0}, "'candidates' must be a list of at least 2 strings"),
        ({"prompt": "p", "candidates": ["a", 2], "preferred": 0}, "'candidates' must be a list of at least 2 strings"),
        ({"prompt": "p", "candidates": ["a", "b"], "preferred": "0"}, "'preferred' must be an index in 0..1"),
        ({"prompt": "p", "candidates": ["a", "b"], "preferred": True}, "'preferred' must be an index in 0..1"),
        ({"prompt": "p", "candidates": ["a", "b"], "preferred": 2}, "'preferred' must be an index in 0..1"),
        ({"prompt": "p", "candidates": ["a", "b"], "preferred": -1}, "'preferred' must be an index in 0..1"),
        ({"prompt": "p", "candidates": ["a"], "preferred": 0}, "'candidates' must be a list of at least 2 strings"),
        (["p", ["a", "b"], 0], "not an object"),
        ('{"prompt": "p",', "not valid JSON"),
    ],
)
def test_malformed_jsonl_row_names_file_and_row(tmp_path, row, reason):
    path = write_jsonl(tmp_path / "d.jsonl", [ROWS[0], "", row, ROWS[1]])
    with pytest.raises(ValueError, match=re.escape(f"{path} row 3: {reason}")):
        read_candidate_rows(path)
    assert read_candidate_rows(path, on_error="skip") == (EXPECTED, 1)


def test_malformed_parquet_and_datasets_rows_name_the_row(tmp_path):
    rows = [ROWS[0], {**ROWS[1], "preferred": 2}, {**ROWS[1], "candidates": ["543"]}, ROWS[1]]
    parquet = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    saved = tmp_path / "ds"
    datasets.Dataset.from_list(rows).save_to_disk(str(saved))
    for path in (parquet, saved):
        with pytest.raises(ValueError, match=re.escape(f"{path} row 2: 'preferred' must be an index in 0..1")):
            read_candidate_rows(path)
        assert read_candidate_rows(path, on_error="skip") == (EXPECTED, 2)


def test_unusable_sources(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.jsonl: dataset not found"):
        read_candidate_rows(tmp_path / "missing.jsonl")
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "p"}, {"prompt": "q"}])
    with pytest.raises(ValueError, match=re.escape(f"{bad}: no usable rows (2 skipped)")):
        read_candidate_rows(bad, on_error="skip")
    csv = tmp_path / "d.csv"
    csv.write_text("prompt,candidates,preferred\n")
    with pytest.raises(ValueError, match=re.escape(f"{csv}: unsupported dataset")):
        read_candidate_rows(csv)


def test_tokenize_rows_like_the_engines():
    tok = build_tokenizer()
    groups = tokenize_rows(EXPECTED, tok)
    assert [g.preferred for g in groups] == [0, 1]
    first = groups[0]
    assert first.prompt_ids == tok("reverse:12=")["input_ids"]
    assert len(first.candidate_ids) == 3
    for ids, text in zip(first.candidate_ids, ROWS[0]["candidates"]):
        assert ids[-1] == tok.eos_token_id and tok.decode(ids[:-1]) == text
        assert tok.eos_token_id not in ids[:-1]


def test_builtin_dataset_samples_data_prompts(tmp_path):
    from apo_pipeline.config import MCPOConfig
    from apo_pipeline.loops import mcpo

    class Sampled(Exception):
        pass

    class Pipe:
        def generate(self, prompts, index):
            self.prompts = prompts
            raise Sampled

    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a"}, {"prompt": ""}, {"prompt": "b"}, {"prompt": "c"}])
    cfg = MCPOConfig.model_validate({"data": {"prompts": str(path), "on_error": "skip"}, "loop": {"builtin_prompts": 2}})
    pipe = Pipe()
    with pytest.raises(Sampled):
        mcpo.builtin_dataset(pipe, cfg)
    assert pipe.prompts == ["a", "b"]
    with pytest.raises(Sampled):
        mcpo.builtin_dataset(pipe, MCPOConfig.model_validate({"seed": 3, "loop": {"builtin_prompts": 5}}))
    assert pipe.prompts == SyntheticTask(3).prompts(5, "train")  # the default data.prompts: builtin
    with pytest.raises(ValueError, match=re.escape(f"{path}: line 2: prompt is an empty string")):
        mcpo.builtin_dataset(pipe, cfg.model_copy(update={"data": cfg.data.model_copy(update={"on_error": "raise"})}))
