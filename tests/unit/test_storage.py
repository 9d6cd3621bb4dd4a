"""Run directory layout and Parquet tables: round trips, `datasets` loading, errors naming the field."""

from __future__ import annotations

import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from apo_pipeline.config import OnMCPOConfig
from apo_pipeline.rollout import Candidate, Rollout, TrainGroup
from apo_pipeline.storage import (
    Comparison,
    Judgement,
    RunDir,
    TableError,
    create_run_dir,
    read_judgements,
    read_pairs,
    read_rollouts,
    rollouts_to_table,
    table_to_rollouts,
    write_judgements,
    write_pairs,
    write_rollouts,
)


def _rollouts() -> list[Rollout]:
    temps = [0.6, 0.6, 1.0]
    return [
        Rollout(
            prompt=f"prompt {i}",
            prompt_ids=[1, 2, 3 + i],
            candidates=[
                Candidate(token_ids=list(range(k + 1 + i)), text=f"c{k}", finish_reason="stop" if k else "length",
                          logprob=-1.25 * (k + 1) - i / 3, temperature=t)
                for k, t in enumerate(temps)
            ],
            prompt_index=10 + i,
            instruction="" if i == 2 else f"instruction {i}",
        )
        for i in range(3)
    ]


def _judgements() -> list[Judgement]:
    return [
        Judgement(0, 2, [Comparison(0, 1, 0.25), Comparison(1, 2, float("nan"))], None, ["timeout"]),
        Judgement(1, 0, [Comparison(0, 1, 0.9, 0.8, 0.0)], [[0.5, 0.9], [0.1, 0.5]], []),
    ]


def _pairs() -> list[TrainGroup]:
    return [
        TrainGroup([5, 6], [[1, 2], [3], [4, 5, 6]], preferred=2, ref_logps=[-1.5, -2.0, -0.1]),
        TrainGroup([7], [[8], [9, 9]], preferred=0, ref_logps=[-3.0, -4.0], win_probs=[0.7, 0.3]),
    ]


def test_layout_paths_and_listing(tmp_path):
    run = create_run_dir(tmp_path / "runs", "demo", OnMCPOConfig())
    assert run.root == tmp_path / "runs" / "demo"
    assert yaml.safe_load(run.config_path.read_text())["job"] == "onmcpo"
    assert run.table_path("pairs", 3).relative_to(run.root).as_posix() == "iter_0003/pairs.parquet"
    assert run.table_path("rollouts", 12, "segment").parent.name == "seg_0012"
    write_rollouts(run.table_path("rollouts", 1), _rollouts())
    write_pairs(run.table_path("pairs", 0), _pairs())
    write_rollouts(run.table_path("rollouts", 0), _rollouts())
    (run.root / "iter_0002").mkdir()
    rounds = run.rounds()
    assert [(r.unit, r.index) for r in rounds] == [("iteration", 0), ("iteration", 1), ("iteration", 2)]
    assert set(rounds[0].tables) == {"rollouts", "pairs"} and rounds[2].tables == {}
    assert [p.parent.name for p in run.table_files("rollouts")] == ["iter_0000", "iter_0001"]
    assert not [p for p in run.root.rglob("*") if ".tmp-" in p.name]


def test_layout_rejects_bad_names(tmp_path):
    with pytest.raises(ValueError, match="name"):
        create_run_dir(tmp_path, "a/b")
    with pytest.raises(ValueError, match="table"):
        RunDir(tmp_path).table_path("losses", 0)
    with pytest.raises(ValueError, match="unit"):
        RunDir(tmp_path).round_dir(0, "epoch")
    with pytest.raises(ValueError, match="index"):
        RunDir(tmp_path).round_dir(-1)


def test_create_run_dir_accepts_mapping_and_keeps_config(tmp_path):
    run = create_run_dir(tmp_path, "x", {"name": "x", "seed": 3})
    assert yaml.safe_load(run.config_path.read_text()) == {"name": "x", "seed": 3}
    create_run_dir(tmp_path, "x")
    assert yaml.safe_load(run.config_path.read_text())["seed"] == 3


