"""Any scikit-learn-compatible estimator named by import path: fitted on gathered rows, scored where blocks live.

`model: "sklearn.svm:LinearSVC"` (or the user's own class, whose file or folder `code:` names) is wrapped in
`External`: fit gathers the train blocks to this process in their recorded order ((source, row), the same on
either engine) under a memory cap, or a seeded sample of them; predict, predict_proba and the like run on each
block where it lives, the fitted estimator shipped as skops bytes (dask-ml's ParallelPostFit pattern). User code
is imported only here, and only from the file or folder the config names.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import re
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, clone, is_classifier, is_regressor
from sklearn.utils import get_tags
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_is_fitted

from pipelines.classical.data import Blocks, ModelInputError, gather
from pipelines.engines.base import Block
from pipelines.errors import ConfigError, DataError
from pipelines.ingest.split import uniform_keys

IMPORT_PATH = r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$"
TRUSTED_MODULES = ("numpy", "scipy", "sklearn")  # besides the estimator's own top-level package
MAX_GATHER_MB = 2048.0
_lock = threading.Lock()
_shipped: dict[str, Any] = {}


def is_import_path(model: str) -> bool:
    """Whether a model name is an import path (`module:Class`) rather than a built-in family."""
    return re.match(IMPORT_PATH, model) is not None


def load_code(code: str | None) -> None:
    """Make the user's named code importable: a .py file's folder, a package's parent, or a folder of modules."""
    if code is None:
        return
    path = Path(code)
    if not path.exists():
        raise ConfigError(f"code: {code} does not exist")
    folder = path.parent if path.is_file() or (path / "__init__.py").is_file() else path
    entry = str(folder.resolve())
    if entry not in sys.path:
        sys.path.insert(0, entry)


def import_estimator(model: str, code: str | None = None) -> type:
    """The class an import path names, checked to be a scikit-learn estimator (fit, get_params, set_params)."""
    module_name, _, class_name = model.partition(":")
    load_code(code)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        hint = "" if code else " (a class of your own needs `code:`, its file or folder beside the config)"
        raise ConfigError(f"model {model!r}: cannot import {module_name!r}: {exc}{hint}") from None
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        raise ConfigError(f"model {model!r}: {module_name} has no class {class_name!r}")
    missing = [m for m in ("fit", "get_params", "set_params") if not callable(getattr(cls, m, None))]
    if missing or not issubclass(cls, BaseEstimator):
        raise ConfigError(f"model {model!r}: not a scikit-learn estimator (a BaseEstimator with fit/get_params)")
    return cls


def trusted_types(blob: bytes, model: str) -> list[str]:
    """The skops types of a saved estimator, all on the allow-list (NumPy, SciPy, scikit-learn, the class's package)."""
    import skops.io as sio

    own = model.partition(":")[0].split(".")[0]
    allowed = (*TRUSTED_MODULES, own, "pipelines.classical.external")
    found = sio.get_untrusted_types(data=blob)
    refused = [t for t in found if not any(t == p or t.startswith(p + ".") for p in allowed)]
    if refused:
        raise DataError(f"model {model!r}: the saved estimator holds types outside the allow-list {allowed}: {refused}")
    return found


def dumps(estimator: Any) -> bytes:
    """skops bytes of a fitted estimator (no pickle)."""
    import skops.io as sio

    return sio.dumps(estimator)


def loads(blob: bytes, model: str, code: str | None) -> Any:
    """An estimator from skops bytes, its user code made importable and its types checked against the allow-list."""
    import skops.io as sio

    load_code(code)
    return sio.loads(blob, trusted=trusted_types(blob, model))


def _frame(x: np.ndarray, names: Any) -> Any:
    return pd.DataFrame(x, columns=list(names)) if names is not None else x


@dataclass(frozen=True)
class Shipped:
    """One method of a fitted estimator, run on a block where it lives (the estimator travels as skops bytes)."""

    blob: bytes
    digest: str
    model: str
    code: str | None
    method: str
    names: tuple[str, ...] | None

    def __call__(self, block: Block) -> np.ndarray:
        with _lock:
            if self.digest not in _shipped:
                _shipped.clear()  # one fitted estimator per process at a time
                _shipped[self.digest] = loads(self.blob, self.model, self.code)
            est = _shipped[self.digest]
        if len(block["x"]) == 0:
            return np.empty((0,))
        return np.asarray(getattr(est, self.method)(_frame(block["x"], self.names)))


def _rows(block: Block, seed: int, rate: float | None) -> dict[str, Any]:
    """A block's rows (all, or those whose seeded key is below rate) with their source, row and key."""
    u = uniform_keys(block["source"], block["row"], seed)
    keep = np.ones(len(u), bool) if rate is None else u < rate
    out = {"x": block["x"][keep], "row": block["row"][keep], "u": u[keep], "source": block["source"]}
    if "y" in block:
        out["y"] = block["y"][keep]
    return out


