"""The networks of the deep stage, one builder each; Keras is imported only when a model is built."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ConfigDict, ValidationError, create_model

from pipelines.deep.usercode import is_user_model, load


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


Activation = Literal["relu", "sigmoid", "tanh", "elu", "selu", "gelu"]
Padding = Literal["valid", "same"]


def mlp(
    shape: Sequence[int],
    classes: int,
    units: Sequence[int] = (200, 100, 60, 30),
    dropout: float = 0.25,
    activation: Activation = "relu",
) -> Any:
    """The seeds' five-layer MLP (200-100-60-30, dropout after each; ReLU, sigmoid, tanh, ...) with a softmax output."""
    keras, layers = _keras()
    inputs = keras.Input(_image_input(shape))
    x = layers.Flatten()(inputs)
    for n in units:
        x = layers.Dense(n, activation=activation)(x)
        if dropout:
            x = layers.Dropout(dropout)(x)
    return keras.Model(inputs, _classifier(keras, layers, x, classes), name="mlp")


def _per_layer(name: str, value: Any, n: int) -> list[Any]:
    """A setting given once for every conv layer, or as a list with one entry per layer."""
    if isinstance(value, (str, int)):
        return [value] * n
    values = list(value)
    if len(values) != n:
        raise ValueError(f"cnn: {name} has {len(values)} entries for {n} conv layers")
    return values


def cnn(
    shape: Sequence[int],
    classes: int,
    filters: int | Sequence[int] = (32, 64),
    conv_layers: int | None = None,
    kernel_size: int | Sequence[int] = 3,
    strides: int | Sequence[int] = 1,
    padding: Padding | Sequence[Padding] = "same",
    activation: Activation = "relu",
    pool: Literal["max", "average", "none"] = "max",
    pool_size: int = 2,
    pool_every: int = 1,
    batch_norm: bool = False,
    dropout: float = 0.0,
    dense: int | Sequence[int] = (128,),
    dense_activation: Activation = "relu",
    dense_batch_norm: bool = False,
    dense_dropout: float = 0.0,
) -> Any:
    """Conv blocks (conv layers, then pooling and dropout every `pool_every` layers) and a dense head; softmax.

    `filters` gives each conv layer's width (an int with `conv_layers`: that many layers of that width);
    `kernel_size`, `strides` and `padding` are one value for all layers or one per layer. With batch norm a
    layer is conv (no bias) - batch norm - activation; the dense head likewise with `dense_batch_norm`.
    """
    _needs_image("cnn", shape)
    if isinstance(filters, int):
        widths = [filters] * (1 if conv_layers is None else conv_layers)
    else:
        widths = list(filters)
        if conv_layers is not None and conv_layers != len(widths):
            raise ValueError(f"cnn: conv_layers {conv_layers} but {len(widths)} filters given")
    if not widths or min(widths) < 1 or pool_size < 1 or pool_every < 0:
        raise ValueError("cnn: needs at least one conv layer of positive width, pool_size >= 1 and pool_every >= 0")
    kernels = _per_layer("kernel_size", kernel_size, len(widths))
    stride = _per_layer("strides", strides, len(widths))
    pads = _per_layer("padding", padding, len(widths))
    keras, layers = _keras()
    inputs = keras.Input(_image_input(shape))
    x = inputs
    for i, width in enumerate(widths):
        side = min(x.shape[1], x.shape[2])
        if pads[i] == "valid" and side < kernels[i]:
            raise ValueError(f"cnn: conv layer {i + 1} gets a {side}x{side} map, smaller than its kernel {kernels[i]}")
        if batch_norm:
            x = layers.Conv2D(width, kernels[i], strides=stride[i], padding=pads[i], use_bias=False)(x)
            x = layers.BatchNormalization()(x)
            x = layers.Activation(activation)(x)
        else:
            x = layers.Conv2D(width, kernels[i], strides=stride[i], padding=pads[i], activation=activation)(x)
        last = i == len(widths) - 1
        if (pool_every and (i + 1) % pool_every == 0) or (last and (pool_every == 0 or (i + 1) % pool_every)):
            if pool != "none":
                if min(x.shape[1], x.shape[2]) < pool_size:
                    raise ValueError(f"cnn: the map after conv layer {i + 1} is smaller than pool_size {pool_size}")
                pooling = layers.MaxPooling2D if pool == "max" else layers.AveragePooling2D
                x = pooling(pool_size)(x)
            if dropout:
                x = layers.Dropout(dropout)(x)
    x = layers.Flatten()(x)
    for n in [dense] if isinstance(dense, int) else list(dense):
        if dense_batch_norm:
            x = layers.Dense(n, use_bias=False)(x)
            x = layers.BatchNormalization()(x)
            x = layers.Activation(dense_activation)(x)
        else:
            x = layers.Dense(n, activation=dense_activation)(x)
        if dense_dropout:
            x = layers.Dropout(dense_dropout)(x)
    return keras.Model(inputs, _classifier(keras, layers, x, classes), name="cnn")