@pytest.mark.parametrize(
    ("write", "read", "records"),
    [(write_rollouts, read_rollouts, _rollouts()), (write_judgements, read_judgements, _judgements()),
     (write_pairs, read_pairs, _pairs())],
    ids=["rollouts", "judgements", "pairs"],
)
def test_round_trip(tmp_path, write, read, records):
    path = write(tmp_path / "t.parquet", records)
    back = read(path)
    assert repr(back) == repr(records)  # repr: NaN == NaN


def test_tables_written_before_the_added_columns_still_read(tmp_path):
    """`instruction` (rollouts) and `p_ab` / `p_ba` (judgements) came later: older files read as ""
    and NaN."""
    rollouts = rollouts_to_table(_rollouts()).drop_columns(["instruction"])
    pq.write_table(rollouts, tmp_path / "r.parquet")
    assert [r.instruction for r in read_rollouts(tmp_path / "r.parquet")] == ["", "", ""]
    old = pa.struct([("a", pa.int32()), ("b", pa.int32()), ("prob_a", pa.float64())])
    table = pa.table({
        "prompt_index": pa.array([0], pa.int64()), "winner": pa.array([1], pa.int32()),
        "comparisons": pa.array([[{"a": 0, "b": 1, "prob_a": 0.25}]], pa.list_(old)),
        "win_matrix": pa.array([None], pa.list_(pa.list_(pa.float64()))), "failures": pa.array([[]], pa.list_(pa.string())),
    })
    pq.write_table(table, tmp_path / "j.parquet")
    (c,) = read_judgements(tmp_path / "j.parquet")[0].comparisons
    assert (c.a, c.b, c.prob_a) == (0, 1, 0.25) and math.isnan(c.p_ab) and math.isnan(c.p_ba)


def test_schema_types(tmp_path):
    table = pq.read_table(write_rollouts(tmp_path / "r.parquet", _rollouts()))
    assert table.schema.field("candidate_ids").type == pa.list_(pa.list_(pa.int32()))
    assert table.column("temperatures").to_pylist()[0] == [0.6, 0.6, 1.0]
    assert table.num_rows == 3


def test_load_dataset_reads_all_tables(tmp_path):
    import datasets
    run = RunDir(tmp_path / "run")
    write_rollouts(run.table_path("rollouts", 0), _rollouts())
    write_rollouts(run.table_path("rollouts", 1), _rollouts()[:1])
    write_judgements(run.table_path("judgements", 0), _judgements())
    write_pairs(run.table_path("pairs", 0), _pairs())
    cache = str(tmp_path / "hf-cache")
    load = lambda files: datasets.load_dataset("parquet", data_files=[str(f) for f in files], split="train",
                                               cache_dir=cache)
    ds = load(run.table_files("rollouts"))
    assert ds.num_rows == 4
    assert ds[0]["candidate_ids"] == [c.token_ids for c in _rollouts()[0].candidates]
    assert table_to_rollouts(ds.data.table)[:3] == _rollouts()
    jd = load(run.table_files("judgements"))
    assert jd[1]["win_matrix"] == [[0.5, 0.9], [0.1, 0.5]] and jd[0]["win_matrix"] is None
    first = jd[0]["comparisons"][0]
    assert {k: first[k] for k in ("a", "b", "prob_a")} == {"a": 0, "b": 1, "prob_a": 0.25}
    assert math.isnan(first["p_ab"]) and math.isnan(first["p_ba"])  # per-order verdicts default to NaN
    pd = load(run.table_files("pairs"))
    assert pd["preferred"] == [2, 0] and pd[1]["win_probs"] == [0.7, 0.3]


