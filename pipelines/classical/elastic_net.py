"""Elastic net and lasso: one pass for the centred Gram matrix, then coordinate descent on it in the driver."""

from __future__ import annotations

import logging
from numbers import Integral, Real
from typing import Any

import numpy as np
from sklearn.base import RegressorMixin
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_is_fitted

from pipelines.classical.base import Estimator
from pipelines.classical.data import Blocks
from pipelines.engines.base import Block

log = logging.getLogger(__name__)


def _block_gram(centre: bool) -> Any:
    """fn(block) -> (n, mean of [x, y], co-moment matrix of [x, y]): centred within the block when centre."""

    def part(block: Block) -> tuple[int, np.ndarray, np.ndarray]:
        a = np.column_stack([block["x"], block["y"]])
        mean = a.mean(axis=0) if centre and len(a) else np.zeros(a.shape[1])
        c = a - mean
        return len(a), mean, c.T @ c

    return part


def combine_gram(parts: list[tuple[int, np.ndarray, np.ndarray]]) -> tuple[int, np.ndarray, np.ndarray]:
    """Chan et al.'s pairwise combination of (n, mean, co-moment) per block: exact, no cancellation."""
    n, mean, m = 0, None, None
    for nb, mb, cb in parts:
        if nb == 0:
            continue
        if mean is None:
            n, mean, m = nb, mb, cb
            continue
        delta = mb - mean
        total = n + nb
        m = m + cb + np.outer(delta, delta) * (n * nb / total)
        mean = mean + delta * (nb / total)
        n = total
    assert mean is not None and m is not None
    return n, mean, m


def duality_gap(w: np.ndarray, qw: np.ndarray, q: np.ndarray, yy: float, l1: float, l2: float, positive: bool) -> float:
    """The elastic net's duality gap in Gram form (scikit-learn's formulation for its Gram solver)."""
    xta = q - qw - l2 * w
    r_norm2 = yy + w @ qw - 2.0 * (q @ w)
    if l1 == 0:
        return float(np.max(np.abs(xta), initial=0.0))
    dual_norm = np.max(xta, initial=0.0) if positive else np.max(np.abs(xta), initial=0.0)
    const = l1 / dual_norm if dual_norm > l1 else 1.0
    a_norm2 = r_norm2 * const**2
    gap = 0.5 * (r_norm2 + a_norm2) + l1 * np.abs(w).sum() - const * (yy - q @ w)
    return float(gap + 0.5 * l2 * (1 + const**2) * (w @ w))


def coordinate_descent(
    gram: np.ndarray, q: np.ndarray, yy: float, l1: float, l2: float, max_iter: int, tol: float, positive: bool
) -> tuple[np.ndarray, float, int]:
    """Minimize w'Gw/2 - q'w + l1|w|_1 + l2|w|²/2 cyclically; stop when the duality gap is below tol * y'y."""
    p = len(q)
    w = np.zeros(p)
    qw = np.zeros(p)
    diag = np.diag(gram)
    gap_tol = tol * yy
    gap = np.inf
    for it in range(1, max_iter + 1):
        w_max = d_max = 0.0
        for j in range(p):
            if diag[j] == 0.0:
                continue
            old = w[j]
            rho = q[j] - qw[j] + diag[j] * old
            new = np.sign(rho) * max(abs(rho) - l1, 0.0) / (diag[j] + l2)
            if positive and new < 0:
                new = 0.0
            if new != old:
                qw += gram[:, j] * (new - old)
                w[j] = new
            d_max = max(d_max, abs(new - old))
            w_max = max(w_max, abs(new))
        if w_max == 0.0 or d_max / w_max <= tol or it == max_iter:
            gap = duality_gap(w, qw, q, yy, l1, l2, positive)
            if gap <= gap_tol:
                return w, gap, it
    return w, gap, max_iter


class ElasticNet(RegressorMixin, Estimator):
    """scikit-learn's ElasticNet objective, 1/(2n)|y - Xw - b|² + alpha l1_ratio |w|_1 + alpha (1 - l1_ratio) |w|²/2."""

    _what = "elastic net"
    _parameter_constraints: dict[str, list[Any]] = {
        "alpha": [Interval(Real, 0, None, closed="left")],
        "l1_ratio": [Interval(Real, 0, 1, closed="both")],
        "fit_intercept": ["boolean"],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "positive": ["boolean"],
    }

    def __init__(
        self,
        alpha: float = 1.0,
        l1_ratio: float = 0.5,
        fit_intercept: bool = True,
        max_iter: int = 1000,
        tol: float = 1e-4,
        positive: bool = False,
    ) -> None:
        self.alpha = alpha
        self.l1_ratio = l1_ratio
        self.fit_intercept = fit_intercept
        self.max_iter = max_iter
        self.tol = tol
        self.positive = positive

    def _ratio(self) -> float:
        return float(self.l1_ratio)

    def _fit(self, blocks: Blocks) -> None:
        n, mean, m = combine_gram(blocks.map(_block_gram(self.fit_intercept)))
        p = blocks.n_features
        gram, q, yy = m[:p, :p], m[:p, p], float(m[p, p])
        l1 = self.alpha * self._ratio() * n
        l2 = self.alpha * (1.0 - self._ratio()) * n
        w, gap, iters = coordinate_descent(gram, q, yy, l1, l2, self.max_iter, self.tol, self.positive)
        if gap > self.tol * yy:
            log.warning("%s did not converge in %d iterations (duality gap %.3g)", self._what, iters, gap)
        self.coef_ = w
        self.intercept_ = float(mean[p] - mean[:p] @ w) if self.fit_intercept else 0.0
        self.dual_gap_ = gap / n  # scikit-learn reports the gap of the 1/(2n)-scaled objective
        self.n_iter_ = iters

    def predict(self, X: Any) -> np.ndarray:
        """x'w + b for Blocks or arrays."""
        check_is_fitted(self)
        coef, intercept = self.coef_, self.intercept_
        return self._per_block(X, lambda block: block["x"] @ coef + intercept)

    def score(self, X: Any, y: Any = None, sample_weight: Any = None) -> float:
        """R² of the predictions (Blocks: against their label column)."""
        return super().score(X, self._target(X, y), sample_weight=sample_weight)


class Lasso(ElasticNet):
    """scikit-learn's Lasso objective: the elastic net with l1_ratio = 1."""

    _what = "lasso"
    _parameter_constraints: dict[str, list[Any]] = {
        k: v for k, v in ElasticNet._parameter_constraints.items() if k != "l1_ratio"
    }

    def __init__(
        self,
        alpha: float = 1.0,
        fit_intercept: bool = True,
        max_iter: int = 1000,
        tol: float = 1e-4,
        positive: bool = False,
    ) -> None:
        self.alpha = alpha
        self.fit_intercept = fit_intercept
        self.max_iter = max_iter
        self.tol = tol
        self.positive = positive

    def _ratio(self) -> float:
        return 1.0
