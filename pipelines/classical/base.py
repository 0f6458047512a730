"""What every distributed estimator shares: scikit-learn's parameter protocol and input handling."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator

from pipelines.classical.data import Blocks, as_blocks, gather
from pipelines.errors import DataError


class Estimator(BaseEstimator):
    """Base class: get_params/set_params from scikit-learn; fit takes Blocks or arrays."""

    _supervised = True

    def fit(self, x: Any, y: Any = None) -> Estimator:
        """Fit on Blocks (with a label column when supervised) or on arrays (x, y; y ignored if unsupervised)."""
        blocks, owned = as_blocks(x, y if self._supervised else None)
        try:
            if self._supervised and blocks.label is None:
                raise DataError(f"{type(self).__name__}.fit needs labels (y, or a label column)")
            self._fit(blocks)
        finally:
            if owned:
                blocks.release()
        return self

    def _fit(self, blocks: Blocks) -> None:
        raise NotImplementedError

    def summary(self) -> Any:
        """The fit's R-style summary (models that have one)."""
        self._check_fitted("summary_")
        return self.summary_

    def _check_fitted(self, attr: str) -> None:
        if not hasattr(self, attr):
            raise DataError(f"{type(self).__name__} is not fitted yet: call fit first")

    def _check_width(self, blocks: Blocks) -> None:
        expected = getattr(self, "n_features_in_", None)
        if expected is not None and blocks.n_features != expected:
            raise DataError(f"{type(self).__name__}: fitted on {expected} features, got {blocks.n_features}")

    def _per_block(self, x: Any, fn: Any) -> np.ndarray:
        """Apply fn(block) -> array to every block of x (Blocks or arrays) and concatenate in row order."""
        blocks, owned = as_blocks(x)
        self._check_width(blocks)
        try:
            return gather(blocks, fn)
        finally:
            if owned:
                blocks.release()

    @staticmethod
    def _labels(x: Any, y: Any) -> np.ndarray:
        """The true labels of x (from Blocks, or y)."""
        if isinstance(x, Blocks):
            return gather(x, lambda block: block["y"])
        if y is None:
            raise DataError("score needs y (or Blocks with a label column)")
        return np.asarray(y, dtype="float64")