def test_write_errors_name_the_field(tmp_path):
    bad = _rollouts()
    bad[1].candidates[0].token_ids = [1, "x"]
    with pytest.raises(TableError, match=r"rollouts\.candidate_ids"):
        write_rollouts(tmp_path / "r.parquet", bad)
    bad = _rollouts()
    bad[2].prompt = None
    with pytest.raises(TableError, match="'prompt' holds a null"):
        rollouts_to_table(bad)
    bad = _rollouts()
    bad[0].candidates[1] = ("not", "a", "candidate")
    with pytest.raises(TableError, match=r"rollouts row 0: rollout\.candidates\[1\]"):
        rollouts_to_table(bad)
    with pytest.raises(TableError, match="pairs row 0: pair: expected TrainGroup"):
        write_pairs(tmp_path / "p.parquet", [_rollouts()[0]])
    assert not list(tmp_path.iterdir())


def test_record_validation_names_the_field():
    with pytest.raises(ValueError, match=r"comparisons\[0\].prob_a"):
        Judgement(0, 0, [Comparison(0, 1, 1.5)])
    with pytest.raises(ValueError, match="win_matrix"):
        Judgement(0, 0, [], [[0.5, 0.5], [0.5]])
    with pytest.raises(ValueError, match="winner"):
        Judgement(0, 3, [], [[0.5, 0.5], [0.5, 0.5]])


def test_read_errors_name_column_and_row(tmp_path):
    table = rollouts_to_table(_rollouts())
    pq.write_table(table.drop_columns(["logprobs"]), tmp_path / "missing.parquet")
    with pytest.raises(TableError, match="missing column 'logprobs'"):
        read_rollouts(tmp_path / "missing.parquet")

    texts = table.column("texts").to_pylist()
    texts[1] = texts[1][:2]
    short = table.set_column(table.schema.get_field_index("texts"), "texts", pa.array(texts))
    pq.write_table(short, tmp_path / "short.parquet")
    with pytest.raises(TableError, match=r"short\.parquet row 1: texts: 2 entries for 3 candidates"):
        read_rollouts(tmp_path / "short.parquet")

    wrong = table.set_column(table.schema.get_field_index("prompt_ids"), "prompt_ids",
                             pa.array([["a"], ["b"], ["c"]]))
    pq.write_table(wrong, tmp_path / "wrong.parquet")
    with pytest.raises(TableError, match="column 'prompt_ids' has type"):
        read_rollouts(tmp_path / "wrong.parquet")

    ids = table.column("candidate_ids").to_pylist()
    ids[0][1] = [1, None]
    nulls = table.set_column(table.schema.get_field_index("candidate_ids"), "candidate_ids", pa.array(ids))
    pq.write_table(nulls, tmp_path / "nulls.parquet")
    with pytest.raises(TableError, match=r"'candidate_ids\[\]\[\]' holds a null"):
        read_rollouts(tmp_path / "nulls.parquet")

    pairs = rollouts_to_table(_rollouts())  # a rollouts file is not a pairs file
    pq.write_table(pairs, tmp_path / "notpairs.parquet")
    with pytest.raises(TableError, match="missing column 'preferred'"):
        read_pairs(tmp_path / "notpairs.parquet")


def test_pairs_read_reuses_train_group_checks(tmp_path):
    from apo_pipeline.storage.tables import pairs_to_table

    table = pairs_to_table(_pairs())
    table = table.set_column(table.schema.get_field_index("preferred"), "preferred", pa.array([5, 0], pa.int32()))
    pq.write_table(table, tmp_path / "p.parquet")
    with pytest.raises(TableError, match="row 0: preferred index 5"):
        read_pairs(tmp_path / "p.parquet")


def test_write_is_atomic_on_failure(tmp_path, monkeypatch):
    path = write_rollouts(tmp_path / "r.parquet", _rollouts())
    before = path.read_bytes()

    def boom(table, where, **kwargs):
        open(where, "wb").write(b"partial")
        raise OSError("disk gone")

    monkeypatch.setattr(pq, "write_table", boom)
    with pytest.raises(OSError, match="disk gone"):
        write_rollouts(path, _rollouts()[:1])
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["r.parquet"]
    assert math.isclose(read_rollouts(path)[0].candidates[0].logprob, -1.25)
