"""Data-parallel training under Horovod: one Trainer per rank, driven by `python -m pipelines.deep.worker`.

Keras 3 does not work with `horovod.tensorflow.keras`, so the step is a `tf.function` with
`hvd.DistributedGradientTape` over the models' underlying tf.Variables (see docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.deep import checkpoint, feed
from pipelines.deep.augment import augmenter, mean_over_views
from pipelines.deep.board import Board
from pipelines.deep.models import build, network
from pipelines.deep.shards import TensorShards
from pipelines.deep.stage import DeepStage


def learning_rate(stage: DeepStage, size: int, step: int, steps_per_epoch: int) -> float:
    """Scaled rate (x ranks) reached by linear warm-up from the single-rank rate, then the schedule."""
    target = stage.learning_rate * (size if stage.scale_lr else 1)
    warm = int(stage.warmup_epochs * steps_per_epoch)
    if step < warm:
        start = stage.learning_rate
        return start + (target - start) * step / warm
    total = max(1, stage.epochs * steps_per_epoch - warm)
    progress = min(1.0, (step - warm) / total)
    if stage.schedule == "cosine":
        return target * 0.5 * (1.0 + math.cos(math.pi * progress))
    if stage.schedule == "step":
        return target * (0.1 ** (int(progress >= 0.5) + int(progress >= 0.75)))
    if stage.schedule == "exponential":  # the seeds' MLP: floor + (rate - floor) * exp(-step / decay_steps)
        floor = stage.min_learning_rate
        return floor + (target - floor) * math.exp(-(step - warm) / stage.decay_steps)
    return target


def _optimizer(stage: DeepStage) -> Any:
    import keras

    kinds = {
        "adam": lambda: (
            keras.optimizers.AdamW(stage.learning_rate, weight_decay=stage.weight_decay)
            if stage.weight_decay
            else keras.optimizers.Adam(stage.learning_rate)
        ),
        "sgd": lambda: keras.optimizers.SGD(stage.learning_rate),
        "momentum": lambda: keras.optimizers.SGD(stage.learning_rate, momentum=0.9, nesterov=True),
        "rmsprop": lambda: keras.optimizers.RMSprop(stage.learning_rate),
        "adadelta": lambda: keras.optimizers.Adadelta(stage.learning_rate, rho=0.95, epsilon=1e-7),
    }
    return kinds[stage.optimizer]()


def configure_devices(hvd: Any, threads: int | None) -> str:
    """One GPU per local rank when GPUs exist (memory growth on); else CPU threads split among local ranks."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        for gpu in gpus:
            tf.config.experimental.set_memory_growth(gpu, True)
        tf.config.set_visible_devices(gpus[hvd.local_rank() % len(gpus)], "GPU")
        return f"GPU {hvd.local_rank() % len(gpus)}"
    given = os.environ.get("PIPELINES_RANK_THREADS")  # the cores a Spark task or Dask worker holds for this rank
    cores = threads or (int(given) if given else max(1, (os.cpu_count() or 1) // hvd.local_size()))
    tf.config.threading.set_intra_op_parallelism_threads(cores)
    tf.config.threading.set_inter_op_parallelism_threads(2)
    return f"CPU x{cores}"


def broadcast_json(hvd: Any, obj: Any, root: int = 0) -> Any:
    """Send a JSON value from root to every rank as bytes (no pickle, unlike hvd.broadcast_object)."""
    import json

    import tensorflow as tf

    data = np.frombuffer(json.dumps(obj).encode(), dtype=np.uint8) if hvd.rank() == root else np.zeros(0, np.uint8)
    length = int(hvd.broadcast(tf.constant([len(data)], tf.int64), root, name="json_len").numpy()[0])
    payload = data if hvd.rank() == root else np.zeros(length, np.uint8)
    out = hvd.broadcast(tf.constant(payload), root, name="json_data").numpy()
    return json.loads(out.tobytes().decode())


def allreduce_sum(hvd: Any, values: np.ndarray, name: str) -> np.ndarray:
    """Sum a float64 array across ranks."""
    import tensorflow as tf

    return hvd.allreduce(tf.constant(values, tf.float64), op=hvd.Sum, name=name).numpy()


@dataclass
class Epoch:
    """One epoch's averaged metrics."""

    epoch: int
    values: dict[str, float]


class Trainer:
    """One rank's model, optimizer, data share and loop; rank 0 also checkpoints and writes outputs and events."""

    def __init__(
        self,
        stage: DeepStage,
        tensors: str,
        checkpoints: str,
        transfer_model: str | None,
        hvd: Any,
        tensorboard: str | None = None,
    ):
        import keras
        import tensorflow as tf

        self.stage, self.hvd = stage, hvd
        self.rank, self.size = hvd.rank(), hvd.size()
        self.device = configure_devices(hvd, stage.threads_per_rank)
        self.shards = TensorShards(tensors, verify=False)  # the stage verified them before launch; open() checks shapes
        splits = self.shards.splits()
        self.train = self.shards.open("train", stage.cache_mb)
        self.val = self.shards.open("val", stage.cache_mb) if "val" in splits else None
        self.test = self.shards.open("test", stage.cache_mb) if "test" in splits else None
        self.network = network(stage.model)
        self.task = self.network.task
        self.checkpoints = Path(checkpoints)
        self.board = Board(tensorboard if self.rank == 0 else None, stage.tensorboard_every_steps)
        if stage.mixed_precision:
            keras.mixed_precision.set_global_policy("mixed_bfloat16")
        keras.utils.set_random_seed(stage.seed)
        params = stage.transfer.model_dump(exclude={"source"}) if stage.transfer is not None else stage.params
        shape, classes = self.shards.sample_shape, self.shards.classes
        self.model = build(stage.model, shape, classes, params, transfer_model, stage.code, stage.output_name)
        self.optimizer = _optimizer(stage)
        self.optimizer.build(self.model.trainable_variables)
        if self.task == "classify":
            self.loss_fn = keras.losses.SparseCategoricalCrossentropy()
        else:
            self.loss_fn = keras.losses.MeanSquaredError()
        images = len(self.shards.sample_shape) >= 2
        self.augment = augmenter(stage.augment, stage.seed + 10 * self.rank) if images else None
        self.noise_rng = tf.random.Generator.from_seed(stage.seed * 1000 + self.rank)
        self.steps = feed.steps_per_epoch(self.train.rows, stage.batch_size, self.size)
        self.state: dict[str, Any] = {"epoch": 0, "history": [], "best_val_loss": None, "wait": 0, "resumed_from": None}
        self.best_weights: list[np.ndarray] | None = None
        self._train_step = self._make_step(distributed=True)
        self._eval_step = tf.function(self._evaluate_batch, reduce_retracing=True, autograph=False)  # Python ifs only

    # --- steps -----------------------------------------------------------------------------------------

    def _inputs(self, x: Any, training: bool) -> tuple[Any, Any]:
        """Model input and reconstruction target (noisy input for the denoising autoencoder)."""
        import tensorflow as tf

        x = tf.expand_dims(x, -1) if len(self.shards.sample_shape) == 2 else x
        if training and self.augment is not None:
            x = self.augment(x, training=True)
        if self.network.noisy_input:
            noisy = x + self.stage.noise * self.noise_rng.normal(tf.shape(x))
            return tf.clip_by_value(noisy, 0.0, 1.0), x
        return x, x

    def _make_step(self, distributed: bool) -> Any:
        import tensorflow as tf

        hvd = self.hvd
        reconstruct = self.task == "reconstruct"

        @tf.function
        def step(x: Any, y: Any) -> tuple[Any, Any]:
            inputs, target = self._inputs(x, training=True)
            with tf.GradientTape() as tape:
                out = self.model(inputs, training=True)
                loss = self.loss_fn(target if reconstruct else y, out)
                if self.model.losses:
                    loss += tf.add_n(self.model.losses)
            if distributed:
                tape = hvd.DistributedGradientTape(tape)
            grads = tape.gradient(loss, [v.value for v in self.model.trainable_variables])
            self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables, strict=True))
            correct = tf.constant(0, tf.int64) if reconstruct else _correct(out, y)
            return loss, correct

        return step

    def _evaluate_batch(self, x: Any, y: Any, views: bool = False) -> tuple[Any, Any, Any]:
        import tensorflow as tf

        inputs, target = self._inputs(x, training=False)
        if views and self.stage.test_time_augment is not None:
            out = mean_over_views(self.model, self.stage.test_time_augment, inputs)
        else:
            out = self.model(inputs, training=False)
        if self.task == "reconstruct":
            per = tf.reduce_mean(tf.reshape(tf.square(tf.cast(out, tf.float32) - target), [tf.shape(x)[0], -1]), 1)
            return per, out, tf.zeros_like(y)
        per = tf.keras.losses.sparse_categorical_crossentropy(y, out)
        return per, out, tf.argmax(out, axis=1)

    # --- state shared across ranks --------------------------------------------------------------------

    def _sync_variables(self) -> None:
        """Rank 0's model and optimizer variables to every rank."""
        self.hvd.broadcast_variables([v.value for v in self.model.variables + self.optimizer.variables], root_rank=0)

    def _average_statistics(self) -> None:
        """Average non-trained variables (batch-norm moving statistics) so every rank holds the same model."""
        import tensorflow as tf

        for i, v in enumerate(self.model.non_trainable_variables):
            v.assign(self.hvd.allreduce(tf.convert_to_tensor(v.value), op=self.hvd.Average, name=f"stat_{i}"))

    def restore(self) -> int | None:
        """Rank 0 loads the newest checkpoint; every rank gets its variables and loop state. Returns its epoch."""
        found = checkpoint.latest(self.checkpoints) if self.rank == 0 else None
        if found is not None:
            self.model.set_weights(found.weights)
            for v, a in zip(self.optimizer.variables, found.optimizer, strict=True):
                v.assign(a)
            self.state = {**found.state, "resumed_from": found.state["epoch"]}
            self.best_weights = found.best
        self._sync_variables()
        self.state = broadcast_json(self.hvd, self.state)
        self.board.open(fresh=self.state.get("resumed_from") is None)
        return self.state.get("resumed_from")

    # --- loop ------------------------------------------------------------------------------------------

    def evaluate(self, split: Any, want_examples: int = 0, views: bool = False) -> dict[str, Any]:
        """Loss (and accuracy, confusion matrix) of a split, each rank on its share, summed across ranks.

        With `views`, a classifier's outputs are the mean over the stage's test-time views of each image.
        """
        data = feed.eval_dataset(split, self.rank, self.size, max(256, self.stage.batch_size))
        classes = self.shards.classes
        sums = np.zeros(2)
        confusion = np.zeros((classes, classes)) if self.task == "classify" else None
        examples: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        for x, y in data if data is not None else []:
            per, out, pred = self._eval_step(x, y, views)
            per, y_np, pred_np = per.numpy(), y.numpy(), pred.numpy()
            sums += [per.sum(), len(per)]
            if confusion is not None:
                np.add.at(confusion, (y_np, pred_np), 1)
                wrong = np.flatnonzero(pred_np != y_np)
                if len(examples) < want_examples and len(wrong):
                    examples.append((x.numpy()[wrong], pred_np[wrong], y_np[wrong]))
            elif len(examples) < want_examples:
                examples.append((x.numpy(), np.asarray(out).reshape(x.shape), y_np))
        total = allreduce_sum(self.hvd, sums, f"eval_{split.name}")
        result: dict[str, Any] = {"loss": float(total[0] / max(total[1], 1)), "rows": int(total[1])}
        if confusion is not None:
            matrix = allreduce_sum(self.hvd, confusion.ravel(), f"confusion_{split.name}").reshape(classes, classes)
            result["accuracy"] = float(np.trace(matrix) / max(matrix.sum(), 1))
            result["confusion"] = matrix.astype(int).tolist()
        result["examples"] = examples
        return result

    def run_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over this rank's share; returns metrics averaged over all ranks' rows."""
        sums = np.zeros(3)
        t0 = time.perf_counter()
        step0 = epoch * self.steps
        for i, (x, y) in enumerate(
            feed.train_dataset(self.train, self.rank, self.size, self.stage.batch_size, epoch, self.stage.seed)
        ):
            rate = learning_rate(self.stage, self.size, step0 + i, self.steps)
            self.optimizer.learning_rate.assign(rate)
            loss, correct = self._train_step(x, y)
            if self.board.wants_step(step0 + i + 1):  # every rank: the mean over ranks is a collective
                mean = self.hvd.allreduce(loss, op=self.hvd.Average, name="step_loss")
                self.board.step(step0 + i + 1, float(mean), rate)
            n = int(x.shape[0])
            sums += [float(loss) * n, int(correct), n]
        seconds = time.perf_counter() - t0
        if self.model.non_trainable_variables:
            self._average_statistics()
        total = allreduce_sum(self.hvd, sums, "epoch_metrics")
        values = {"loss": total[0] / total[2], "seconds": seconds, "samples_per_s": total[2] / seconds}
        if self.task == "classify":
            values["accuracy"] = total[1] / total[2]
        values["lr"] = float(np.asarray(self.optimizer.learning_rate))
        return values

    def fit(self, log: Any = print) -> dict[str, Any]:
        """Train from the restored state to the last epoch or early stop; returns the loop state."""
        stage = self.stage
        start = self.state["epoch"]
        for epoch in range(start, stage.epochs):
            values = self.run_epoch(epoch)
            if self.val is not None:
                val = self.evaluate(self.val)
                values["val_loss"] = val["loss"]
                if "accuracy" in val:
                    values["val_accuracy"] = val["accuracy"]
            self.state["epoch"] = epoch + 1
            self.state["history"].append({"epoch": epoch + 1, **{k: float(v) for k, v in values.items()}})
            stop = self._early_stopping(values)
            if self.rank == 0:
                log(_progress(epoch + 1, stage.epochs, values))
                self._checkpoint()
                self.board.epoch(epoch + 1, self.state["history"][-1])
            if stop:
                if self.rank == 0:
                    log(f"early stop: val_loss has not improved for {stage.early_stopping_patience} epochs")
                break
        if self.state.get("best_epoch") is not None:  # the same on every rank: all join the broadcast
            if self.best_weights is not None:
                self.model.set_weights(self.best_weights)
            self._sync_variables()
        return self.state

    def _early_stopping(self, values: dict[str, float]) -> bool:
        if "val_loss" not in values or self.stage.early_stopping_patience is None:
            return False
        best = self.state["best_val_loss"]
        if best is None or values["val_loss"] < best:
            self.state.update(best_val_loss=values["val_loss"], wait=0, best_epoch=self.state["epoch"])
            self.best_weights = self.model.get_weights()
            return False
        self.state["wait"] += 1
        return self.state["wait"] >= self.stage.early_stopping_patience

    def _checkpoint(self) -> None:
        ckpt = checkpoint.Checkpoint(
            self.model.get_weights(),
            [np.asarray(v) for v in self.optimizer.variables],
            self.state,
            self.best_weights,
        )
        checkpoint.save(self.checkpoints, self.state["epoch"], ckpt, self.stage.keep_checkpoints)

    def weight_divergence(self) -> float:
        """Largest |w - w_rank0| over all model variables and ranks (0.0 when ranks agree exactly)."""
        import tensorflow as tf

        worst = 0.0
        for i, v in enumerate(self.model.variables):
            mine = tf.convert_to_tensor(v.value)
            root = self.hvd.broadcast(mine, root_rank=0, name=f"check_{i}")
            worst = max(worst, float(tf.reduce_max(tf.abs(tf.cast(mine, tf.float64) - tf.cast(root, tf.float64)))))
        return float(self.hvd.allreduce(tf.constant(worst, tf.float64), op=self.hvd.Max, name="check_max").numpy())

    def time_steps(self, steps: int) -> dict[str, float]:
        """Mean seconds per training step with and without the gradient allreduce (same batches)."""
        import tensorflow as tf

        local = self._make_step(distributed=False)
        x, y = next(iter(feed.train_dataset(self.train, self.rank, self.size, self.stage.batch_size, 0, 0)))
        out = {}
        for name, fn in (("distributed", self._train_step), ("local", local)):
            fn(x, y)
            self.hvd.allreduce(tf.constant(0.0), name=f"barrier_{name}")
            t0 = time.perf_counter()
            for _ in range(steps):
                loss, _ = fn(x, y)
            float(loss)
            out[name] = (time.perf_counter() - t0) / steps
        self._sync_variables()
        return out


def _correct(out: Any, y: Any) -> Any:
    import tensorflow as tf

    return tf.reduce_sum(tf.cast(tf.equal(tf.argmax(out, axis=1), y), tf.int64))


def _progress(epoch: int, epochs: int, values: dict[str, float]) -> str:
    shown = " ".join(
        f"{k}={values[k]:.4f}" for k in ("loss", "accuracy", "val_loss", "val_accuracy", "lr") if k in values
    )
    return f"epoch {epoch}/{epochs} {shown} {values['seconds']:.1f}s {values['samples_per_s']:.0f} samples/s"
