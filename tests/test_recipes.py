"""The seeds' recipes: augmentation as a spec (flips only where allowed), test-time views, the course's convolutional
autoencoder, the MLP's exponential learning-rate decay, Keras' adadelta CNN, and the MNIST ladder config."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from pipelines.config import load_config
from pipelines.deep.augment import AugmentSpec, EvalViews, augmenter, eval_views
from pipelines.deep.models import conv_autoencoder
from pipelines.deep.stage import DeepStage
from pipelines.deep.train import _optimizer, learning_rate
from pipelines.ingest.config import DatasetConfig
from pipelines.ingest.stage import IngestStage


def _letter_l() -> np.ndarray:
    """A 28x28 'L': not symmetric, so a mirror image is told apart from a shifted one."""
    image = np.zeros((1, 28, 28, 1), np.float32)
    image[0, 6:22, 8:11, 0] = 1.0
    image[0, 19:22, 8:20, 0] = 1.0
    return image


PATHS = {"digits": "bundled:digits/images", "fashion-mnist": "bundled:fashion-mnist/train-images"}


def _config(name: str, image: dict | None = None) -> SimpleNamespace:
    """A pipeline's settings around a real dataset section: bundled sets by name, an IDX file, or a table."""
    if image is None and name == "iris":
        dataset = DatasetConfig(name=name, format="csv", path="iris.csv", features=["a"], label="y")
    else:
        image = image or {"shape": [28, 28], "classes": 10}
        path = PATHS.get(name, f"{name}-images.idx")
        dataset = DatasetConfig(name=name, format="idx", path=path, labels_path="labels.idx", image=image)
    return SimpleNamespace(name="p", dataset=dataset, engine=SimpleNamespace(kind="dask"))


def test_augment_true_is_the_default_spec_without_flips():
    assert DeepStage(model="mlp", augment=True).augment == AugmentSpec()
    assert DeepStage(model="mlp", augment=True).augment.flip is False
    assert DeepStage(model="mlp", augment=False).augment is None
    assert DeepStage(model="mlp", augment={"shift": 0.2, "erase": 0.5}).augment.erase == 0.5
    with pytest.raises(ValueError, match="rotate"):
        DeepStage(model="mlp", augment={"rotate": 400})


@pytest.mark.parametrize(("dataset", "refused"), [("digits", True), ("mnist", True), ("fashion-mnist", False)])
def test_flips_are_refused_for_digits_and_allowed_for_clothes(dataset, refused):
    stage = DeepStage(model="mnist_cnn", augment={"flip": True})
    problems = stage.check([IngestStage(write=True)], _config(dataset))
    assert any(p.path == "augment.flip" for p in problems) == refused


@pytest.mark.parametrize(("declared", "refused"), [(True, False), (False, True), (None, True)])
def test_the_flip_rule_is_a_declared_property_of_the_dataset(declared, refused):
    """A name says nothing: an IDX set of letters is refused unless it declares that mirrors keep the class."""
    stage = DeepStage(model="mnist_cnn", augment={"flip": True})
    image = {"shape": [28, 28], "classes": 10, "flips": declared}
    problems = stage.check([IngestStage(write=True)], _config("fashion-letters", image))
    assert any(p.path == "augment.flip" for p in problems) == refused


def _shifted(images: np.ndarray, down: int, right: int) -> np.ndarray:
    """NumPy reference: move the pixels, zeros where nothing moved in."""
    out = np.zeros_like(images)
    h, w = images.shape[1:3]
    out[:, max(down, 0) : h + min(down, 0), max(right, 0) : w + min(right, 0)] = images[
        :, max(-down, 0) : h - max(down, 0), max(-right, 0) : w - max(right, 0)
    ]
    return out


def test_test_time_views_are_the_image_its_mirror_and_their_one_pixel_shifts():
    image = _letter_l()
    spec = EvalViews(flip=True, shift=1)
    views = [np.asarray(v) for v in eval_views(spec, image)]
    assert len(views) == len(spec.views()) == 10
    expected = [_shifted(image[:, :, ::-1] if mirror else image, down, right) for mirror, down, right in spec.views()]
    for got, want in zip(views, expected, strict=True):
        np.testing.assert_array_equal(got, want)
    assert spec.views()[0] == (False, 0, 0)
    assert [v.shape for v in eval_views(EvalViews(), image)] == [image.shape]  # no spec: the image alone


@pytest.mark.parametrize(("dataset", "refused"), [("digits", True), ("fashion-mnist", False)])
def test_test_time_flips_follow_the_training_flip_rule(dataset, refused):
    stage = DeepStage(model="mnist_cnn", test_time_augment={"flip": True, "shift": 1})
    paths = [p.path for p in stage.check([IngestStage(write=True)], _config(dataset))]
    assert ("test_time_augment.flip" in paths) == refused
    assert "test_time_augment" not in paths


