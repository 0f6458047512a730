"""Scoring one validated partition where it lives: the run's fitted transform, then the saved model.

The model is loaded from the run directory once per worker process and kept (keyed by its path and the
digest of its recorded checksums), so tasks after the first on a worker reuse it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from pipelines.deep.augment import EvalViews, mean_over_views
from pipelines.ingest.handoff import ImageInputs, TableInputs
from pipelines.predict.saved import ModelRef

KERAS_BATCH = 1024

_models: dict[tuple[str, str], Any] = {}
_lock = threading.Lock()


def cached_model(ref: ModelRef) -> Any:
    """The saved model, loaded on first use in this process and kept."""
    key = (ref.path, ref.digest)
    with _lock:
        if key not in _models:
            _models[key] = load_ref(ref)
        return _models[key]


def loaded_models() -> list[str]:
    """Paths of the models this process has loaded (each once)."""
    return [path for path, _ in _models]


def load_ref(ref: ModelRef) -> Any:
    """A saved model loaded from its files (classical: pickle-free arrays; Keras: safe mode)."""
    if ref.kind == "classical":
        from pipelines.classical.persist import load_model

        return load_model(ref.path)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    if ref.network is not None:  # a user network: import its module (the run's copy) to register its custom layers
        from pipelines.deep import usercode

        if ref.code is not None:
            ref.code.pin()
        usercode.load(ref.network, None, ref.code.stage if ref.code is not None else None)
    return keras.saving.load_model(ref.path, compile=False, safe_mode=True)


@dataclass(frozen=True)
class Scorer:
    """Transform a validated partition as the run did and score its accepted rows (pickled to the workers)."""

    model: ModelRef
    task: str
    schema: pa.Schema
    transform: Callable[[pd.DataFrame], pd.DataFrame]  # a validated partition to rows as the run wrote them
    inputs: TableInputs | ImageInputs  # what those rows hold
    features: tuple[str, ...]
    label: str | None  # label column of the transformed rows, when the new data has labels
    classes: tuple[Any, ...]  # model class values in output order
    names: tuple[Any, ...]  # what each class is written as (category levels for a category label)
    views: EvalViews | None = None  # a network's test-time views: its probabilities are their mean

    def __call__(self, pdf: pd.DataFrame) -> pd.DataFrame:
        rows = self.transform(pdf)
        x = self.inputs.samples(rows, self.features)
        out: dict[str, Any] = {"source_file": rows["_source"].to_numpy(), "row": rows["_row"].to_numpy()}
        if len(rows):
            out.update(self._keras(x) if self.model.kind == "keras" else self._classical(x))
        if self.label is not None:
            out["label"] = self._names(rows[self.label].to_numpy()) if self.names else rows[self.label].to_numpy()
        frame = pd.DataFrame(out)
        return frame.reindex(columns=self.schema.names) if len(frame) else self.schema.empty_table().to_pandas()

    def _names(self, values: np.ndarray) -> np.ndarray:
        """Class values as written: category codes become their levels; others stay as they are."""
        if self.names == self.classes:
            return values
        lookup = dict(zip(self.classes, self.names, strict=True))
        return np.array([lookup.get(v) for v in values.tolist()], dtype=object)

    def _classical(self, x: np.ndarray) -> dict[str, Any]:
        model = cached_model(self.model)
        x = x.reshape(len(x), -1).astype("float64")
        columns = list(getattr(model, "feature_names_in_", [])) or [f"x{i}" for i in range(x.shape[1])]
        frame = pd.DataFrame(x, columns=columns)
        out: dict[str, Any] = {"prediction": model.predict(frame)}
        if self.task == "classify":
            out["prediction"] = self._names(out["prediction"])
            if hasattr(model, "predict_proba"):
                proba = model.predict_proba(frame)
                out.update({f"probability_{n}": proba[:, i] for i, n in enumerate(self.names)})
        return out

    def _network(self, model: Any, batch: np.ndarray) -> np.ndarray:
        """A network's outputs for a batch: the mean over the test-time views when the stage had them."""
        if self.views is None:
            return np.asarray(model(batch, training=False))
        return np.asarray(mean_over_views(model, self.views, batch))

    def _keras(self, x: np.ndarray) -> dict[str, Any]:
        model = cached_model(self.model)
        x = x.astype("float32")
        if x.ndim == 3:  # (h, w) images get the channel axis the network was built with
            x = x[..., None]
        outputs = np.concatenate([self._network(model, x[i : i + KERAS_BATCH]) for i in range(0, len(x), KERAS_BATCH)])
        if self.task == "reconstruct":
            error = np.square(outputs.astype("float32") - x).reshape(len(x), -1).mean(axis=1)
            return {"reconstruction_error": error.astype("float64")}
        best = np.argmax(outputs, axis=1)
        out: dict[str, Any] = {"prediction": np.asarray(self.names, dtype=object)[best]}
        out.update({f"probability_{n}": outputs[:, i].astype("float64") for i, n in enumerate(self.names)})
        return out