def _preset(model: Any, name: str) -> Any:
    model.name = name
    return model


def mnist_cnn(
    shape: Sequence[int],
    classes: int,
    filters: int = 32,
    dense: int = 256,
    dropout: float = 0.25,
    dense_dropout: float = 0.5,
) -> Any:
    """Two conv 3x3 (valid) - maxpool 2 - dropout - dense - dropout - softmax (1,192,042 parameters on 28x28)."""
    _needs_image("mnist_cnn", shape)
    net = cnn(
        shape,
        classes,
        filters,
        2,
        padding="valid",
        pool_every=2,
        dropout=dropout,
        dense=dense,
        dense_dropout=dense_dropout,
    )
    return _preset(net, "mnist_cnn")


def keras_mnist_cnn(shape: Sequence[int], classes: int, dropout: float = 0.25, dense_dropout: float = 0.5) -> Any:
    """Keras' mnist_cnn example: conv32 - conv64 (3x3 valid) - maxpool - dropout - dense 128 - dropout (1,199,882)."""
    _needs_image("keras_mnist_cnn", shape)
    net = cnn(
        shape, classes, [32, 64], padding="valid", pool_every=2, dropout=dropout, dense=128, dense_dropout=dense_dropout
    )
    return _preset(net, "keras_mnist_cnn")


def sdsc_cnn(shape: Sequence[int], classes: int, filters: int = 16, dense: int = 32) -> Any:
    """The SDSC course's one-conv CNN: conv 16@3x3 (valid) - maxpool 2 - dense 32 - softmax (87,050 on 28x28)."""
    _needs_image("sdsc_cnn", shape)
    return _preset(cnn(shape, classes, filters, padding="valid", dense=dense), "sdsc_cnn")


def lenet5(shape: Sequence[int], classes: int, activation: Activation = "relu") -> Any:
    """LeNet-5: conv 6@5x5 - avgpool - conv 16@5x5 - avgpool - dense 120 - dense 84 - softmax."""
    _needs_image("lenet5", shape)
    small = min(shape[:2]) // 2 < 10  # 8x8 digits: keep the second conv's map from vanishing
    net = cnn(
        shape,
        classes,
        [6, 16],
        kernel_size=5,
        padding=["same", "same" if small else "valid"],
        activation=activation,
        pool="average",
        dense=[120, 84],
        dense_activation=activation,
    )
    return _preset(net, "lenet5")


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
    net = cnn(
        shape,
        classes,
        [w for w in widths for _ in range(2)],
        pool_every=2,
        batch_norm=True,
        dropout=dropout,
        dense=dense,
        dense_batch_norm=True,
        dense_dropout=dense_dropout,
    )
    return _preset(net, "fashion_cnn")


def _recurrent(
    kind: Literal["lstm", "gru"],
    shape: Sequence[int],
    classes: int,
    units: int | Sequence[int],
    bidirectional: bool,
    dropout: float,
    dense: Sequence[int],
) -> Any:
    """Stacked (optionally bidirectional) recurrent layers over (T, F) steps; an image's rows are its steps."""
    keras, layers = _keras()
    size = _image_input(shape)
    inputs = keras.Input(size)
    steps = (size[0], 1) if len(size) == 1 else (size[0], size[1] * size[2]) if len(size) == 3 else size
    x = layers.Reshape(steps)(inputs) if tuple(steps) != tuple(size) else inputs
    widths = [units] if isinstance(units, int) else list(units)
    if not widths or min(widths) < 1:
        raise ValueError(f"{kind}: units must give at least one layer of positive width")
    cell = layers.LSTM if kind == "lstm" else layers.GRU
    for i, n in enumerate(widths):
        layer = cell(n, return_sequences=i < len(widths) - 1)
        x = layers.Bidirectional(layer)(x) if bidirectional else layer(x)
        if dropout:
            x = layers.Dropout(dropout)(x)
    for n in dense:
        x = layers.Dense(n, activation="relu")(x)
    return keras.Model(inputs, _classifier(keras, layers, x, classes), name=kind)


def lstm(
    shape: Sequence[int],
    classes: int,
    units: int | Sequence[int] = (128,),
    bidirectional: bool = False,
    dropout: float = 0.0,
    dense: Sequence[int] = (),
) -> Any:
    """Stacked LSTM layers (units per layer, optionally bidirectional, dropout between) on (T, F) sequences."""
    return _recurrent("lstm", shape, classes, units, bidirectional, dropout, dense)