def test_test_time_views_need_a_classifier_and_images():
    with pytest.raises(ValueError, match="conv_autoencoder' does not classify"):
        DeepStage(model="conv_autoencoder", test_time_augment={"shift": 1})
    tabular = DeepStage(model="mlp", test_time_augment={"shift": 1})
    assert any(p.path == "test_time_augment" for p in tabular.check([IngestStage(write=True)], _config("iris")))
    with pytest.raises(ValueError, match="shift"):
        DeepStage(model="mlp", test_time_augment={"shift": 9})


def test_without_flip_no_batch_is_ever_mirrored():
    image = _letter_l()
    mirrored = image[:, :, ::-1, :]
    shift_only = augmenter(AugmentSpec(shift=0.15, rotate=0, zoom=0), seed=0)
    flip_only = augmenter(AugmentSpec(shift=0, rotate=0, zoom=0, flip=True), seed=0)
    batch = np.repeat(image, 64, axis=0)
    shifted = np.asarray(shift_only(batch, training=True))
    flipped = np.asarray(flip_only(batch, training=True))
    # a shift keeps the L's orientation: its long bar stays on the left of its foot in every image
    for out in shifted:
        cols = np.nonzero(out[..., 0].sum(axis=0) > 0.5)[0]
        bar = np.argmax(out[..., 0].sum(axis=0))
        assert bar <= cols.min() + 3  # the heaviest column (the bar) is the leftmost part
    assert not any(np.allclose(out, mirrored[0]) for out in shifted)
    moved = sum(not np.allclose(out, image[0]) for out in shifted)
    assert moved >= 56  # almost every image moved (a draw of 0 pixels either way leaves a few unchanged)
    mirrors = sum(np.allclose(out, mirrored[0]) for out in flipped)
    assert 16 <= mirrors <= 48  # about half of them with flip on
    assert augmenter(AugmentSpec(shift=0, rotate=0, zoom=0), seed=0) is None
    assert augmenter(None, seed=0) is None


def test_erasing_blanks_a_rectangle_with_the_given_probability():
    batch = np.ones((200, 28, 28, 1), np.float32)
    out = np.asarray(augmenter(AugmentSpec(shift=0, rotate=0, zoom=0, erase=0.5), seed=1)(batch, training=True))
    erased = (out.reshape(200, -1).min(axis=1) == 0.0).mean()
    assert 0.35 <= erased <= 0.65  # erase: 0.5 is a probability per image


def test_conv_autoencoder_is_the_course_network():
    model = conv_autoencoder((28, 28))
    assert model.count_params() == 4385  # conv 16-8-8 with pooling to a 4x4x8 code and back (TACC, Keras blog)
    codes = [layer.output.shape[1:] for layer in model.layers if layer.__class__.__name__ == "MaxPooling2D"]
    assert tuple(codes[-1]) == (4, 4, 8)
    assert model.output_shape == (None, 28, 28, 1)
    assert conv_autoencoder((8, 8)).output_shape == (None, 8, 8, 1)
    assert conv_autoencoder((32, 32, 3)).output_shape == (None, 32, 32, 3)


def test_exponential_decay_is_the_seeds_mlp_schedule():
    stage = DeepStage(
        model="mlp", learning_rate=0.0015, warmup_epochs=0, schedule="exponential", min_learning_rate=1e-4
    )
    for step in (0, 1000, 2000, 10_000):  # 2 ranks: 0.003 at the start, 0.0001 + 0.0029 e^(-step/2000) after
        expected = 1e-4 + (0.003 - 1e-4) * math.exp(-step / 2000)
        assert learning_rate(stage, 2, step, 600) == pytest.approx(expected, rel=1e-12)


def test_adadelta_is_keras_mnist_example_optimizer():
    optimizer = _optimizer(DeepStage(model="mnist_cnn", optimizer="adadelta", learning_rate=1.0, scale_lr=False))
    assert type(optimizer).__name__ == "Adadelta"
    assert float(optimizer.learning_rate) == 1.0 and optimizer.rho == 0.95


def test_mnist_ladder_follows_the_seeds():
    config = load_config(Path(__file__).resolve().parent.parent / "conf" / "mnist_ladder.yaml")
    deep = {s.output_name: s for s in config.stages if isinstance(s, DeepStage)}
    assert list(deep) == ["softmax", "mlp5", "mlp5_dropout", "keras_cnn", "keras_cnn_expanded"]
    assert config.dataset.test_path and config.stages[0].split.test_fraction == 0  # the official test images
    assert deep["mlp5"].schedule == "exponential" and deep["mlp5"].params["units"] == [200, 100, 60, 30]
    assert deep["keras_cnn"].optimizer == "adadelta" and deep["keras_cnn"].epochs == 12
    assert deep["keras_cnn_expanded"].augment is not None and not deep["keras_cnn_expanded"].augment.flip
    assert all(s.augment is None for name, s in deep.items() if name != "keras_cnn_expanded")
