"""Fast tests of prompt-source loading: each format, limits, and each error case."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from apo_pipeline.task import SyntheticTask, load_prompts
from apo_pipeline.task.prompts import RowError

CHAT = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "reverse:12="}]
GOOD = ["reverse:123=", CHAT, "hello"]


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def jsonl_of(rows: list[object]) -> list[str]:
    return [json.dumps(row) for row in rows]


def test_builtin_source_is_the_synthetic_task() -> None:
    loaded = load_prompts("builtin", split="eval", seed=3, n=20)
    assert loaded.prompts == SyntheticTask(3).prompts(20, "eval")
    assert loaded.source == "builtin" and loaded.skipped == 0
    assert load_prompts("builtin", limit=5).prompts == SyntheticTask(0).prompts(5, "train")
    with pytest.raises(ValueError, match="needs n"):
        load_prompts("builtin")


def test_jsonl(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "p.jsonl", jsonl_of([{"prompt": p, "extra": 1} for p in GOOD]) + [""]
    )
    loaded = load_prompts(path)
    assert loaded.prompts == GOOD and loaded.skipped == 0 and loaded.source == str(path)
    assert load_prompts(path, limit=2).prompts == GOOD[:2]


def test_parquet(tmp_path: Path) -> None:
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"prompt": ["a", "b", "c"], "id": [1, 2, 3]}), path)
    assert load_prompts(path).prompts == ["a", "b", "c"]
    chat_path = tmp_path / "chat.parquet"
    pq.write_table(pa.table({"prompt": [CHAT, CHAT]}), chat_path)
    assert load_prompts(chat_path).prompts == [CHAT, CHAT]


def test_dataset_directory_and_splits(tmp_path: Path) -> None:
    single = tmp_path / "single"
    datasets.Dataset.from_dict({"prompt": ["a", "b"]}).save_to_disk(str(single))
    assert load_prompts(single).prompts == ["a", "b"]
    multi = tmp_path / "multi"
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"prompt": ["t"]}),
            "eval": datasets.Dataset.from_dict({"prompt": ["e"]}),
        }
    ).save_to_disk(str(multi))
    assert load_prompts(multi, split="eval").prompts == ["e"]
    with pytest.raises(ValueError, match="no split 'test'"):
        load_prompts(multi, split="test")


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('{"text": "no prompt field"}', "missing 'prompt'"),
        ('{"prompt": 42}', "'prompt' is int"),
        ('{"prompt": ""}', "empty string"),
        ('{"prompt": [{"role": "user"}]}', "no string 'content'"),
        ('{"prompt": ["hi"]}', "not a dict"),
        ("{not json", "invalid JSON"),
        ('["a list"]', "expected a JSON object"),
    ],
)
def test_jsonl_bad_row_names_file_and_line(tmp_path: Path, line: str, reason: str) -> None:
    path = write_jsonl(
        tmp_path / "bad.jsonl",
        [*jsonl_of([{"prompt": "ok"}]), "", line, *jsonl_of([{"prompt": "ok2"}])],
    )
    with pytest.raises(RowError) as err:
        load_prompts(path)
    assert str(path) in str(err.value) and "line 3" in str(err.value) and reason in str(err.value)
    skipped = load_prompts(path, on_error="skip")
    assert skipped.prompts == ["ok", "ok2"] and skipped.skipped == 1
    assert "line 3" in skipped.errors[0]


def test_parquet_bad_row_names_file_and_row(tmp_path: Path) -> None:
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"prompt": ["a", None, "c"]}), path)
    with pytest.raises(RowError, match=rf"{path}: row 2: missing 'prompt'"):
        load_prompts(path)
    assert load_prompts(path, on_error="skip").prompts == ["a", "c"]


def test_missing_column(tmp_path: Path) -> None:
    path = tmp_path / "nocol.parquet"
    pq.write_table(pa.table({"text": ["a"]}), path)
    with pytest.raises(ValueError, match=rf"{path}: no 'prompt' column \(columns: text\)"):
        load_prompts(path)


def test_empty_and_all_invalid_files(tmp_path: Path) -> None:
    empty = write_jsonl(tmp_path / "empty.jsonl", ["", "  "])
    with pytest.raises(ValueError, match=rf"{empty}: empty prompt source"):
        load_prompts(empty)
    invalid = write_jsonl(tmp_path / "invalid.jsonl", jsonl_of([{"prompt": 1}, {"prompt": None}]))
    with pytest.raises(ValueError, match=r"no valid prompts \(2 rows skipped"):
        load_prompts(invalid, on_error="skip")


def test_bad_sources_and_arguments(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_prompts(tmp_path / "nope.jsonl")
    csv = tmp_path / "p.csv"
    csv.write_text("prompt\na\n")
    with pytest.raises(ValueError, match="unsupported prompt source"):
        load_prompts(csv)
    with pytest.raises(ValueError, match="on_error"):
        load_prompts("builtin", n=1, on_error="ignore")
    with pytest.raises(ValueError, match="limit"):
        load_prompts("builtin", limit=0)


def test_as_user_turn() -> None:
    from apo_pipeline.task.prompts import as_user_turn

    assert as_user_turn("hi") == [{"role": "user", "content": "hi"}]
    conversation = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    assert as_user_turn(conversation) is conversation
