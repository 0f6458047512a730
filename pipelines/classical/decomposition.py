"""PCA from distributed column moments and truncated SVD by TSQR; choose k for a share of variance.

Both keep scikit-learn's attributes (components_, explained_variance_, explained_variance_ratio_,
singular_values_, n_components_) and, for choosing k, all_explained_variance_ratio_: the same ratio for
every component the data has, of which explained_variance_ratio_ is the first n_components_.
"""

from __future__ import annotations

from numbers import Integral
from typing import Any

import numpy as np
from sklearn.base import ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils._param_validation import Interval, RealNotInt
from sklearn.utils.validation import check_array, check_is_fitted

from pipelines.classical.base import Estimator
from pipelines.classical.data import Blocks, ModelInputError
from pipelines.classical.linalg import column_moments, tall_skinny_svd


def components_for_variance(ratio: np.ndarray, target: float) -> int:
    """Smallest k whose cumulative explained-variance ratio reaches target (e.g. 0.8-0.95)."""
    if not 0 < target <= 1:
        raise ModelInputError(f"variance target must be in (0, 1], got {target}")
    return min(len(ratio), int(np.searchsorted(np.cumsum(ratio), target - 1e-12)) + 1)


def _flip_signs(vt: np.ndarray) -> np.ndarray:
    """Make the largest-magnitude entry of each component positive (scikit-learn's svd_flip on Vt)."""
    signs = np.sign(vt[np.arange(len(vt)), np.abs(vt).argmax(axis=1)])
    return vt * np.where(signs == 0, 1.0, signs)[:, None]


class _Decomposition(ClassNamePrefixFeaturesOutMixin, TransformerMixin, Estimator):
    """Shared by PCA and TruncatedSVD: k for a share of variance, output feature names."""

    @property
    def _n_features_out(self) -> int:
        """Number of transformed output features."""
        return self.components_.shape[0]

    def components_for(self, target: float) -> int:
        """k for a target share of variance, from the full spectrum."""
        check_is_fitted(self)
        return components_for_variance(self.all_explained_variance_ratio_, target)


class PCA(_Decomposition):
    """Principal components from the covariance of all rows; n_components an int, a variance share or None."""

    _what = "PCA"
    _parameter_constraints: dict[str, list[Any]] = {
        "n_components": [
            Interval(Integral, 1, None, closed="left"),
            Interval(RealNotInt, 0, 1, closed="neither"),
            None,
        ],
        "whiten": ["boolean"],
    }

    def __init__(self, n_components: int | float | None = None, whiten: bool = False) -> None:
        self.n_components = n_components
        self.whiten = whiten

    def _fit(self, blocks: Blocks) -> None:
        moments = column_moments(blocks)
        if moments.n < 2:
            raise ModelInputError(f"PCA needs at least 2 rows, got {moments.n}")
        values, vectors = np.linalg.eigh(moments.covariance)
        order = np.argsort(values)[::-1]
        values = np.clip(values[order], 0.0, None)
        vt = _flip_signs(vectors[:, order].T)
        total = values.sum()
        ratio = values / total if total > 0 else np.zeros_like(values)
        rank = min(moments.n, blocks.n_features)
        k = self._k(ratio, rank)
        self.mean_ = moments.mean
        self.n_samples_ = moments.n
        self.components_ = vt[:k]
        self.explained_variance_ = values[:k]
        self.explained_variance_ratio_ = ratio[:k]
        self.singular_values_ = np.sqrt(values[:k] * (moments.n - 1))
        self.noise_variance_ = float(values[k:rank].mean()) if k < rank else 0.0
        self.all_explained_variance_ratio_ = ratio[:rank]
        self.n_components_ = k

    def _k(self, ratio: np.ndarray, rank: int) -> int:
        nc = self.n_components
        if nc is None:
            return rank
        if isinstance(nc, float):
            return components_for_variance(ratio, nc)
        if nc > rank:
            raise ModelInputError(f"PCA: n_components={nc} must be between 1 and min(n_samples, n_features)={rank}")
        return int(nc)

    def transform(self, X: Any) -> np.ndarray:
        """Scores: centred rows projected on the components (divided by their spread when whiten)."""
        check_is_fitted(self)
        mean, comps = self.mean_, self.components_
        scale = np.sqrt(np.where(self.explained_variance_ > 0, self.explained_variance_, 1.0)) if self.whiten else None

        def project(block: dict) -> np.ndarray:
            z = (block["x"] - mean) @ comps.T
            return z / scale if scale is not None else z

        return self._per_block(X, project)

    def inverse_transform(self, X: Any) -> np.ndarray:
        """Map scores back to feature space."""
        check_is_fitted(self)
        z = check_array(X, dtype=np.float64)
        if self.whiten:
            z = z * np.sqrt(self.explained_variance_)
        return z @ self.components_ + self.mean_


class TruncatedSVD(_Decomposition):
    """SVD of the (uncentred) feature matrix by TSQR: singular values and right vectors in one pass.

    explained_variance_ is the variance of each projection and explained_variance_ratio_ its share of the
    total variance, as scikit-learn defines them (a second pass for the column moments).
    """

    _what = "truncated SVD"
    _parameter_constraints: dict[str, list[Any]] = {"n_components": [Interval(Integral, 1, None, closed="left"), None]}

    def __init__(self, n_components: int | None = None) -> None:
        self.n_components = n_components

    def _fit(self, blocks: Blocks) -> None:
        k = self.n_components or blocks.n_features
        if k > blocks.n_features:
            raise ModelInputError(f"truncated SVD: n_components={k} must be <= n_features={blocks.n_features}")
        result = tall_skinny_svd(blocks)
        vt = _flip_signs(result.vt)
        moments = column_moments(blocks)
        covariance = moments.scatter / moments.n  # ddof = 0, as np.var
        variance = np.einsum("ij,jk,ik->i", vt, covariance, vt)
        total = float(np.trace(covariance))
        ratio = variance / total if total > 0 else np.zeros_like(variance)
        k = min(k, len(result.s))
        self.components_ = vt[:k]
        self.singular_values_ = result.s[:k]
        self.explained_variance_ = variance[:k]
        self.explained_variance_ratio_ = ratio[:k]
        self.all_explained_variance_ratio_ = ratio
        self.n_components_ = k

    def transform(self, X: Any) -> np.ndarray:
        """Projections on the right singular vectors (U S)."""
        check_is_fitted(self)
        comps = self.components_
        return self._per_block(X, lambda block: block["x"] @ comps.T)

    def inverse_transform(self, X: Any) -> np.ndarray:
        """Map projections back to feature space."""
        check_is_fitted(self)
        return check_array(X, dtype=np.float64) @ self.components_
