"""Configurable seed networks (mlp, cnn and its presets), lstm/gru, and user-defined networks with custom layers."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipelines.config import load_config, parse_config
from pipelines.deep import checkpoint
from pipelines.deep.models import build, check_params
from pipelines.errors import ConfigError

UNIT = {"image_scale": "unit"}
ROOT = Path(__file__).resolve().parent.parent
PIPELINES = str(Path(sys.executable).parent / "pipelines")

USER_NET = '''
"""A user's own network with one custom layer, registered for Keras' safe_mode loading."""
import keras
from keras import layers


@keras.saving.register_keras_serializable(package="mynet")
class Gain(layers.Layer):
    """Multiply each feature by a learned gain (starting at `start`)."""

    def __init__(self, start=1.0, **kwargs):
        super().__init__(**kwargs)
        self.start = start

    def build(self, input_shape):
        self.gain = self.add_weight(shape=(input_shape[-1],), initializer=keras.initializers.Constant(self.start))

    def call(self, x):
        return x * self.gain

    def get_config(self):
        return {**super().get_config(), "start": self.start}


def build(shape, classes, units: int = 32, start: float = 1.0):
    inputs = keras.Input(shape)
    x = layers.Dense(units, activation="relu")(layers.Flatten()(inputs))
    x = Gain(start)(x)
    return keras.Model(inputs, layers.Dense(classes, activation="softmax")(x), name="mynet")
'''


def digits(tmp_path: Path, *stages: dict) -> dict:
    """Digits (1,797 8x8 images) split 70/10/20, then the given stages."""
    return {
        "name": "digits-nets",
        "runs_dir": str(tmp_path / "runs"),
        "engine": {"kind": "dask", "partitions": 3},
        "dataset": {
            "name": "digits",
            "format": "idx",
            "path": "bundled:digits/images",
            "labels_path": "bundled:digits/labels",
            "image": {"shape": [8, 8], "classes": 10},
        },
        "stages": [
            {"stage": "ingest", "split": {"test_fraction": 0.2, "val_fraction": 0.1, "seed": 42}, **UNIT},
            *stages,
        ],
    }


# --- the zoo: presets of the cnn builder keep their published counts ---------------------------------------


def test_presets_have_their_published_parameter_counts():
    counts = {k: build(k, (28, 28), 10, {}).count_params() for k in ("mnist_cnn", "keras_mnist_cnn", "sdsc_cnn")}
    # ours (conv32-conv32-dense256), Keras' mnist_cnn example, the SDSC course's one-conv CNN
    assert counts == {"mnist_cnn": 1_192_042, "keras_mnist_cnn": 1_199_882, "sdsc_cnn": 87_050}
    # the networks as they were before they became presets of `cnn`
    assert build("lenet5", (28, 28), 10, {}).count_params() == 61_706
    assert build("lenet5", (8, 8), 10, {}).count_params() == 21_386
    assert build("fashion_cnn", (28, 28), 10, {}).count_params() == 871_978
    assert build("mlp", (28, 28), 10, {}).count_params() == 185_300
    # the same networks written out with the general builder
    sdsc = build("cnn", (28, 28), 10, {"filters": 16, "padding": "valid", "dense": 32})
    assert sdsc.count_params() == 87_050
    keras_cnn = {"filters": [32, 64], "padding": "valid", "pool_every": 2, "dropout": 0.25, "dense": 128}
    assert build("cnn", (28, 28), 10, {**keras_cnn, "dense_dropout": 0.5}).count_params() == 1_199_882


def test_cnn_builds_what_its_params_say():
    model = build(
        "cnn",
        (28, 28),
        10,
        {
            "filters": 8,
            "conv_layers": 3,
            "kernel_size": [5, 3, 3],
            "strides": [1, 1, 2],
            "padding": "same",
            "pool": "average",
            "pool_every": 2,
            "batch_norm": True,
            "dropout": 0.1,
            "dense": [64, 32],
            "dense_activation": "tanh",
            "dense_dropout": 0.2,
        },
    )
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds.count("Conv2D") == 3 and kinds.count("AveragePooling2D") == 2  # after conv 2 and after the last
    assert kinds.count("BatchNormalization") == 3 and kinds.count("Dropout") == 4
    convs = [layer for layer in model.layers if type(layer).__name__ == "Conv2D"]
    assert [c.kernel_size for c in convs] == [(5, 5), (3, 3), (3, 3)] and convs[2].strides == (2, 2)
    assert all(not c.use_bias for c in convs)  # batch norm supplies the shift
    # 28 -> pool 14 -> stride 2: 7 -> pool 3: 3x3x8 = 72 features into dense 64
    dense = [layer for layer in model.layers if type(layer).__name__ == "Dense"]
    assert [d.kernel.shape for d in dense] == [(72, 64), (64, 32), (32, 10)]
    assert dense[0].activation.__name__ == "tanh" and model.output_shape == (None, 10)
    with pytest.raises(ValueError, match="conv layer 4 gets a 2x2 map, smaller than its kernel 3"):
        build("cnn", (8, 8), 10, {"filters": [8, 8, 8, 8], "padding": "valid", "pool": "none"})
    with pytest.raises(ValueError, match="kernel_size has 2 entries for 3 conv layers"):
        build("cnn", (28, 28), 10, {"filters": [8, 8, 8], "kernel_size": [3, 3]})


def test_mlp_activation_is_a_checked_parameter():
    for activation in ("relu", "sigmoid", "tanh", "elu", "selu", "gelu"):
        model = build("mlp", (8, 8), 10, {"activation": activation, "units": [16, 8]})
        assert {layer.activation.__name__ for layer in model.layers[2:-1] if hasattr(layer, "activation")} == {
            activation
        }
    with pytest.raises(ValueError, match="activation: Input should be 'relu'.*got 'swish'"):
        check_params("mlp", {"activation": "swish"})
    with pytest.raises(ValueError, match="params for cnn: filters: .*got 'x'"):
        check_params("cnn", {"filters": "x"})
    stage = {"stage": "deep", "model": "mlp", "params": {"activation": "sigmoidal"}}
    with pytest.raises(ConfigError, match=r"stages\[1\]: params: params for mlp: activation"):
        parse_config(digits(Path("/tmp"), stage))


def test_recurrent_networks_read_image_rows_as_time_steps_with_keras_parameter_counts():
    lstm = build("lstm", (28, 28), 10, {"units": 128})
    assert lstm.count_params() == 4 * (128 * (28 + 128) + 128) + (128 * 10 + 10)  # 4 gates over [x, h] + bias
    assert [type(layer).__name__ for layer in lstm.layers][:3] == ["InputLayer", "Reshape", "LSTM"]
    assert lstm.layers[1].output.shape == (None, 28, 28)  # 28 steps of 28 features
    stacked = build("gru", (20, 3), 4, {"units": [16, 8], "bidirectional": True, "dropout": 0.1})
    grus = [layer for layer in stacked.layers if type(layer).__name__ == "Bidirectional"]
    assert len(grus) == 2 and grus[0].output.shape == (None, 20, 32) and stacked.output_shape == (None, 4)
    # Keras' GRU (reset_after): 3 gates x (kernel + recurrent kernel + two biases), both directions
    first = 2 * 3 * (16 * 3 + 16 * 16 + 2 * 16)
    assert sum(int(np.prod(w.shape)) for w in grus[0].weights) == first


# --- user-defined networks ----------------------------------------------------------------------------------


def test_a_user_network_is_checked_against_its_signature_when_the_config_loads(tmp_path):
    (tmp_path / "mynet.py").write_text(USER_NET)
    stage = {"stage": "deep", "model": "mynet:build", "code": "mynet.py", "params": {"units": 8}}
    path = tmp_path / "conf.yaml"
    path.write_text(yaml.safe_dump(digits(tmp_path, stage)))
    config = load_config(path)  # `code:` is beside the config
    assert config.stages[1].code == str(tmp_path / "mynet.py") and config.stages[1].output_name == "mynet.build"
    model = build("mynet:build", (8, 8), 10, {"units": 8}, code=config.stages[1].code)
    assert model.count_params() == (64 * 8 + 8) + 8 + (8 * 10 + 10)
    for params, message in (
        ({"unitz": 8}, r"params for mynet:build: unknown \['unitz'\]; allowed: \['units', 'start'\]"),
        ({"units": "many"}, "params for mynet:build: units: Input should be a valid integer"),
    ):
        path.write_text(yaml.safe_dump(digits(tmp_path, {**stage, "params": params})))
        with pytest.raises(ConfigError, match=message):
            load_config(path)
    path.write_text(yaml.safe_dump(digits(tmp_path, {**stage, "model": "nonet:build"})))
    with pytest.raises(ConfigError, match=r"stages\[1\]: model: cannot import 'nonet'"):
        load_config(path)
    path.write_text(yaml.safe_dump(digits(tmp_path, {**stage, "model": "mlp"})))
    with pytest.raises(ConfigError, match="'code' is for a user network"):
        load_config(path)
    path.write_text(yaml.safe_dump(digits(tmp_path, {**stage, "model": "mlpx"})))
    with pytest.raises(ConfigError, match="unknown network 'mlpx'"):
        load_config(path)


def test_rank_and_trial_specs_import_the_runs_copy_before_their_stage_validates(tmp_path, monkeypatch):
    """The `code:` file is gone (another host, or moved): a rank and a trial read their spec from the run's copy."""
    from pipelines.deep.stage import DeepStage, RankSpec
    from pipelines.deep.usercode import UserCode
    from pipelines.sweep.trial import TrialSpec

    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr("pipelines.deep.usercode._pinned", {})
    copy = tmp_path / "run" / "code" / "mine"
    copy.mkdir(parents=True)
    (copy / "spec_net.py").write_text(USER_NET)  # a module name no other test imports
    gone = str(tmp_path / "gone" / "spec_net.py")
    stage = DeepStage.model_construct(name="mine", model="spec_net:build", code=gone, params={"units": 8})
    code = UserCode(stage="mine", dir=str(copy), checksums={"spec_net.py": "a" * 64})
    RankSpec.model_construct(stage=stage, tensors="t", checkpoints="c", out="o", code=code).write(tmp_path / "r.json")
    fields = {"index": 0, "values": {}, "target": stage, "metric": "val_accuracy", "splits": "s", "code": code}
    TrialSpec.model_construct(**fields).write(tmp_path / "t.json")
    monkeypatch.delitem(sys.modules, "spec_net", raising=False)
    rank = RankSpec.read(tmp_path / "r.json")  # validating the stage imports spec_net: from the pinned copy
    assert rank.code == code and rank.stage.code == gone
    assert Path(sys.modules["spec_net"].__file__).parent == copy
    monkeypatch.delitem(sys.modules, "spec_net")
    trial = TrialSpec.read(tmp_path / "t.json")
    assert trial.code == code and Path(sys.modules["spec_net"].__file__).parent == copy
    other = code.model_copy(update={"checksums": {"spec_net.py": "b" * 64}})
    assert trial.with_digest().digest != trial.model_copy(update={"code": other}).with_digest().digest
    monkeypatch.delitem(sys.modules, "spec_net")
    monkeypatch.setattr("pipelines.deep.usercode._pinned", {})
    with pytest.raises(ValueError, match="user code folder .*gone.* does not exist"):
        DeepStage.model_validate(rank.stage.model_dump())  # unpinned, the stage's check looks for the file


