"""Deep stage: shard hand-off from both engines, per-rank shares, and training with real Horovod ranks (Gloo)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import digits_config

from pipelines.config import parse_config
from pipelines.deep import checkpoint, feed
from pipelines.deep.models import check_params
from pipelines.deep.shards import TensorShards
from pipelines.deep.stage import DeepStage
from pipelines.deep.train import learning_rate
from pipelines.errors import ConfigError, DataError
from pipelines.launch.horovod import launch_command
from pipelines.pipeline import run_pipeline

ROOT = Path(__file__).resolve().parent.parent
PIPELINES = str(Path(sys.executable).parent / "pipelines")


def results(run, name: str) -> dict:
    return json.loads((run.dir / "deep" / name / "results.json").read_text())


# --- without Horovod: per-rank shares, learning rate, checkpoints, configs --------------------------------


def test_rank_shares_are_disjoint_equal_and_match_one_rank_with_the_same_global_batch():
    rows, batch = 1003, 16
    shares = [feed.train_rows(rows, r, 2, batch, epoch=3, seed=7) for r in range(2)]
    assert shares[0].shape == shares[1].shape == (rows // 32, batch)  # equal steps on every rank
    assert not set(shares[0].ravel()) & set(shares[1].ravel())
    single = feed.train_rows(rows, 0, 1, 2 * batch, epoch=3, seed=7)
    for step in range(len(single)):  # np=1 step k sees exactly the rows of both ranks' step k
        assert list(single[step]) == list(shares[0][step]) + list(shares[1][step])
    assert not np.array_equal(feed.train_rows(rows, 0, 2, batch, 4, 7), shares[0])  # reshuffled per epoch
    spans = [feed.eval_range(rows, r, 3) for r in range(3)]
    assert spans[0][0] == 0 and spans[-1][1] == rows
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
    with pytest.raises(DataError, match="fewer than one global batch"):
        feed.steps_per_epoch(20, 16, 2)


def test_learning_rate_scales_with_ranks_after_linear_warmup():
    stage = DeepStage(model="softmax", learning_rate=0.01, warmup_epochs=2, epochs=10, schedule="cosine")
    assert learning_rate(stage, 4, 0, 100) == pytest.approx(0.01)  # warm-up starts at the single-rank rate
    assert learning_rate(stage, 4, 100, 100) == pytest.approx(0.025)  # halfway: 0.01 + (0.04 - 0.01) / 2
    assert learning_rate(stage, 4, 200, 100) == pytest.approx(0.04)  # scaled by 4 ranks
    assert learning_rate(stage, 4, 1000, 100) == pytest.approx(0.0, abs=1e-12)  # cosine reaches 0
    step = stage.model_copy(update={"schedule": "step", "warmup_epochs": 0})
    assert [learning_rate(step, 2, s, 10) for s in (0, 50, 80)] == pytest.approx([0.02, 0.002, 0.0002])


def test_checkpoints_are_atomic_keep_the_newest_and_round_trip(tmp_path):
    w = [np.arange(6.0).reshape(2, 3), np.ones(3, "float32")]
    for epoch in range(1, 6):
        checkpoint.save(tmp_path, epoch, checkpoint.Checkpoint(w, [np.array(epoch)], {"epoch": epoch}), keep=2)
    (tmp_path / ".epoch-00009.tmp-dead").mkdir()  # a write that died before its rename is ignored
    assert checkpoint.epochs(tmp_path) == [4, 5]
    found = checkpoint.latest(tmp_path)
    assert found.state == {"epoch": 5} and int(found.optimizer[0]) == 5 and found.best is None
    np.testing.assert_array_equal(found.weights[0], w[0])


def test_deep_stage_params_hosts_and_launch_commands_are_checked():
    """(That validation imports no Keras is checked in a fresh process: test_plan.py.)"""
    check_params("mlp", {"units": [64, 32], "dropout": 0.1})
    with pytest.raises(ValueError, match="unknown \\['unitz'\\]"):
        check_params("mlp", {"unitz": [1]})
    bad = {"stage": "deep", "model": "transfer"}
    with pytest.raises(ConfigError, match="needs a 'transfer' section"):
        parse_config(digits_config(Path("/tmp"), bad))
    stage = DeepStage(model="lenet5", ranks=4, hosts="node1:2,node2:2")
    assert stage.launcher == "auto"  # resolved by the engine: horovodrun on a local engine
    argv = launch_command("horovodrun", stage.ranks, stage.hosts, ["worker", "spec.json"])
    assert argv[1:5] == ["-np", "4", "-H", "node1:2,node2:2"] and "--gloo" in argv
    srun = launch_command("srun", stage.ranks, stage.hosts, ["worker", "spec.json"])
    assert srun[:2] == ["srun", "--ntasks=4"]
    with pytest.raises(ConfigError, match="hosts"):
        parse_config(digits_config(Path("/tmp"), {"stage": "deep", "model": "softmax", "hosts": "a;rm -rf /"}))


def test_every_network_builds_for_28x28_and_8x8_images():
    from pipelines.deep.models import NETWORKS, build

    built = 0
    for kind, network in NETWORKS.items():
        if network.from_base:
            continue  # transfer networks are built on a saved model: test_horovod_transfer_learning_...
        for shape in ((28, 28), (8, 8)):
            model = build(kind, shape, 10, {})
            want = (None, *shape, 1) if network.task == "reconstruct" else (None, 10)
            assert tuple(model.output_shape) == want, (kind, shape)
            built += 1
    assert built == 2 * (len(NETWORKS) - 1)


# --- the hand-off: shards from either engine --------------------------------------------------------------


def _data(run, state):
    return state["ingest"].training_data(run.manifest["outputs"], "softmax")


def _handoff(engine, tmp_path: Path, **stage) -> tuple[object, Path]:
    from pipelines.config import PipelineConfig
    from pipelines.deep.stage import hand_off

    config = PipelineConfig.model_validate(digits_config(tmp_path, engine=engine.kind))
    run, state = run_pipeline(config, engine=engine)
    return run, hand_off(engine, DeepStage(model="softmax", **stage), run, _data(run, state)).dir


def test_shards_from_spark_and_dask_are_identical_and_hold_the_ingested_pixels(dask_engine, spark_engine, tmp_path):
    from pipelines.data.bundled import resolve_path
    from pipelines.ingest import readers, sources

    _, from_dask = _handoff(dask_engine, tmp_path / "d")
    _, from_spark = _handoff(spark_engine, tmp_path / "s")
    a, b = TensorShards(from_dask), TensorShards(from_spark)
    assert a.manifest["splits"] == b.manifest["splits"]  # same shards, rows and SHA-256 from both engines
    assert sum(a.manifest["splits"][s]["rows"] for s in ("train", "val", "test")) == 1797
    train = a.open("train")
    x, y = train.range(0, train.rows)
    assert x.dtype == np.float32 and x.shape == (train.rows, 8, 8) and y.dtype == np.int64
    images = sources.index_idx_file(resolve_path("bundled:digits/images"))
    labels = sources.index_idx_file(resolve_path("bundled:digits/labels"))
    raw, want = readers.read_image_segment(
        sources.Segment(images, 0, 1797), sources.Segment(labels, 0, 1797), "idx", ("x", "y")
    )
    lookup = {r.tobytes(): int(t) for r, t in zip((raw / 255.0).astype("float32").reshape(1797, -1), want, strict=True)}
    assert all(lookup[row.tobytes()] == label for row, label in zip(x.reshape(len(x), -1), y, strict=True))
    picked, picked_y = train.take(np.array([5, 0, train.rows - 1]))  # random access keeps the asked order
    np.testing.assert_array_equal(picked, x[[5, 0, train.rows - 1]])
    np.testing.assert_array_equal(picked_y, y[[5, 0, train.rows - 1]])


def test_class_filter_renumbers_and_a_missing_or_corrupt_shard_is_named(dask_engine, tmp_path):
    _, tensors = _handoff(dask_engine, tmp_path, classes=[7, 3])
    shards = TensorShards(tensors)
    assert shards.classes == 2 and tensors.name == "classes-7-3"
    _, y = shards.open("train").range(0, shards.open("train").rows)
    assert set(np.unique(y)) == {0, 1} and 200 < len(y) < 300  # about 2/10 of 1,257 training rows
    first = tensors / shards.manifest["splits"]["train"]["shards"][0]["x"]["file"]
    data = bytearray(first.read_bytes())
    data[-1] ^= 0xFF
    first.write_bytes(bytes(data))
    with pytest.raises(DataError, match=f"{first.name}: shard is corrupt"):
        TensorShards(tensors)
    first.unlink()
    with pytest.raises(DataError, match=f"{first.name}: shard listed in .* is missing"):
        TensorShards(tensors)


# --- real Horovod ranks (horovodrun -np N --gloo) -----------------------------------------------------------


@pytest.mark.slow
def test_horovod_two_ranks_train_a_cnn_to_identical_weights_and_write_outputs(dask_engine, tmp_path):
    import keras

    stage = {"stage": "deep", "model": "mnist_cnn", "epochs": 4, "batch_size": 32, "ranks": 2}
    stage["test_time_augment"] = {"shift": 1}  # digits: no mirrored views
    config = parse_config(digits_config(tmp_path, stage))
    run, state = run_pipeline(config, engine=dask_engine)
    res = results(run, "mnist_cnn")
    assert res["ranks"] == 2 and res["epochs_run"] == 4 and res["global_batch"] == 64
    assert res["rank_weight_max_abs_diff"] == 0.0  # broadcast + averaged gradients: ranks hold the same model
    losses = [h["loss"] for h in res["history"]]
    assert losses[-1] < 0.5 * losses[0]
    test_rows = state["ingest"].splits["test"]
    assert res["test"]["accuracy"] > 0.85 and res["test"]["rows"] == test_rows
    assert np.sum(res["test"]["confusion_matrix"]["counts"]) == test_rows
    out = run.dir / "deep" / "mnist_cnn"
    assert {"model.keras", "curves.png", "confusion.png", "misclassified.png"} <= {p.name for p in out.iterdir()}
    assert "deep/mnist_cnn" in run.manifest["outputs"] and run.manifest["status"] == "succeeded"
    metrics = json.loads((run.dir / "metrics.json").read_text())
    assert metrics["mnist_cnn"]["test"]["accuracy"] == res["test"]["accuracy"]
    model = keras.saving.load_model(out / "model.keras", safe_mode=True)
    x, y = TensorShards(run.dir / "tensors" / "all").open("test").range(0, test_rows)
    acc = float(np.mean(np.argmax(model.predict(x[..., None], verbose=0), 1) == y))
    assert acc == pytest.approx(res["test"]["single_view_accuracy"], abs=1e-9)  # the saved model is the evaluated one
    padded = np.pad(x[..., None], ((0, 0), (1, 1), (1, 1), (0, 0)))
    views = [padded[:, 1 - dy : 9 - dy, 1 - dx : 9 - dx] for dy, dx in ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1))]
    mean = np.mean([model.predict(v, verbose=0) for v in views], axis=0)
    # the reported accuracy averages the five views' probabilities (at most one borderline row may round apart)
    assert float(np.mean(np.argmax(mean, 1) == y)) == pytest.approx(res["test"]["accuracy"], abs=1.01 / test_rows)
    assert checkpoint.epochs(run.dir / "checkpoints" / "mnist_cnn") == [2, 3, 4]  # rank 0 kept the newest 3


@pytest.mark.slow
def test_horovod_one_and_two_ranks_with_the_same_global_batch_reach_the_same_weights(dask_engine, tmp_path):
    import keras

    common = {"stage": "deep", "model": "softmax", "epochs": 3, "warmup_epochs": 0, "optimizer": "sgd"}
    one = parse_config(digits_config(tmp_path / "1", {**common, "ranks": 1, "batch_size": 64, "learning_rate": 0.2}))
    two = parse_config(digits_config(tmp_path / "2", {**common, "ranks": 2, "batch_size": 32, "learning_rate": 0.1}))
    weights = []
    for config in (one, two):  # scale_lr: 0.1 x 2 ranks = 0.2, the single rank's rate
        run, _ = run_pipeline(config, engine=dask_engine)
        weights.append(keras.saving.load_model(run.dir / "deep" / "softmax" / "model.keras").get_weights())
    for a, b in zip(*weights, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)  # float32 sums in another order; 3 x 19 steps


@pytest.mark.slow
def test_horovod_training_from_spark_and_dask_shards_gives_the_same_model(dask_engine, spark_engine, tmp_path):
    import keras

    stage = {"stage": "deep", "model": "lenet5", "epochs": 2, "batch_size": 32, "ranks": 2}
    weights = []
    for engine in (spark_engine, dask_engine):
        config = parse_config(digits_config(tmp_path / engine.kind, stage, engine=engine.kind))
        run, _ = run_pipeline(config, engine=engine)
        assert run.manifest["stages"][1]["status"] == "succeeded"
        weights.append(keras.saving.load_model(run.dir / "deep" / "lenet5" / "model.keras").get_weights())
    for a, b in zip(*weights, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_horovod_rank_killed_mid_run_then_resume_finishes_from_the_checkpoint(tmp_path):
    stage = {"stage": "deep", "model": "mlp", "epochs": 40, "batch_size": 16, "ranks": 2, "keep_checkpoints": 2}
    conf = tmp_path / "conf.yaml"
    conf.write_text(json.dumps(digits_config(tmp_path, stage)))  # JSON is YAML
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([PIPELINES, "train", str(conf), "--np", "2"], cwd=ROOT, env=env, stderr=subprocess.PIPE)
    runs = tmp_path / "runs" / "digits-deep"
    deadline = time.time() + 240
    killed = None
    while time.time() < deadline and proc.poll() is None:
        ckpts = list(runs.glob("*/checkpoints/mlp"))
        if ckpts and len(checkpoint.epochs(ckpts[0])) and checkpoint.epochs(ckpts[0])[-1] >= 3:
            pid = int((ckpts[0] / "pids" / "rank-1.pid").read_text())
            os.kill(pid, signal.SIGKILL)
            killed = checkpoint.epochs(ckpts[0])[-1]
            break
        time.sleep(0.05)
    assert killed is not None, "training never reached epoch 3"
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0, "the run went on although a rank died"
    run_dir = next(runs.glob("2*"))
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "failed" and not (run_dir / "deep" / "mlp").exists()
    assert killed < 40
    done = subprocess.run([PIPELINES, "train", "--resume", str(run_dir)], cwd=ROOT, env=env, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    res = json.loads((run_dir / "deep" / "mlp" / "results.json").read_text())
    assert res["resumed_from"] >= killed and res["epochs_run"] == 40
    assert [h["epoch"] for h in res["history"]] == list(range(1, 41))  # history continues, no epoch twice
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "succeeded" and len(manifest["resumed"]) == 1
    assert res["test"]["accuracy"] > 0.8
    assert os.path.realpath(runs / "latest") == str(run_dir.resolve())


@pytest.mark.slow
def test_horovod_transfer_learning_and_denoising_autoencoder(dask_engine, tmp_path):
    import keras

    stages = [
        {"stage": "deep", "name": "base", "model": "mnist_cnn", "classes": [0, 1, 2, 3, 4], "epochs": 6},
        {
            "stage": "deep",
            "name": "head",
            "model": "transfer",
            "classes": [5, 6, 7, 8, 9],
            "epochs": 10,
            "transfer": {"source": "stage:base", "mode": "features"},
        },
        {
            "stage": "deep",
            "name": "tune",
            "model": "transfer",
            "classes": [5, 6, 7, 8, 9],
            "epochs": 2,
            "transfer": {"source": "stage:base", "mode": "finetune", "trainable_layers": 1},
        },
        {"stage": "deep", "name": "dae", "model": "denoising_autoencoder", "epochs": 8, "noise": 0.2},
    ]
    config = parse_config(digits_config(tmp_path, *[{**s, "batch_size": 32, "ranks": 2} for s in stages]))
    run, state = run_pipeline(config, engine=dask_engine)
    base, head = results(run, "base"), results(run, "head")
    assert base["test"]["accuracy"] > 0.9 and head["test"]["accuracy"] > 0.8
    source = keras.saving.load_model(run.dir / "deep" / "base" / "model.keras")
    moved = keras.saving.load_model(run.dir / "deep" / "head" / "model.keras").get_layer("base")
    for a, b in zip(moved.get_weights(), source.get_weights()[: len(moved.get_weights())], strict=True):
        np.testing.assert_array_equal(a, b)  # feature extraction: the transferred layers did not train
    tuned = keras.saving.load_model(run.dir / "deep" / "tune" / "model.keras").get_layer("base").get_weights()
    changed = [not np.array_equal(a, b) for a, b in zip(tuned, source.get_weights()[: len(tuned)], strict=True)]
    assert changed == [False] * (len(tuned) - 2) + [True, True]  # finetune: only the top layer (kernel, bias)
    dae = results(run, "dae")
    x, _ = TensorShards(run.dir / "tensors" / "all").open("test").range(0, state["ingest"].splits["test"])
    mean_image_mse = float(np.mean((x - x.mean(axis=0)) ** 2))
    assert dae["test"]["loss"] < 0.6 * mean_image_mse  # it reconstructs better than the mean image
    assert (run.dir / "deep" / "dae" / "reconstructions.png").exists()


@pytest.mark.slow
def test_horovod_early_stopping_restores_the_best_epoch_and_mixed_precision_trains(dask_engine, tmp_path):
    stages = [
        {"stage": "deep", "name": "stop", "model": "mlp", "epochs": 60, "early_stopping_patience": 2},
        {"stage": "deep", "name": "bf16", "model": "mnist_cnn", "epochs": 3, "mixed_precision": True},
    ]
    config = parse_config(digits_config(tmp_path, *[{**s, "batch_size": 16, "ranks": 2} for s in stages]))
    run, _ = run_pipeline(config, engine=dask_engine)
    res = results(run, "stop")
    history = res["history"]
    assert res["epochs_run"] < 60 and len(history) == res["epochs_run"]
    best = min(history, key=lambda h: h["val_loss"])
    assert res["best_epoch"] == best["epoch"] and res["epochs_run"] == best["epoch"] + 2
    assert res["val"]["loss"] == pytest.approx(best["val_loss"], rel=1e-5)  # the final model is the best epoch's
    bf16 = results(run, "bf16")
    assert bf16["history"][-1]["loss"] < 0.5 * bf16["history"][0]["loss"] and bf16["test"]["accuracy"] > 0.8
