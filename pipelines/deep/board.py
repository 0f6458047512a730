"""TensorBoard event files of one deep stage, written by rank 0 with TensorFlow's own `tf.summary` writers.

Layout (as Keras' TensorBoard callback): `<run>/tensorboard/<stage>/train/` holds `epoch_*` scalars (step =
epoch), `batch_loss` and `batch_learning_rate` every N steps (step = global step) and the `misclassified` test
images; `<run>/tensorboard/<stage>/validation/` holds the validation `epoch_*` scalars, so TensorBoard draws
train and validation curves of one tag together.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

# history key -> (writer, tag)
EPOCH_TAGS: dict[str, tuple[str, str]] = {
    "loss": ("train", "epoch_loss"),
    "accuracy": ("train", "epoch_accuracy"),
    "lr": ("train", "epoch_learning_rate"),
    "samples_per_s": ("train", "epoch_samples_per_s"),
    "seconds": ("train", "epoch_seconds"),
    "val_loss": ("validation", "epoch_loss"),
    "val_accuracy": ("validation", "epoch_accuracy"),
}


class Board:
    """Rank 0's summary writers under one stage's TensorBoard folder; every call is a no-op without a folder."""

    def __init__(self, directory: str | Path | None, every_steps: int) -> None:
        self.dir = Path(directory) if directory else None
        self.every_steps = every_steps
        self._writers: dict[str, Any] = {}

    def open(self, fresh: bool) -> None:
        """Start writing; `fresh` (no checkpoint to continue from) drops events of an earlier attempt."""
        if self.dir is not None and fresh and self.dir.exists():
            shutil.rmtree(self.dir)

    def wants_step(self, step: int) -> bool:
        """Whether global step `step` (1-based) is one whose training loss is logged (the same on every rank)."""
        return self.every_steps > 0 and step % self.every_steps == 0

    def _writer(self, name: str) -> Any:
        """The writer of `train` or `validation`, made on first use (no empty events file for a missing split)."""
        import tensorflow as tf

        assert self.dir is not None  # callers return early without a folder

        if name not in self._writers:
            self._writers[name] = tf.summary.create_file_writer(str(self.dir / name))
        return self._writers[name]

    def _scalars(self, writer: str, step: int, values: dict[str, float]) -> None:
        if self.dir is None:
            return
        import tensorflow as tf

        with self._writer(writer).as_default():
            for tag, value in values.items():
                tf.summary.scalar(tag, value, step=step)

    def step(self, step: int, loss: float, learning_rate: float) -> None:
        """Training loss (mean over ranks) and learning rate at a global step."""
        self._scalars("train", step, {"batch_loss": loss, "batch_learning_rate": learning_rate})

    def epoch(self, epoch: int, values: dict[str, float]) -> None:
        """One epoch's history entry: train scalars and validation scalars, then flushed (visible while training)."""
        for writer in ("train", "validation"):
            chosen = {tag: float(values[k]) for k, (w, tag) in EPOCH_TAGS.items() if w == writer and k in values}
            if chosen:
                self._scalars(writer, epoch, chosen)
        self.flush()

    def misclassified(
        self, examples: list[tuple[np.ndarray, np.ndarray, np.ndarray]], names: list[str], step: int, limit: int = 25
    ) -> None:
        """Up to `limit` misclassified test images (gray or color), captioned 'predicted P, label L' in order."""
        if self.dir is None or not examples:
            return
        x = np.concatenate([e[0] for e in examples])[:limit]
        if x.ndim not in (3, 4):
            return  # tabular rows: nothing to draw
        import tensorflow as tf

        images = x[..., None] if x.ndim == 3 else x
        predicted = np.concatenate([e[1] for e in examples])[:limit]
        labels = np.concatenate([e[2] for e in examples])[:limit]
        captions = "; ".join(
            f"{i}: predicted {names[p]}, label {names[t]}"
            for i, (p, t) in enumerate(zip(predicted, labels, strict=True))
        )
        with self._writer("train").as_default():
            data = tf.clip_by_value(tf.cast(images, tf.float32), 0.0, 1.0)
            tf.summary.image("misclassified", data, step=step, max_outputs=limit, description=captions)
        self.flush()

    def flush(self) -> None:
        """Write pending events to disk."""
        for writer in self._writers.values():
            writer.flush()

    def close(self) -> None:
        """Flush and close every writer."""
        for writer in self._writers.values():
            writer.close()
        self._writers = {}
