"""What every distributed estimator shares: scikit-learn's parameter and input validation, for Blocks or arrays."""

from __future__ import annotations

from collections.abc import Callable
from numbers import Integral
from typing import Any, Self

import numpy as np
from sklearn.base import BaseEstimator, is_classifier, is_regressor
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from pipelines.classical.data import MAX_LEVELS, Blocks, ModelInputError, gather
from pipelines.engines.base import Block


def seed_of(random_state: Any) -> int:
    """An int seed from scikit-learn's random_state (int kept as is, so both engines draw alike)."""
    if isinstance(random_state, Integral):
        return int(random_state)
    return int(check_random_state(random_state).randint(np.iinfo(np.int32).max))


class Estimator(BaseEstimator):
    """Base class: fit validates params, then takes Blocks (labels in their label column) or arrays X, y."""

    _what = "model"  # how messages name the model
    _parameter_constraints: dict[str, list[Any]] = {}

    def fit(self, X: Any, y: Any = None) -> Self:
        """Fit on Blocks, or on an array-like X (n_samples, n_features) and, for supervised models, y."""
        self._validate_params()
        blocks, owned = self._fit_input(X, y)
        try:
            self._fit(blocks)
        finally:
            if owned:
                blocks.release()
        return self

    def _fit(self, blocks: Blocks) -> None:
        raise NotImplementedError

    def _fit_input(self, X: Any, y: Any) -> tuple[Blocks, bool]:
        """Validated input as Blocks (and whether we made them); sets n_features_in_ and, for classifiers, classes_."""
        supervised = is_classifier(self) or is_regressor(self)
        if isinstance(X, Blocks):
            if y is not None:
                raise ModelInputError("pass labels inside Blocks (their label column), not as y")
            if supervised and X.label is None:
                raise ModelInputError(f"{type(self).__name__} requires y to be passed, but the blocks have no label")
            self.n_features_in_ = X.n_features
            if X.named:
                self.feature_names_in_ = np.asarray(X.features, dtype=object)
            else:
                self.__dict__.pop("feature_names_in_", None)
            if is_classifier(self):
                if not X.labels:
                    raise ModelInputError(
                        f"{self._what}: the label has more than {MAX_LEVELS} distinct values, too many for classes"
                    )
                self._set_classes(np.asarray(X.labels, dtype=np.int64 if X.integer_labels else np.float64))
            return X, False
        names = [str(c) for c in X.columns] if hasattr(X, "columns") else None
        label = y.name if isinstance(getattr(y, "name", None), str) else None
        # non-finite X is left to the blocks' check, whose message names the row and column
        checks = {"dtype": np.float64, "ensure_min_samples": 2, "ensure_all_finite": False}
        if supervised:
            X, y = validate_data(self, X, y, y_numeric=is_regressor(self), **checks)
        else:
            X, y = validate_data(self, X, **checks), None
        if is_classifier(self):
            check_classification_targets(y)
            classes, y = np.unique(y, return_inverse=True)
            self._set_classes(classes)
        return Blocks.from_arrays(X, y, features=names, label=label), True

    def _set_classes(self, classes: np.ndarray) -> None:
        if len(classes) < 2:
            raise ModelInputError(f"{self._what} needs at least 2 classes in the label, found {len(classes)}")
        self.classes_ = classes

    def _per_block(self, X: Any, fn: Callable[[Block], np.ndarray]) -> np.ndarray:
        """fn(block) -> array on every block of X (Blocks, or one block of a validated array), in row order."""
        check_is_fitted(self)
        if not isinstance(X, Blocks):
            return fn({"x": validate_data(self, X, dtype=np.float64, reset=False)})
        if X.n_features != self.n_features_in_:
            raise ValueError(
                f"X has {X.n_features} features, but {type(self).__name__} is expecting {self.n_features_in_} "
                "features as input"
            )
        fitted = getattr(self, "feature_names_in_", None)
        if fitted is not None and X.named and list(fitted) != X.features:
            raise ValueError(f"The feature names should match those that were passed during fit: {list(fitted)}")
        return gather(X, fn)

    @staticmethod
    def _target(X: Any, y: Any) -> Any:
        """The true labels for score: Blocks carry their own, arrays come with y."""
        if isinstance(X, Blocks):
            if y is not None:
                raise ModelInputError("pass labels inside Blocks (their label column), not as y")
            return gather(X, lambda block: block["y"])
        return y
