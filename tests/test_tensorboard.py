"""TensorBoard event files of a deep stage, written by rank 0 of real Horovod ranks, read back with TensorBoard."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from helpers import digits_config

from pipelines.config import parse_config
from pipelines.deep.board import EPOCH_TAGS
from pipelines.pipeline import run_pipeline


def _events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"tensors": 0, "scalars": 0, "images": 0})
    acc.Reload()
    return acc


def _values(acc, tag: str) -> dict[int, float]:
    from tensorboard.util.tensor_util import make_ndarray

    return {e.step: float(make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)}


@pytest.mark.slow
def test_two_ranks_write_one_set_of_events_equal_to_the_recorded_history(dask_engine, tmp_path):
    from PIL import Image

    every = 5
    stage = {"stage": "deep", "model": "mnist_cnn", "epochs": 2, "batch_size": 32, "ranks": 2}
    config = parse_config(digits_config(tmp_path, {**stage, "tensorboard_every_steps": every}))
    run, _ = run_pipeline(config, engine=dask_engine)
    history = json.loads((run.dir / "metrics.json").read_text())["mnist_cnn"]["history"]
    results = json.loads((run.dir / "deep" / "mnist_cnn" / "results.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    board = run.dir / "tensorboard" / "mnist_cnn"
    assert sorted(p.name for p in board.iterdir()) == ["train", "validation"]
    for split in ("train", "validation"):  # rank 0 only: one events file per writer
        assert len(list((board / split).glob("events.out.tfevents.*"))) == 1, split
    accs = {split: _events(board / split) for split in ("train", "validation")}
    for key, (split, tag) in EPOCH_TAGS.items():  # every per-epoch value equals the history (float32 events)
        got = _values(accs[split], tag)
        assert got == {h["epoch"]: float(np.float32(h[key])) for h in history}, (key, tag)
    assert {"loss", "accuracy", "lr", "val_loss", "val_accuracy"} <= set(history[0])
    steps = results["steps_per_epoch"] * 2
    batch = _values(accs["train"], "batch_loss")
    assert sorted(batch) == list(range(every, steps + 1, every))  # the global step, every 5 steps
    assert all(np.isfinite(v) and v > 0 for v in batch.values())
    assert np.mean([batch[s] for s in sorted(batch)[-3:]]) < np.mean([batch[s] for s in sorted(batch)[:3]])
    rates = _values(accs["train"], "batch_learning_rate")
    assert rates[every] < rates[max(rates)]  # linear warm-up over the first epoch
    [image] = accs["train"].Tensors("misclassified")
    meta = accs["train"].SummaryMetadata("misclassified")
    assert meta.plugin_data.plugin_name == "images" and image.step == 2
    blobs = list(image.tensor_proto.string_val)  # width, height, then one PNG per image
    wrong = results["test"]["rows"] - round(results["test"]["accuracy"] * results["test"]["rows"])
    assert blobs[:2] == [b"8", b"8"] and 0 < len(blobs) - 2 <= min(25, wrong)
    assert Image.open(io.BytesIO(blobs[2])).size == (8, 8)
    assert meta.summary_description.startswith("0: predicted ")