def gru(
    shape: Sequence[int],
    classes: int,
    units: int | Sequence[int] = (128,),
    bidirectional: bool = False,
    dropout: float = 0.0,
    dense: Sequence[int] = (),
) -> Any:
    """Stacked GRU layers (units per layer, optionally bidirectional, dropout between) on (T, F) sequences."""
    return _recurrent("gru", shape, classes, units, bidirectional, dropout, dense)


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
    "cnn": Network(cnn),
    "mnist_cnn": Network(mnist_cnn),
    "keras_mnist_cnn": Network(keras_mnist_cnn),
    "sdsc_cnn": Network(sdsc_cnn),
    "lenet5": Network(lenet5),
    "fashion_cnn": Network(fashion_cnn),
    "lstm": Network(lstm),
    "gru": Network(gru),
    "dense_autoencoder": Network(dense_autoencoder, "reconstruct"),
    "deep_autoencoder": Network(deep_autoencoder, "reconstruct"),
    "conv_autoencoder": Network(conv_autoencoder, "reconstruct"),
    "denoising_autoencoder": Network(denoising_autoencoder, "reconstruct", noisy_input=True),
    "transfer": Network(transfer, from_base=True),
}


USER_NETWORK = Network(lambda shape, classes: None)  # `module:function`: a classifier the user's function builds


def network(model: str) -> Network:
    """The registry's entry for a network of the zoo; a user-defined network (`module:function`) classifies."""
    return USER_NETWORK if is_user_model(model) else NETWORKS[model]


def _builder(kind: str, code: str | None, stage: str | None) -> Callable[..., Any]:
    return load(kind, code, stage) if is_user_model(kind) else NETWORKS[kind].builder


def check_params(kind: str, params: dict[str, Any], code: str | None = None, stage: str | None = None) -> None:
    """Raise ValueError if params are not arguments of the builder or not of their annotated types.

    Networks of the zoo are checked without importing Keras; a user-defined one imports its module.
    """
    if not is_user_model(kind) and network(kind).from_base:
        if params:
            raise ValueError(f"model {kind!r} takes its settings in the 'transfer' section, not 'params'")
        return
    fn = _builder(kind, code, stage)
    signature = inspect.signature(fn)
    listed = list(signature.parameters.values())
    positional = [p for p in listed if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) < 2 and not any(p.kind == p.VAR_POSITIONAL for p in listed):
        raise ValueError(f"{kind}: a network function takes (shape, classes, **params); its signature is {signature}")
    named = [p for p in listed[2:] if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    allowed = [p.name for p in named]
    unknown = sorted(set(params) - set(allowed))
    if unknown and not any(p.kind == p.VAR_KEYWORD for p in listed):
        raise ValueError(f"params for {kind}: unknown {unknown}; allowed: {allowed}")
    missing = [p.name for p in named if p.default is p.empty and p.name not in params]
    if missing:
        raise ValueError(f"params for {kind}: missing {missing}")
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # annotations that do not resolve are not checked
        hints = {}
    fields: dict[str, Any] = {p.name: (hints.get(p.name, Any), ...) for p in named if p.name in params}
    checker = create_model(f"{kind}_params", __config__=ConfigDict(arbitrary_types_allowed=True), **fields)
    try:
        checker.model_validate({k: v for k, v in params.items() if k in fields})
    except ValidationError as exc:
        first: dict[str, str] = {}  # one message per parameter (a union type gives one per alternative)
        for e in exc.errors():
            name = str(e["loc"][0])  # a top-level field: the parameter's name
            first.setdefault(name, f"{name}: {e['msg']} (got {params[name]!r})")
        raise ValueError(f"params for {kind}: " + "; ".join(first.values())) from None


def build(
    kind: str,
    shape: Sequence[int],
    classes: int,
    params: dict[str, Any],
    base_model: str | None = None,
    code: str | None = None,
    stage: str | None = None,
) -> Any:
    """Build an untrained network of the given kind (a transfer network: on the saved model at base_model)."""
    if is_user_model(kind):
        keras, _ = _keras()
        model = load(kind, code, stage)(_image_input(shape), classes, **params)  # (h, w, c) or (features,)
        if not isinstance(model, keras.Model):
            raise ValueError(f"{kind} returned {type(model).__name__}, not a Keras model")
        if tuple(model.output_shape) != (None, classes):
            raise ValueError(f"{kind}: output shape {model.output_shape}, wanted (None, {classes}) class probabilities")
        return model
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