@pytest.mark.slow
def test_lstm_learns_digit_rows_as_time_steps(dask_engine, tmp_path):
    from pipelines.pipeline import run_pipeline

    stage = {"stage": "deep", "model": "lstm", "params": {"units": 64}, "epochs": 12, "batch_size": 32, "ranks": 2}
    run, _ = run_pipeline(parse_config(digits(tmp_path, {**stage, "plots": False})), engine=dask_engine)
    res = json.loads((run.dir / "deep" / "lstm" / "results.json").read_text())
    assert res["rank_weight_max_abs_diff"] == 0.0 and res["params"] == 4 * (64 * (8 + 64) + 64) + 650
    assert res["test"]["accuracy"] > 0.85, res["test"]  # 8 rows of 8 pixels, read one row per step


@pytest.mark.slow
def test_user_network_trains_on_two_ranks_resumes_from_its_copy_sweeps_and_predicts(dask_engine, tmp_path):
    """horovodrun, 2 ranks: identical weights; a killed run resumes with the copied code although the file changed."""
    from pipelines.data.bundled import _digits, idx_bytes
    from pipelines.predict import predict

    (tmp_path / "mynet.py").write_text(USER_NET)
    net = {"model": "mynet:build", "code": "mynet.py", "params": {"units": 32, "start": 0.5}}
    deep = {"stage": "deep", "name": "mine", **net, "epochs": 40, "batch_size": 16, "ranks": 2, "keep_checkpoints": 2}
    sweep = {
        "stage": "sweep",
        "name": "units",
        "target": {"stage": "deep", **net, "epochs": 2, "threads_per_rank": 1, "batch_size": 32},
        "grid": {"params.units": [4, 64]},
        "metric": "val_accuracy",
        "mode": "max",
        "ranks_per_trial": 1,
    }
    conf = tmp_path / "conf.yaml"
    conf.write_text(yaml.safe_dump(digits(tmp_path, {**deep, "plots": False}, sweep)))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([PIPELINES, "train", str(conf)], cwd=ROOT, env=env, stderr=subprocess.PIPE)
    runs = tmp_path / "runs" / "digits-nets"
    deadline, killed = time.time() + 240, None
    while time.time() < deadline and proc.poll() is None:
        ckpts = list(runs.glob("*/checkpoints/mine"))
        if ckpts and checkpoint.epochs(ckpts[0]) and checkpoint.epochs(ckpts[0])[-1] >= 3:
            os.kill(int((ckpts[0] / "pids" / "rank-1.pid").read_text()), signal.SIGKILL)
            killed = checkpoint.epochs(ckpts[0])[-1]
            break
        time.sleep(0.05)
    assert killed is not None, "training never reached epoch 3"
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    run_dir = next(runs.glob("2*"))
    copy = run_dir / "code" / "mine" / "mynet.py"
    assert copy.read_text() == USER_NET
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert set(manifest["outputs"]["code/mine"]) == {"mynet.py"}  # the copy's checksum is recorded
    # the user edits the file: the resumed run, its trials and predict still use the copy the run trained with
    edited = USER_NET.replace("    inputs = keras.Input(shape)", "    raise RuntimeError('edited')")
    (tmp_path / "mynet.py").write_text(edited)
    done = subprocess.run([PIPELINES, "train", "--resume", str(run_dir)], cwd=ROOT, env=env, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    res = json.loads((run_dir / "deep" / "mine" / "results.json").read_text())
    assert res["resumed_from"] >= killed and res["epochs_run"] == 40 and res["ranks"] == 2
    assert res["rank_weight_max_abs_diff"] == 0.0  # the ranks hold the same weights
    assert res["test"]["accuracy"] > 0.85
    trials = json.loads((run_dir / "metrics.json").read_text())["units"]
    assert (run_dir / "code" / "units" / "mynet.py").read_text() == USER_NET
    assert trials, trials
    # predict: the saved model's custom layer loads with safe_mode from the run's copy of the code
    images, labels = _digits()
    (tmp_path / "images.gz").write_bytes(gzip.compress(idx_bytes(images[:200])))
    (tmp_path / "labels.gz").write_bytes(gzip.compress(idx_bytes(labels[:200])))
    out = tmp_path / "predicted"
    data, labelled = str(tmp_path / "images.gz"), str(tmp_path / "labels.gz")
    summary = predict(run_dir, "mine", data, out, engine=dask_engine, labels=labelled)
    assert summary["scored"] == 200 and summary["metrics"]["accuracy"] > 0.85


@pytest.mark.slow
def test_user_network_trains_as_dask_worker_tasks_importing_the_runs_copy(dask_engine, spark_engine, tmp_path):
    """Ranks as Dask tasks; Spark's Python workers score with the saved network, importing the run's copy too."""
    import keras
    import pandas as pd

    from pipelines.data.bundled import _digits, idx_bytes
    from pipelines.deep import usercode
    from pipelines.deep.stage import RankSpec
    from pipelines.deep.usercode import UserCode
    from pipelines.pipeline import run_pipeline
    from pipelines.predict import predict

    (tmp_path / "mynet.py").write_text(USER_NET)
    stage = {"stage": "deep", "name": "mine", "model": "mynet:build", "code": str(tmp_path / "mynet.py")}
    stage.update({"epochs": 3, "batch_size": 32, "ranks": 2, "launcher": "dask", "plots": False})
    run, _ = run_pipeline(parse_config(digits(tmp_path, stage)), engine=dask_engine)
    res = json.loads((run.dir / "deep" / "mine" / "results.json").read_text())
    assert res["launcher"] == "dask" and len({p["worker"] for p in res["placement"]}) == 2
    assert res["rank_weight_max_abs_diff"] == 0.0 and res["test"]["accuracy"] > 0.5
    spec = RankSpec.read(run.dir / "checkpoints" / "mine" / "spec.json")  # pins the run's copy, as a rank does
    checksums = json.loads((run.dir / "manifest.json").read_text())["outputs"]["code/mine"]
    assert spec.code == UserCode(stage="mine", dir=str(run.dir / "code" / "mine"), checksums=checksums)
    assert set(checksums) == {"mynet.py"}
    usercode.load("mynet:build", None, "mine")  # registers the custom layer, as predict does
    model = keras.saving.load_model(run.dir / "deep" / "mine" / "model.keras", safe_mode=True)
    assert type(model.layers[-2]).__name__ == "Gain" and model.layers[-2].start == 1.0
    (tmp_path / "mynet.py").unlink()  # predict needs only the run's copy
    images, labels = _digits()
    (tmp_path / "images.gz").write_bytes(gzip.compress(idx_bytes(images[:100])))
    (tmp_path / "labels.gz").write_bytes(gzip.compress(idx_bytes(labels[:100])))
    out = tmp_path / "predicted"
    summary = predict(
        run.dir, "mine", str(tmp_path / "images.gz"), out, engine=spark_engine, labels=str(tmp_path / "labels.gz")
    )
    assert (summary["engine"], summary["scored"], summary["rejected"]) == ("spark", 100, 0)
    scored = pd.read_parquet(out / "predictions").sort_values("row", ignore_index=True)
    expected = np.asarray(model(images[:100, :, :, None].astype("float32") / 255.0, training=False))  # unit scale
    np.testing.assert_allclose(scored[[f"probability_{c}" for c in range(10)]], expected, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(scored["prediction"], expected.argmax(axis=1))