def gather_rows(
    blocks: Blocks, max_mb: float, sample: int | None, seed: int, what: str
) -> tuple[np.ndarray, np.ndarray | None]:
    """The rows (x, y) in (source, row) order; a seeded sample of `sample` rows; refused above max_mb."""
    width = (blocks.n_features + 3) * 8
    total = blocks.n_rows * width / 2**20
    if sample is None and total > max_mb:
        raise DataError(
            f"{what}: {blocks.n_rows} rows x {blocks.n_features} features ({total:,.2f} MB) exceed max_gather_mb="
            f"{max_mb:g}; raise max_gather_mb or fit on a seeded sample (fit_sample: ROWS)"
        )
    if sample is not None and sample * width / 2**20 > max_mb:
        raise DataError(
            f"{what}: fit_sample={sample} rows ({sample * width / 2**20:,.2f} MB) exceed max_gather_mb={max_mb:g}"
        )
    rate: float | None = None
    if sample is not None and sample < blocks.n_rows:
        rate = min(1.0, 1.1 * sample / blocks.n_rows + 32 / blocks.n_rows)
    while True:
        parts = blocks.map(functools.partial(_rows, seed=seed, rate=rate))
        got = sum(len(p["u"]) for p in parts)
        if rate is None or got >= sample or rate >= 1.0:  # type: ignore[operator]
            break
        rate = min(1.0, rate * 2)
    x = np.concatenate([p["x"] for p in parts])
    y = np.concatenate([p["y"] for p in parts]) if blocks.label is not None else None
    rows = np.concatenate([p["row"] for p in parts])
    sources = np.concatenate([np.full(len(p["u"]), p["source"], dtype=object) for p in parts])
    keep = np.arange(len(rows))
    if rate is not None:  # the `sample` smallest keys: the same rows on either engine
        u = np.concatenate([p["u"] for p in parts])
        keep = np.sort(np.argsort(u, kind="stable")[:sample])
    order = keep[np.lexsort((rows[keep], sources[keep].astype(str)))]
    if y is not None and blocks.integer_labels:
        y = y.astype(np.int64)
    return x[order], (y[order] if y is not None else None)


def _has(method: str) -> Callable[[Any], bool]:
    return lambda self: hasattr(self.estimator, method)


class External(BaseEstimator):
    """A scikit-learn estimator fitted on gathered rows (capped, or a seeded sample) and scored per block.

    `model` is the import path it was built from and `code` the user's file or folder (None for installed
    packages); `max_gather_mb` caps the rows gathered for fit; `fit_sample` fits on that many seeded rows.
    """

    def __init__(
        self,
        estimator: Any = None,
        model: str = "",
        code: str | None = None,
        max_gather_mb: float = MAX_GATHER_MB,
        fit_sample: int | None = None,
        seed: int = 0,
    ) -> None:
        self.estimator = estimator
        self.model = model
        self.code = code
        self.max_gather_mb = max_gather_mb
        self.fit_sample = fit_sample
        self.seed = seed

    def __sklearn_tags__(self) -> Any:
        return get_tags(self.estimator)

    def fit(self, X: Any, y: Any = None) -> Self:
        """Fit a clone of the estimator on Blocks (gathered here) or on arrays as they are."""
        if isinstance(X, Blocks):
            if y is not None:
                raise ModelInputError("pass labels inside Blocks (their label column), not as y")
            x, y = gather_rows(X, self.max_gather_mb, self.fit_sample, self.seed, f"{self.model} fit")
            X = pd.DataFrame(x, columns=X.features) if X.named else x
        est = clone(self.estimator)
        supervised = is_classifier(est) or is_regressor(est)
        self.estimator_ = est.fit(X, y) if supervised or y is not None else est.fit(X)
        for name in ("classes_", "n_features_in_", "feature_names_in_"):
            if hasattr(self.estimator_, name):
                setattr(self, name, getattr(self.estimator_, name))
        self.train_rows_ = len(X)
        return self

    @property
    def feature_importances_(self) -> np.ndarray:
        check_is_fitted(self)
        return self.estimator_.feature_importances_

    def _call(self, method: str, X: Any) -> np.ndarray:
        check_is_fitted(self)
        if not isinstance(X, Blocks):
            return getattr(self.estimator_, method)(X)
        blob = dumps(self.estimator_)
        names = tuple(self.feature_names_in_) if hasattr(self, "feature_names_in_") else None
        digest = hashlib.sha256(blob).hexdigest()
        parts = X.map(Shipped(blob, digest, self.model, self.code, method, names))
        parts = [p for p in parts if len(p)]
        return np.concatenate(parts) if parts else np.empty(0)

    def predict(self, X: Any) -> np.ndarray:
        """Predictions, per block where it lives (Blocks) or for an array."""
        return self._call("predict", X)

    @available_if(_has("predict_proba"))
    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, per block where it lives."""
        return self._call("predict_proba", X)

    @available_if(_has("decision_function"))
    def decision_function(self, X: Any) -> np.ndarray:
        """Decision scores, per block where it lives."""
        return self._call("decision_function", X)

    @available_if(_has("transform"))
    def transform(self, X: Any) -> np.ndarray:
        """The fitted transform, per block where it lives."""
        return self._call("transform", X)

    def score(self, X: Any, y: Any = None) -> float:
        """The estimator's own score (labels from the Blocks when given Blocks)."""
        if isinstance(X, Blocks):
            y = gather(X, lambda block: block["y"]) if X.label is not None else None
            x = np.concatenate(X.map(lambda block: block["x"]))
            X = _frame(x, getattr(self, "feature_names_in_", None))
        return float(self.estimator_.score(X, y))


def build(
    model: str,
    params: dict[str, Any],
    code: str | None = None,
    max_gather_mb: float = MAX_GATHER_MB,
    fit_sample: int | None = None,
    seed: int = 0,
) -> Any:
    """A new estimator: a built-in family by name, or an imported class wrapped in External."""
    if not is_import_path(model):
        from pipelines.classical import ESTIMATORS

        return ESTIMATORS[model](**params)
    cls = import_estimator(model, code)
    return External(cls(**params), model, code, max_gather_mb, fit_sample, seed)


def inner(estimator: Any) -> Any:
    """The estimator whose parameters are checked: the wrapped one for External."""
    return estimator.estimator if isinstance(estimator, External) else estimator
