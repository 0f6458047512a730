"""The networks of the deep stage, one builder each; Keras is imported only when a model is built."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal


def _keras() -> tuple[Any, Any]:
    import keras
    from keras import layers

    return keras, layers


def _image_input(shape: Sequence[int]) -> tuple[int, ...]:
    """Keras input shape: (h, w) images get a channel axis; flat features stay as they are."""
    shape = tuple(int(s) for s in shape)
    return shape + (1,) if len(shape) == 2 else shape


def _needs_image(kind: str, shape: Sequence[int]) -> None:
    if len(_image_input(shape)) != 3:
        raise ValueError(f"model {kind!r} needs image data (h, w[, c]); got samples of shape {tuple(shape)}")


def _classifier(keras: Any, layers: Any, x: Any, classes: int) -> Any:
    """Softmax output in float32 (also under a mixed-precision policy)."""
    return layers.Dense(classes, activation="softmax", dtype="float32", name="predictions")(x)


def softmax(shape: Sequence[int], classes: int) -> Any:
    """Softmax (multinomial logistic) regression on the flattened inputs."""
    keras, layers = _keras()
    inputs = keras.Input(_image_input(shape))
    return keras.Model(inputs, _classifier(keras, layers, layers.Flatten()(inputs), classes), name="softmax")


def mlp(shape: Sequence[int], classes: int, units: Sequence[int] = (200, 100, 60, 30), dropout: float = 0.25) -> Any:
    """The seeds' five-layer MLP (200-100-60-30 ReLU, dropout after each) with a softmax output."""
    keras, layers = _keras()
    inputs = keras.Input(_image_input(shape))
    x = layers.Flatten()(inputs)
    for n in units:
        x = layers.Dense(n, activation="relu")(x)
        if dropout:
            x = layers.Dropout(dropout)(x)
    return keras.Model(inputs, _classifier(keras, layers, x, classes), name="mlp")


def mnist_cnn(
    shape: Sequence[int],
    classes: int,
    filters: int = 32,
    dense: int = 256,
    dropout: float = 0.25,
    dense_dropout: float = 0.5,
) -> Any:
    """The classic Keras MNIST net: conv 3x3 - conv 3x3 - maxpool 2 - dropout - dense - dropout - softmax."""
    _needs_image("mnist_cnn", shape)
    keras, layers = _keras()
    inputs = keras.Input(_image_input(shape))
    x = layers.Conv2D(filters, 3, activation="relu")(inputs)
    x = layers.Conv2D(filters, 3, activation="relu")(x)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Dropout(dropout)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(dense, activation="relu")(x)
    x = layers.Dropout(dense_dropout)(x)
    return keras.Model(inputs, _classifier(keras, layers, x, classes), name="mnist_cnn")


def lenet5(shape: Sequence[int], classes: int, activation: str = "relu") -> Any:
    """LeNet-5: conv 6@5x5 - avgpool - conv 16@5x5 - avgpool - dense 120 - dense 84 - softmax."""
    _needs_image("lenet5", shape)
    keras, layers = _keras()
    inputs = keras.Input(_image_input(shape))
    x = layers.Conv2D(6, 5, padding="same", activation=activation)(inputs)
    x = layers.AveragePooling2D(2)(x)
    small = min(shape[:2]) // 2 < 10  # 8x8 digits: keep the second conv's map from vanishing
    x = layers.Conv2D(16, 5, padding="same" if small else "valid", activation=activation)(x)
    x = layers.AveragePooling2D(2)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(120, activation=activation)(x)
    x = layers.Dense(84, activation=activation)(x)
    return keras.Model(inputs, _classifier(keras, layers, x, classes), name="lenet5")


