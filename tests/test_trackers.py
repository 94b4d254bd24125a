"""``run.report_to``: tensorboard, wandb (offline) and trackio each get a short run's metrics and its resolved
config, through accelerate's trackers, from ``atesd train``."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from atesd.cli import main
from atesd.config import save_config
from atesd.train.metrics import flat_config

pytestmark = pytest.mark.slow  # trains a model end to end


def train(tiny_config, tmp_path: Path, tracker: str) -> Path:
    save_config(tiny_config(tmp_path, "train.steps=2", f"run.report_to=[{tracker}]", "run.name=tracked"),
                tmp_path / "run.yaml")
    assert main(["train", str(tmp_path / "run.yaml")]) == 0
    return tmp_path / "runs" / "tracked"


def test_tensorboard_gets_the_metrics_and_the_config(tiny_config, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = train(tiny_config, tmp_path, "tensorboard")
    (events,) = {path.parent for path in (run / "trackers").rglob("events.out.tfevents.*")
                 if not any("hparams" in part or part[0].isdigit() for part in path.relative_to(run).parts[2:-1])}
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    assert [event.step for event in accumulator.Scalars("loss")] == [1, 2]
    assert {"rollout_accuracy", "kl_mean"} <= set(accumulator.Tags()["scalars"])
    hparams = (run / "trackers").rglob("hparams.yml")
    assert "train.steps: 2" in next(hparams).read_text()


def test_wandb_offline_gets_the_metrics_and_the_config(tiny_config, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = train(tiny_config, tmp_path, "wandb")
    (offline,) = (run / "trackers" / "wandb").glob("offline-run-*/run-*.wandb")
    from wandb.proto import wandb_internal_pb2

    history, config = [], {}
    for data in wandb_records(offline.read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        if record.HasField("history"):
            history.append({item.key or ".".join(item.nested_key): json.loads(item.value_json)
                            for item in record.history.item})
        if record.HasField("config"):
            config.update({item.key: json.loads(item.value_json) for item in record.config.update})
    assert [row["_step"] for row in history if "loss" in row] == [1, 2]
    assert config["train.steps"] == 2 and config["method"] == "opsd"


def wandb_records(data: bytes) -> list[bytes]:
    """The protobuf records of a ``.wandb`` file: a 7-byte header (":W&B", magic, version), then LevelDB's log
    format (32 KiB blocks of records, each a 7-byte header of checksum, length and type: 1 whole, 2 first,
    3 middle, 4 last part), as wandb writes it; wandb has no reader of its own in Python any more."""
    assert data[:4] == b":W&B"
    records, parts, position = [], b"", 7
    while position + 7 <= len(data):
        block_left = 32768 - position % 32768
        if block_left < 7:  # a block's tail too short for a header is padding
            position += block_left
            continue
        length, kind = int.from_bytes(data[position + 4:position + 6], "little"), data[position + 6]
        payload = data[position + 7:position + 7 + length]
        position += 7 + length
        if kind == 0 and length == 0:
            continue
        parts = payload if kind in (1, 2) else parts + payload
        if kind in (1, 4):
            records.append(parts)
    return records


def test_trackio_gets_the_metrics_and_the_config(tiny_config, tmp_path, monkeypatch):
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))
    train(tiny_config, tmp_path, "trackio")
    (database,) = (tmp_path / "trackio").glob("*.db")
    with sqlite3.connect(database) as connection:
        rows = connection.execute("SELECT step, metrics FROM metrics WHERE run_name = 'tracked' "
                                  "ORDER BY step").fetchall()
        configs = connection.execute("SELECT config FROM configs WHERE run_name = 'tracked'").fetchall()
    assert [step for step, _ in rows] == [1, 2] and all("loss" in json.loads(metrics) for _, metrics in rows)
    assert json.loads(configs[0][0])["train.steps"] == 2


def test_the_config_is_flattened_to_values_trackers_take():
    flat = flat_config({"train": {"lr": 1e-4, "steps": 2}, "model": {"lora": None, "targets": ["q", "v"]},
                        "method": "opsd", "eval": {"every": 0, "bf16": True}})
    assert flat == {"train.lr": 1e-4, "train.steps": 2, "model.lora": "null", "model.targets": '["q", "v"]',
                    "method": "opsd", "eval.every": 0, "eval.bf16": True}
