"""Image augmentation as specs: random transforms for training, fixed views for testing; flips only where allowed."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from pipelines.settings import StrictModel


class AugmentSpec(StrictModel):
    """Random transforms of training batches (evaluation never sees them); `augment: true` is this default."""

    shift: float = Field(default=0.1, ge=0, lt=1, description="largest shift, as a fraction of height and width")
    rotate: float = Field(default=10.0, ge=0, le=180, description="largest rotation, in degrees either way")
    zoom: float = Field(default=0.1, ge=0, lt=1, description="largest zoom in or out, as a fraction")
    erase: float = Field(default=0.0, ge=0, le=1, description="probability of erasing a random rectangle")
    flip: bool = Field(default=False, description="horizontal flips: only for images whose mirror keeps its class")


class EvalViews(StrictModel):
    """Fixed views of each evaluated image whose predicted probabilities are averaged (test-time augmentation)."""

    flip: bool = Field(default=False, description="add each view's mirror image: only where flips keep the class")
    shift: int = Field(default=0, ge=0, le=4, description="add views shifted this many pixels up, down, left, right")

    def views(self) -> list[tuple[bool, int, int]]:
        """(mirrored, rows down, columns right) of every view, the image itself first."""
        step = self.shift
        offsets = [(0, 0)] + ([(-step, 0), (step, 0), (0, -step), (0, step)] if step else [])
        return [(mirror, dy, dx) for mirror in ([False, True] if self.flip else [False]) for dy, dx in offsets]


def eval_views(spec: EvalViews, x: Any) -> list[Any]:
    """The spec's views of a channels-last image batch; shifted-in pixels are zero."""
    import tensorflow as tf

    pad = spec.shift
    height, width = x.shape[1], x.shape[2]
    padded = {
        mirror: tf.pad(tf.reverse(x, [2]) if mirror else x, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
        for mirror in {m for m, _, _ in spec.views()}
    }
    return [padded[m][:, pad - dy : pad - dy + height, pad - dx : pad - dx + width, :] for m, dy, dx in spec.views()]


def flip_problem(spec: AugmentSpec | EvalViews | None, dataset_name: str, mirror_keeps_class: bool) -> str | None:
    """Why flips are wrong for this data set (its mirror images are other symbols), or None."""
    if spec is None or not spec.flip or mirror_keeps_class:
        return None
    return (
        f"horizontal flips change what the images of {dataset_name!r} mean (digits, letters): leave flip off, or "
        "declare dataset.image.flips: true if a mirror image keeps its class"
    )


def augmenter(spec: AugmentSpec | None, seed: int) -> Any:
    """A Keras pipeline of the spec's random layers (channels-last images), or None when nothing is on."""
    if spec is None:
        return None
    from tensorflow import keras

    layers = keras.layers
    steps: list[Any] = []
    if spec.flip:
        steps.append(layers.RandomFlip("horizontal", seed=seed))
    if spec.rotate:
        steps.append(layers.RandomRotation(spec.rotate / 360.0, fill_mode="constant", seed=seed + 1))
    if spec.zoom:
        steps.append(layers.RandomZoom(spec.zoom, spec.zoom, fill_mode="constant", seed=seed + 2))
    if spec.shift:
        steps.append(layers.RandomTranslation(spec.shift, spec.shift, fill_mode="constant", seed=seed + 3))
    if spec.erase:
        steps.append(layers.RandomErasing((spec.erase, spec.erase), fill_value=0.0, value_range=(0, 1), seed=seed + 4))
    return keras.Sequential(steps, name="augment") if steps else None


def mean_over_views(model: Any, spec: EvalViews, x: Any) -> Any:
    """A Keras model's float32 outputs for a channels-last batch, averaged over the spec's views."""
    import tensorflow as tf

    seen = eval_views(spec, x)
    return tf.add_n([tf.cast(model(v, training=False), tf.float32) for v in seen]) / len(seen)