def fashion_cnn(
    shape: Sequence[int],
    classes: int,
    widths: Sequence[int] = (32, 64),
    dense: int = 256,
    dropout: float = 0.25,
    dense_dropout: float = 0.5,
) -> Any:
    """Our small CNN: per width two conv 3x3 + batch norm + ReLU, maxpool, dropout; dense + BN; softmax."""
    _needs_image("fashion_cnn", shape)
    keras, layers = _keras()
    inputs = keras.Input(_image_input(shape))
    x = inputs
    for width in widths:
        for _ in range(2):
            x = layers.Conv2D(width, 3, padding="same", use_bias=False)(x)
            x = layers.BatchNormalization()(x)
            x = layers.ReLU()(x)
        x = layers.MaxPooling2D(2)(x)
        x = layers.Dropout(dropout)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(dense, use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    x = layers.Dropout(dense_dropout)(x)
    return keras.Model(inputs, _classifier(keras, layers, x, classes), name="fashion_cnn")


def _dense_ae(shape: Sequence[int], units: Sequence[int], name: str) -> Any:
    keras, layers = _keras()
    size = 1
    for s in shape:
        size *= int(s)
    inputs = keras.Input(_image_input(shape))
    x = layers.Flatten()(inputs)
    for n in units:
        x = layers.Dense(n, activation="relu")(x)
    for n in list(units[:-1])[::-1]:
        x = layers.Dense(n, activation="relu")(x)
    x = layers.Dense(size, activation="sigmoid", dtype="float32")(x)
    return keras.Model(inputs, layers.Reshape(_image_input(shape), dtype="float32")(x), name=name)


def dense_autoencoder(shape: Sequence[int], classes: int = 0, code: int = 32) -> Any:
    """One hidden code layer: input - dense(code) - reconstruction (sigmoid)."""
    return _dense_ae(shape, (code,), "dense_autoencoder")


def deep_autoencoder(shape: Sequence[int], classes: int = 0, units: Sequence[int] = (128, 64, 32)) -> Any:
    """Stacked dense encoder and mirrored decoder."""
    return _dense_ae(shape, tuple(units), "deep_autoencoder")


def conv_autoencoder(shape: Sequence[int], classes: int = 0, filters: Sequence[int] = (16, 8, 8)) -> Any:
    """The Keras/TACC convolutional autoencoder: conv + maxpool down to the code, conv + upsampling back.

    With the default filters a 28x28 image becomes a 4x4x8 code and 4,385 parameters, as the course builds it:
    the decoder mirrors the encoder, and its last conv is 'valid' where that lands exactly on the input size
    (16 -> 14 -> 28); any other size is cropped to the input at the end.
    """
    _needs_image("conv_autoencoder", shape)
    keras, layers = _keras()
    size = _image_input(shape)
    inputs = keras.Input(size)
    x = inputs
    for f in filters:
        x = layers.Conv2D(f, 3, activation="relu", padding="same")(x)
        x = layers.MaxPooling2D(2, padding="same")(x)
    decoder = list(filters)[::-1]
    for i, f in enumerate(decoder):
        side = x.shape[1]
        last = i == len(decoder) - 1
        valid = last and size[0] == size[1] and 2 * (side - 2) == size[0]
        x = layers.Conv2D(f, 3, activation="relu", padding="valid" if valid else "same")(x)
        x = layers.UpSampling2D(2)(x)
    extra = (x.shape[1] - size[0], x.shape[2] - size[1])
    if extra != (0, 0):
        x = layers.Cropping2D(((extra[0] // 2, extra[0] - extra[0] // 2), (extra[1] // 2, extra[1] - extra[1] // 2)))(x)
    channels = size[-1]
    x = layers.Conv2D(channels, 3, activation="sigmoid", padding="same", dtype="float32")(x)
    return keras.Model(inputs, x, name="conv_autoencoder")


def denoising_autoencoder(shape: Sequence[int], classes: int = 0, filters: Sequence[int] = (32, 32)) -> Any:
    """A convolutional autoencoder trained to undo Gaussian noise on its inputs (the stage's `noise`)."""
    model = conv_autoencoder(shape, classes, filters)
    model.name = "denoising_autoencoder"
    return model


APPLICATIONS = ("MobileNetV2", "MobileNetV3Small", "ResNet50", "EfficientNetB0", "DenseNet121", "VGG16")


def application(name: str, shape: Sequence[int], weights: str | None = None) -> Any:
    """A Keras Applications architecture without its top (global average pooled), randomly initialized or with
    the weights of a local file; never downloaded (`weights=None` to Keras)."""
    keras, _ = _keras()
    if name not in APPLICATIONS:
        raise ValueError(f"Keras Applications architecture {name!r} is not one of {list(APPLICATIONS)}")
    model = getattr(keras.applications, name)(
        input_shape=_image_input(shape), include_top=False, weights=None, pooling="avg"
    )
    if weights:
        model.load_weights(weights)
    return keras.Model(model.inputs, model.output, name="base")


def transfer(
    features: Any, classes: int, mode: str = "features", trainable_layers: int = 2, head: Sequence[int] = (128,)
) -> Any:
    """A new classifier on a base's features; 'features' freezes the base, 'finetune' leaves its top open."""
    keras, layers = _keras()
    base = features
    weighted = [layer for layer in features.layers if layer.weights]
    open_layers = set() if mode == "features" else {id(layer) for layer in weighted[len(weighted) - trainable_layers :]}
    for layer in features.layers:
        layer.trainable = id(layer) in open_layers
    inputs = keras.Input(base.inputs[0].shape[1:])
    x = features(inputs, training=False)
    for n in head:
        x = layers.Dense(n, activation="relu")(x)
        x = layers.Dropout(0.25)(x)
    return keras.Model(inputs, _classifier(keras, layers, x, classes), name=f"transfer_{mode}")


@dataclass(frozen=True)
class Network:
    """One network kind: its builder, what it learns, and whether it trains on corrupted inputs."""

    builder: Callable[..., Any]
    task: Literal["classify", "reconstruct"] = "classify"
    noisy_input: bool = False  # the denoising autoencoder reconstructs clean inputs from noisy ones
    from_base: bool = False  # built on a saved model (transfer), configured by the stage's `transfer` section


NETWORKS: dict[str, Network] = {
    "softmax": Network(softmax),
    "mlp": Network(mlp),
    "mnist_cnn": Network(mnist_cnn),
    "lenet5": Network(lenet5),
    "fashion_cnn": Network(fashion_cnn),
    "dense_autoencoder": Network(dense_autoencoder, "reconstruct"),
    "deep_autoencoder": Network(deep_autoencoder, "reconstruct"),
    "conv_autoencoder": Network(conv_autoencoder, "reconstruct"),
    "denoising_autoencoder": Network(denoising_autoencoder, "reconstruct", noisy_input=True),
    "transfer": Network(transfer, from_base=True),
}


def check_params(kind: str, params: dict[str, Any]) -> None:
    """Raise ValueError if params are not arguments of the model's builder (checked without importing Keras)."""
    network = NETWORKS[kind]
    if network.from_base:
        if params:
            raise ValueError(f"model {kind!r} takes its settings in the 'transfer' section, not 'params'")
        return
    signature = inspect.signature(network.builder)
    allowed = [p for p in signature.parameters if p not in ("shape", "classes")]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(f"params for {kind}: unknown {unknown}; allowed: {allowed}")


def build(kind: str, shape: Sequence[int], classes: int, params: dict[str, Any], base_model: str | None = None) -> Any:
    """Build an untrained network of the given kind (a transfer network: on the saved model at base_model)."""
    network = NETWORKS[kind]
    if network.from_base:
        keras, _ = _keras()
        if base_model is None:
            raise ValueError(f"model {kind!r} needs a saved base model")
        params = dict(params)
        weights = params.pop("weights", None)
        if base_model.startswith("keras:"):
            return network.builder(application(base_model[len("keras:") :], shape, weights), classes, **params)
        base = keras.saving.load_model(base_model, compile=False, safe_mode=True)
        return network.builder(keras.Model(base.inputs, base.layers[-2].output, name="base"), classes, **params)
    return network.builder(shape, classes, **params)
