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


# The papers' datasets in their own shapes, each written as JSONL and as Parquet.

NECTAR = [
    {"prompt": "\n\nHuman: reverse 12\n\nAssistant:", "answers": [
        {"answer": "21", "model": "gpt-4", "rank": 1.0},
        {"answer": "2 1", "model": "gpt-3.5-turbo", "rank": 2.0},
        {"answer": "12", "model": "llama-2-7b-chat", "rank": 4.0},
        {"answer": "1", "model": "mistral-7b-instruct", "rank": 3.0},
    ], "turns": 1, "num_responses": 4, "source": ["sharegpt"], "good_natured": True},
]
TRL_PLAIN = [{"prompt": "reverse:12=", "chosen": "21", "rejected": "12"}]
TRL_CHAT = [{
    "prompt": [{"role": "user", "content": "reverse 12"}],
    "chosen": [{"role": "assistant", "content": "21"}],
    "rejected": [{"role": "assistant", "content": "12"}],
}]
TRL_IMPLICIT = [{
    "chosen": [{"role": "user", "content": "reverse 12"}, {"role": "assistant", "content": "21"}],
    "rejected": [{"role": "user", "content": "reverse 12"}, {"role": "assistant", "content": "12"}],
}]
ULTRAFEEDBACK = [{"source": "evol_instruct", "instruction": "reverse 12", "models": ["a", "b", "c"], "completions": [
    {"model": "a", "response": "12", "overall_score": 3.0, "fine-grained_score": 4.5},
    {"model": "b", "response": "21", "overall_score": 8.5, "fine-grained_score": 4.0},
    {"model": "c", "response": "2", "overall_score": 8.5, "fine-grained_score": 2.0},
]}]


def written(tmp_path, rows, kind):
    """`rows` as a JSONL or a Parquet file."""
    if kind == "jsonl":
        return write_jsonl(tmp_path / "d.jsonl", rows)
    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
@pytest.mark.parametrize(
    "fmt, rows, expected",
    [
        # rank 1 preferred, rank 2 removed, the rest (ranks 3, 4) the negatives' pool
        ("nectar", NECTAR, CandidateRow(NECTAR[0]["prompt"], ["21", "1", "12"], 0)),
        ("trl", TRL_PLAIN, CandidateRow("reverse:12=", ["21", "12"], 0)),
        ("trl", TRL_CHAT, CandidateRow([{"role": "user", "content": "reverse 12"}], ["21", "12"], 0)),
        ("trl", TRL_IMPLICIT, CandidateRow([{"role": "user", "content": "reverse 12"}], ["21", "12"], 0)),
        # the best overall_score is preferred, the first on a tie
        ("ultrafeedback", ULTRAFEEDBACK, CandidateRow("reverse 12", ["12", "21", "2"], 1)),
    ],
)
def test_papers_formats_in_their_own_shapes(tmp_path, kind, fmt, rows, expected):
    assert read_candidate_rows(written(tmp_path, rows, kind), fmt=fmt) == ([expected], 0)


def test_nectar_drop_ranks_and_ultrafeedback_score_column(tmp_path):
    path = written(tmp_path, NECTAR, "jsonl")
    assert read_candidate_rows(path, fmt="nectar", drop_ranks=(2, 3))[0][0].candidates == ["21", "12"]
    assert read_candidate_rows(path, fmt="nectar", drop_ranks=())[0][0].candidates == ["21", "2 1", "1", "12"]
    uf = written(tmp_path, ULTRAFEEDBACK, "parquet")
    assert read_candidate_rows(uf, fmt="ultrafeedback", columns={"score": "fine-grained_score"})[0][0].preferred == 0


def test_column_mapping_renames_the_files_fields(tmp_path):
    rows = [{"question": "reverse:12=", "good": "21", "bad": "12"}]
    path = written(tmp_path, rows, "parquet")
    got = read_candidate_rows(path, fmt="trl", columns={"prompt": "question", "chosen": "good", "rejected": "bad"})
    assert got == ([CandidateRow("reverse:12=", ["21", "12"], 0)], 0)
    with pytest.raises(ValueError, match="answer: not a field of format 'trl'"):
        read_candidate_rows(path, fmt="trl", columns={"answer": "x"})
    with pytest.raises(ValueError, match="unknown dataset format 'hh'"):
        read_candidate_rows(path, fmt="hh")


