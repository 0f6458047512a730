"""Distributed linear algebra over row blocks: TSQR, tall-skinny SVD, column moments and covariance."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import linalg

from pipelines.classical.data import Blocks
from pipelines.engines.base import Block

Design = Callable[[Block], np.ndarray]


def with_intercept(x: np.ndarray) -> np.ndarray:
    """Prepend a column of ones."""
    return np.column_stack([np.ones(len(x)), x])


def design_matrix(x: np.ndarray, intercept: bool, target: np.ndarray | None = None) -> np.ndarray:
    """[1, x, target] (the parts asked for) as one new Fortran-ordered array, ready for an in-place QR."""
    lead, extra = int(intercept), int(target is not None)
    out = np.empty((len(x), lead + x.shape[1] + extra), order="F")
    if intercept:
        out[:, 0] = 1.0
    out[:, lead : lead + x.shape[1]] = x
    if target is not None:
        out[:, -1] = target
    return out


def _r_factor(a: np.ndarray, scratch: bool = False) -> np.ndarray:
    """R of a thin QR (LAPACK on a Fortran array; overwritten when it is scratch or a copy made here)."""
    if a.shape[0] == 0:
        return np.zeros((0, a.shape[1]))
    f = np.asfortranarray(a, dtype=np.float64)
    (_, _), r = linalg.qr(f, mode="raw", overwrite_a=scratch or f is not a, check_finite=False)
    return r


def tsqr_r(blocks: Blocks, design: Design, scratch: bool = False) -> np.ndarray:
    """The R factor of the stacked matrix [design(block) for block]: one pass, per-block QR, then a QR of the Rs.

    scratch: design returns a new array each call, which the QR may overwrite (no copy).
    """
    rs = blocks.map(lambda block: _r_factor(design(block), scratch))
    r = _r_factor(np.vstack(rs), scratch=True)
    signs = np.where(np.diag(r) < 0, -1.0, 1.0)
    return r * signs[:, None]


@dataclass
class SVDResult:
    """Singular values, right singular vectors (rows of vt) and, when asked, left singular vectors."""

    s: np.ndarray
    vt: np.ndarray
    u: np.ndarray | None = None


def tall_skinny_svd(blocks: Blocks, k: int | None = None, compute_u: bool = False) -> SVDResult:
    """SVD of the blocks' feature matrix via TSQR: A = QR, R = U_r S V^T, so A = (Q U_r) S V^T."""
    r = tsqr_r(blocks, lambda block: block["x"])
    _, s, vt = np.linalg.svd(r, full_matrices=False)
    k = k or len(s)
    s, vt = s[:k], vt[:k]
    u = None
    if compute_u:
        scale = np.where(s > s[0] * 1e-12, 1.0 / np.where(s > 0, s, 1.0), 0.0)
        u = np.vstack(blocks.map(lambda block: (block["x"] @ vt.T) * scale))
    return SVDResult(s, vt, u)


@dataclass
class Moments:
    """Row count, column means and the centred scatter matrix (sum of outer products of deviations)."""

    n: int
    mean: np.ndarray
    scatter: np.ndarray

    @property
    def covariance(self) -> np.ndarray:
        """Sample covariance (ddof = 1)."""
        return self.scatter / max(1, self.n - 1)


def _block_moments(x: np.ndarray) -> Moments:
    mean = x.mean(axis=0) if len(x) else np.zeros(x.shape[1])
    d = x - mean
    return Moments(len(x), mean, d.T @ d)


def combine(a: Moments, b: Moments) -> Moments:
    """Chan et al. pairwise combination of two blocks' moments."""
    if a.n == 0:
        return b
    if b.n == 0:
        return a
    n = a.n + b.n
    delta = b.mean - a.mean
    mean = a.mean + delta * (b.n / n)
    scatter = a.scatter + b.scatter + np.outer(delta, delta) * (a.n * b.n / n)
    return Moments(n, mean, scatter)


def column_moments(blocks: Blocks) -> Moments:
    """Means and scatter of the feature columns in one pass."""
    total = Moments(0, np.zeros(blocks.n_features), np.zeros((blocks.n_features, blocks.n_features)))
    for part in blocks.map(lambda block: _block_moments(block["x"])):
        total = combine(total, part)
    return total
