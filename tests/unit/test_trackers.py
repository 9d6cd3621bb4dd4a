"""The trackers behind MetricsLogger with the real packages: Weights & Biases offline (read back from
the run file `wandb sync` would upload) and the job's tracker set from its config."""

from __future__ import annotations

import json
import struct
import sys
import time
from pathlib import Path

import pytest

from apo_pipeline.config import OnMCPOConfig, load_config
from apo_pipeline.monitoring import MetricsLogger, open_run_metrics
from apo_pipeline.monitoring.trackers import RayMetrics, TensorBoard, Wandb

BLOCK = 32768  # the W&B run file is a LevelDB-style log: 7-byte header, 32 KiB blocks, 7-byte record headers
FULL, LAST = 1, 4


def wandb_records(run_file: Path) -> list:
    """Every protobuf `Record` of a `.wandb` run file, in order (CRCs not checked)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = run_file.read_bytes()
    assert data[:4] == b":W&B"
    pos, buf, out = 7, b"", []
    while pos + 7 <= len(data):
        room = BLOCK - pos % BLOCK
        if room < 7:
            pos += room
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pos += 7
        if kind == 0 and length == 0:  # zero padding to the end of the block
            pos += room - 7
            continue
        buf += data[pos:pos + length]
        pos += length
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(buf)
            out.append(record)
            buf = b""
    return out


def finished_records(run_dir: Path, timeout_s: float = 60.0) -> list:
    """The records of the one offline run under `run_dir/wandb`, once W&B's service has written its
    exit record (`finish()` may return before the service has flushed the file)."""
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    deadline = time.monotonic() + timeout_s
    while True:
        records = wandb_records(next(runs[0].glob("run-*.wandb")))
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def history(records: list) -> list[dict]:
    """The logged rows, without W&B's own `_step` / `_runtime` / `_timestamp`."""
    return [{_key(i): json.loads(i.value_json) for i in r.history.item if not _key(i).startswith("_")}
            for r in records if r.WhichOneof("record_type") == "history"]


def config_of(records: list) -> dict:
    """The run's config (sent with the run record)."""
    return {_key(i): json.loads(i.value_json) for r in records if r.WhichOneof("record_type") == "run"
            for i in r.run.config.update}


@pytest.fixture
def wandb_cfg() -> OnMCPOConfig:
    return load_config(OnMCPOConfig, None, ["monitoring.wandb=true", "monitoring.ray_metrics=false", "loop.segments=4"])


def test_wandb_offline_run_holds_every_event_at_its_step(tmp_path, wandb_cfg):
    run_dir = tmp_path / "myrun"
    with open_run_metrics(run_dir, wandb_cfg) as logger:
        assert [type(t) for t in logger.trackers] == [Wandb]
        logger.log("train", step=0, loss=0.7, segment=1, note="text")
        logger.log("train", step=1, loss=0.5, segment=1)
        logger.log("eval", iteration=1, segment=1, reward_mean=0.6, win_rate=None)
        logger.log("stage", stage="generate", seconds=1.5, segment=1)
        logger.log("actors", pid=12)
    records = finished_records(run_dir)
    run_id = (run_dir / "wandb" / "apo-run-id").read_text()
    assert [r.run.run_id for r in records if r.WhichOneof("record_type") == "run"] == [run_id]
    assert history(records) == [
        {"train/step": 0, "train/loss": 0.7, "train/segment": 1},
        {"train/step": 1, "train/loss": 0.5, "train/segment": 1},
        {"eval/iteration": 1, "eval/segment": 1, "eval/reward_mean": 0.6},
        {"stage/generate/seconds": 1.5, "stage/generate/segment": 1},
        {"actors/pid": 12, "actors/n": 0},
    ]
    config = config_of(records)
    assert config["loop"]["segments"] == 4 and config["monitoring"]["wandb_mode"] == "offline"
    steps = {r.metric.name or r.metric.glob_name: r.metric.step_metric for r in records if r.WhichOneof("record_type") == "metric"}
    assert steps["train/*"] == "train/step" and steps["eval/*"] == "eval/iteration"


def test_a_resumed_job_logs_into_the_same_wandb_run(tmp_path, wandb_cfg):
    for step in (0, 1):
        with open_run_metrics(tmp_path, wandb_cfg) as logger:
            logger.log("train", step=step, loss=1.0)
    run_id = (tmp_path / "wandb" / "apo-run-id").read_text()
    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(f"-{run_id}" in r.name for r in runs)


def test_the_config_picks_the_trackers(tmp_path):
    cfg = load_config(OnMCPOConfig, None, ["monitoring.tensorboard=true"])
    with open_run_metrics(tmp_path, cfg, console=None) as logger:
        assert [type(t) for t in logger.trackers] == [RayMetrics, TensorBoard]


def test_wandb_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(RuntimeError, match=r"monitoring\.wandb=true needs the wandb package: pip install 'apo-pipeline\[wandb\]'"):
        MetricsLogger(tmp_path, ray_metrics=False, trackers=[Wandb(tmp_path, project="p", mode="offline")])