@pytest.mark.parametrize(
    "fmt, bad, reason",
    [
        ("nectar", {**NECTAR[0], "answers": [{"answer": "21", "rank": 2}, {"answer": "1", "rank": 3}]}, "no rank-1 answer"),
        ("nectar", {**NECTAR[0], "answers": NECTAR[0]["answers"][:2]}, "2 answers leave no candidate once ranks [2] are removed"),
        ("nectar", {**NECTAR[0], "answers": [{"answer": "21", "rank": 1}, {"answer": "x", "rank": 1}]}, "answer 1: rank 1 appears twice"),
        ("nectar", {**NECTAR[0], "answers": [{"answer": "21", "rank": "1"}]}, "answer 0: 'rank' must be an integer rank"),
        ("trl", {"prompt": "p", "chosen": "", "rejected": "r"}, "'chosen' must be a non-empty string"),
        ("trl", {**TRL_CHAT[0], "chosen": [{"role": "user", "content": "x"}]}, "'chosen' must end with an assistant message"),
        ("trl", {"chosen": TRL_IMPLICIT[0]["chosen"], "rejected": [{"role": "assistant", "content": "12"}]},
         "no 'prompt': chosen and rejected must be conversations sharing every message but the last"),
        ("trl", {**TRL_CHAT[0], "chosen": TRL_IMPLICIT[0]["chosen"]}, "'chosen' must be the one assistant message"),
        ("ultrafeedback", {**ULTRAFEEDBACK[0], "completions": ULTRAFEEDBACK[0]["completions"][:1]},
         "'completions' must be a list of at least 2 objects"),
        ("ultrafeedback", {**ULTRAFEEDBACK[0], "completions": [{"response": "a", "overall_score": None},
                                                               {"response": "b", "overall_score": 1.0}]},
         "completion 0: 'overall_score' must be a finite number"),
    ],
)
def test_malformed_rows_of_each_format_name_file_and_row(tmp_path, fmt, bad, reason):
    good = {"nectar": NECTAR, "trl": TRL_PLAIN if isinstance(bad.get("prompt"), str) else TRL_CHAT,
            "ultrafeedback": ULTRAFEEDBACK}[fmt][0]
    path = write_jsonl(tmp_path / "d.jsonl", [good, bad, good])
    with pytest.raises(ValueError, match=re.escape(f"{path} row 2: {reason}")):
        read_candidate_rows(path, fmt=fmt)
    rows, skipped = read_candidate_rows(path, on_error="skip", fmt=fmt)
    assert len(rows) == 2 and skipped == 1


def test_conversational_prompts_go_through_the_chat_template():
    tok = build_tokenizer()
    row = CandidateRow([{"role": "user", "content": "reverse 12"}], ["21", "12"], 0)
    group = tokenize_rows([row], tok)[0]
    text = tok.apply_chat_template(row.prompt, add_generation_prompt=True, tokenize=False)
    assert group.prompt_ids == tok(text, add_special_tokens=False)["input_ids"]
    assert text.endswith("<|im_start|>assistant\n") and tok.decode(group.candidate_ids[0][:-1]) == "21"
    plain = CandidateRow("reverse 12", ["21", "12"], 0)  # data.chat: a plain prompt as a user turn
    assert tokenize_rows([plain], tok, chat=True)[0].prompt_ids == group.prompt_ids
    assert tokenize_rows([plain], tok)[0].prompt_ids == tok("reverse 12")["input_ids"]


def test_mcpo_config_checks_the_column_mapping():
    from apo_pipeline.config import ConfigError, MCPOConfig, load_config

    with pytest.raises(ConfigError, match="loop.dataset_columns.question: not a field of format 'nectar'"):
        load_config(MCPOConfig, None, ["loop.dataset_format=nectar", "loop.dataset_columns.question=q"])
    cfg = load_config(MCPOConfig, None, ["loop.dataset_format=ultrafeedback", "loop.dataset_columns.prompt=question"])
    assert cfg.loop.dataset_columns == {"prompt": "question"}
