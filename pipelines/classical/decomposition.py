"""PCA from distributed column moments and truncated SVD by TSQR; choose k for a share of variance."""

from __future__ import annotations

from typing import Any

import numpy as np

from pipelines.classical.base import Estimator
from pipelines.classical.data import Blocks
from pipelines.classical.linalg import column_moments, tall_skinny_svd
from pipelines.errors import DataError


def components_for_variance(ratio: np.ndarray, target: float) -> int:
    """Smallest k whose cumulative explained-variance ratio reaches target (e.g. 0.8-0.95)."""
    if not 0 < target <= 1:
        raise DataError(f"variance target must be in (0, 1], got {target}")
    return int(min(len(ratio), np.searchsorted(np.cumsum(ratio), target - 1e-12) + 1))


def _flip_signs(vt: np.ndarray) -> np.ndarray:
    """Make the largest-magnitude entry of each component positive (scikit-learn's svd_flip on Vt)."""
    signs = np.sign(vt[np.arange(len(vt)), np.abs(vt).argmax(axis=1)])
    return vt * np.where(signs == 0, 1.0, signs)[:, None]


class PCA(Estimator):
    """Principal components from the covariance of all rows; n_components an int, a variance share or None."""

    _supervised = False

    def __init__(self, n_components: int | float | None = None, whiten: bool = False) -> None:
        self.n_components = n_components
        self.whiten = whiten

    def _fit(self, blocks: Blocks) -> None:
        moments = column_moments(blocks)
        if moments.n < 2:
            raise DataError(f"PCA needs at least 2 rows, got {moments.n}")
        values, vectors = np.linalg.eigh(moments.covariance)
        order = np.argsort(values)[::-1]
        values = np.clip(values[order], 0.0, None)
        vt = _flip_signs(vectors[:, order].T)
        total = values.sum()
        ratio = values / total if total > 0 else np.zeros_like(values)
        k = self._k(ratio, moments.n, blocks.n_features)
        self.mean_ = moments.mean
        self.n_samples_ = moments.n
        self.components_ = vt[:k]
        self.explained_variance_ = values[:k]
        self.explained_variance_ratio_ = ratio[:k]
        self.singular_values_ = np.sqrt(values[:k] * (moments.n - 1))
        self.all_explained_variance_ratio_ = ratio
        self.n_components_ = k
        self.n_features_in_ = blocks.n_features
        self.feature_names_in_ = np.array(blocks.features, dtype=object)

    def _k(self, ratio: np.ndarray, n: int, p: int) -> int:
        nc = self.n_components
        if nc is None:
            return min(n, p)
        if isinstance(nc, float) and 0 < nc < 1:
            return components_for_variance(ratio, nc)
        if int(nc) != nc or not 1 <= nc <= min(n, p):
            raise DataError(f"PCA: n_components={nc} must be an int in [1, {min(n, p)}] or a share in (0, 1)")
        return int(nc)

    def components_for(self, target: float) -> int:
        """k for a target share of variance, from the full spectrum."""
        self._check_fitted("all_explained_variance_ratio_")
        return components_for_variance(self.all_explained_variance_ratio_, target)

    def transform(self, x: Any) -> np.ndarray:
        """Scores: centred rows projected on the components."""
        self._check_fitted("components_")
        mean, comps = self.mean_, self.components_
        scale = np.sqrt(self.explained_variance_) if self.whiten else None

        def project(block: dict) -> np.ndarray:
            z = (block["x"] - mean) @ comps.T
            return z / scale if scale is not None else z

        return self._per_block(x, project)

    def fit_transform(self, x: Any, y: Any = None) -> np.ndarray:
        """Fit, then return the scores of x."""
        return self.fit(x).transform(x)

    def inverse_transform(self, z: np.ndarray) -> np.ndarray:
        """Map scores back to feature space."""
        if self.whiten:
            z = z * np.sqrt(self.explained_variance_)
        return z @ self.components_ + self.mean_


class TruncatedSVD(Estimator):
    """SVD of the (uncentred) feature matrix by TSQR: singular values and right vectors, one pass."""

    _supervised = False

    def __init__(self, n_components: int | None = None) -> None:
        self.n_components = n_components

    def _fit(self, blocks: Blocks) -> None:
        result = tall_skinny_svd(blocks, self.n_components)
        self.singular_values_ = result.s
        self.components_ = _flip_signs(result.vt)
        energy = result.s**2
        self.explained_energy_ratio_ = energy / energy.sum() if energy.sum() > 0 else energy
        self.n_features_in_ = blocks.n_features

    def transform(self, x: Any) -> np.ndarray:
        """Projections on the right singular vectors (U S)."""
        self._check_fitted("components_")
        comps = self.components_
        return self._per_block(x, lambda block: block["x"] @ comps.T)
