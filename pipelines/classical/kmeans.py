"""K-means with scalable k-means|| initialisation (Bahmani et al. 2012) and distributed Lloyd iterations."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from numbers import Integral, Real
from typing import Any

import numpy as np
from sklearn.base import ClassNamePrefixFeaturesOutMixin, ClusterMixin, TransformerMixin
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_is_fitted

from pipelines.classical.base import Estimator, seed_of
from pipelines.classical.data import Blocks, ModelInputError, block_seed, gather
from pipelines.engines.base import Block

log = logging.getLogger(__name__)


CHUNK = 4096  # rows per step of the distance kernels: a chunk's scores (CHUNK x k) stay in the CPU's cache


def _scores(x: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """|c|^2 - 2 x.c for every row and center: the squared distance less |x|^2 (enough to rank centers)."""
    return x @ (-2.0 * centers.T) + (centers * centers).sum(axis=1)[None, :]


def _sq_distances(x: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances, rows of x against centers (clipped at 0)."""
    return np.maximum(np.einsum("ij,ij->i", x, x)[:, None] + _scores(x, centers), 0.0)


def _chunked_scores(x: np.ndarray, centers: np.ndarray) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(start, rows, scores) per chunk of x, the scores in one reused buffer: use each before the next."""
    # a fresh array per chunk would be a page-faulting mmap each time where malloc's trim threshold is set, as it
    # is in Dask's workers (2.4x slower there)
    m2c = np.ascontiguousarray(-2.0 * centers.T)
    cc = (centers * centers).sum(axis=1)
    buf = np.empty((min(CHUNK, len(x)), len(centers)))
    for i in range(0, len(x), CHUNK):
        xs = x[i : i + CHUNK]
        score = buf[: len(xs)]
        np.matmul(xs, m2c, out=score)
        score += cc
        yield i, xs, score


def _nearest_index(x: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Index of each row's nearest center."""
    idx = np.empty(len(x), dtype=np.intp)
    for i, xs, score in _chunked_scores(x, centers):
        score.argmin(axis=1, out=idx[i : i + len(xs)])
    return idx


def _nearest(x: np.ndarray, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of and squared distance to each row's nearest center."""
    idx = np.empty(len(x), dtype=np.intp)
    d2 = np.empty(len(x))
    for i, xs, score in _chunked_scores(x, centers):
        j = idx[i : i + len(xs)]
        score.argmin(axis=1, out=j)
        d2[i : i + len(xs)] = np.take_along_axis(score, j[:, None], axis=1)[:, 0] + np.einsum("ij,ij->i", xs, xs)
    return idx, np.maximum(d2, 0.0, out=d2)


def _cluster_sums(x: np.ndarray, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per nearest center: the sum of its rows and their count (one Lloyd step's share of a block)."""
    k = len(centers)
    sums = np.zeros_like(centers)
    counts = np.zeros(k, dtype=np.intp)
    clusters = np.arange(k)
    hot = np.empty((min(CHUNK, len(x)), k))  # one-hot rows, reused like the scores
    for _, xs, score in _chunked_scores(x, centers):
        j = score.argmin(axis=1)
        counts += np.bincount(j, minlength=k)
        onehot = hot[: len(xs)]
        np.equal(j[:, None], clusters, out=onehot)
        sums += onehot.T @ xs
    return sums, counts


def _weighted_kmeanspp(points: np.ndarray, weights: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding on weighted candidates followed by weighted Lloyd refinement (all local)."""
    centers = [points[rng.choice(len(points), p=weights / weights.sum())]]
    dist = _sq_distances(points, np.array(centers))[:, 0]
    for _ in range(1, k):
        prob = weights * dist
        total = prob.sum()
        i = rng.choice(len(points), p=prob / total) if total > 0 else rng.integers(len(points))
        centers.append(points[i])
        dist = np.minimum(dist, _sq_distances(points, points[i][None, :])[:, 0])
    centers_arr = np.array(centers)
    for _ in range(100):
        idx = _nearest_index(points, centers_arr)
        new = centers_arr.copy()
        for j in range(k):
            w = weights[idx == j]
            if w.sum() > 0:
                new[j] = (points[idx == j] * w[:, None]).sum(axis=0) / w.sum()
        if np.allclose(new, centers_arr, rtol=0, atol=1e-12):
            break
        centers_arr = new
    return centers_arr


class KMeans(ClassNamePrefixFeaturesOutMixin, TransformerMixin, ClusterMixin, Estimator):
    """K-means (Lloyd) with k-means|| initialisation; best of n_init runs by inertia.

    labels_ is set when the input is in this process (arrays, or local Blocks); for blocks on an engine,
    predict(blocks) gives the labels where the rows live.
    """

    _what = "k-means"
    _parameter_constraints: dict[str, list[Any]] = {
        "n_clusters": [Interval(Integral, 1, None, closed="left")],
        "n_init": [Interval(Integral, 1, None, closed="left")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "init_steps": [Interval(Integral, 1, None, closed="left")],
        "oversampling": [Interval(Real, 0, None, closed="neither")],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        n_clusters: int = 8,
        n_init: int = 3,
        max_iter: int = 300,
        tol: float = 1e-4,
        init_steps: int = 2,
        oversampling: float = 2.0,
        random_state: int | np.random.RandomState | None = 0,
    ) -> None:
        self.n_clusters = n_clusters
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.init_steps = init_steps
        self.oversampling = oversampling
        self.random_state = random_state

    def _fit(self, blocks: Blocks) -> None:
        k = self.n_clusters
        if k > blocks.n_rows:
            raise ModelInputError(f"k-means: n_clusters={k} is larger than the number of rows ({blocks.n_rows})")
        random_state = seed_of(self.random_state)
        # tol is relative to the data's mean variance, as in scikit-learn; the first run's first pick rides along
        first = self._first_draw(blocks, random_state * 1000)[2]

        def moments(block: Block) -> tuple[int, np.ndarray, np.ndarray, np.ndarray | None]:
            x = block["x"]
            return len(x), x.sum(0), (x**2).sum(0), x[first] if first < len(x) else None

        variances = blocks.map(moments)
        n = sum(v[0] for v in variances)
        mean = sum(v[1] for v in variances) / n
        tol = self.tol * float(np.mean(sum(v[2] for v in variances) / n - mean**2))
        best: tuple[float, np.ndarray, int, np.ndarray] | None = None
        for run in range(self.n_init):
            seed = random_state * 1000 + run
            centers = self._init_parallel(blocks, seed, [v[3] for v in variances] if run == 0 else None)
            centers, inertia, iters, sizes = self._lloyd(blocks, centers, tol)
            log.info("k-means run %d: inertia %.6g after %d iterations", run, inertia, iters)
            if best is None or inertia < best[0]:
                best = (inertia, centers, iters, sizes)
        assert best is not None
        self.inertia_, self.cluster_centers_, self.n_iter_, self.cluster_sizes_ = best
        if blocks.engine is None:
            centers = self.cluster_centers_
            self.labels_ = gather(blocks, lambda block: _nearest_index(block["x"], centers))
        else:
            self.__dict__.pop("labels_", None)  # a fit on an engine does not gather one label per row

    @property
    def _n_features_out(self) -> int:
        """Number of transformed output features (distances to each centre)."""
        return self.cluster_centers_.shape[0]

    @staticmethod
    def _first_draw(blocks: Blocks, seed: int) -> tuple[np.random.Generator, int, int]:
        """The generator of a run, and the block and row of its first centre (uniform over all rows)."""
        rng = np.random.default_rng(seed)
        sizes = np.array(blocks.rows_per_block)
        first_block = int(rng.choice(len(sizes), p=sizes / sizes.sum()))
        return rng, first_block, int(rng.integers(sizes[first_block]))

    def _init_parallel(self, blocks: Blocks, seed: int, picks: list[np.ndarray | None] | None = None) -> np.ndarray:
        """k-means||: oversample about oversampling*k points per round in proportion to their cost."""
        k = self.n_clusters
        rng, first_block, offset = self._first_draw(blocks, seed)
        if picks is None:  # row `offset` of every block (the first centre is one of them)
            picks = blocks.map(lambda block: block["x"][offset] if offset < len(block["x"]) else None)
        centers = np.array([picks[first_block]])
        ell = self.oversampling * self.n_clusters
        step = 0
        # init_steps rounds, and more (up to 10 in all) while there are fewer distinct candidates than clusters
        while step < self.init_steps or (step < max(10, self.init_steps) and len(np.unique(centers, axis=0)) < k):
            cost = sum(blocks.map(lambda block: float(_nearest(block["x"], centers)[1].sum())))
            if cost <= 0:
                break

            def sample(block: Block, step: int = step, cost: float = cost, c: np.ndarray = centers) -> np.ndarray:
                d2 = _nearest(block["x"], c)[1]
                keep = block_seed(block, seed, step).random(len(d2)) < ell * d2 / cost
                return block["x"][keep]

            new = np.vstack(blocks.map(sample))
            centers = np.vstack([centers, new])
            step += 1
        weights = np.sum(
            blocks.map(lambda block: np.bincount(_nearest_index(block["x"], centers), minlength=len(centers))), axis=0
        ).astype(float)
        unique, where = np.unique(centers, axis=0, return_index=True)
        if len(unique) < k:
            raise ModelInputError(
                f"k-means: only {len(unique)} distinct points were found for n_clusters={self.n_clusters}; "
                "lower n_clusters"
            )
        return _weighted_kmeanspp(centers[where], weights[where], self.n_clusters, rng)

    def _lloyd(self, blocks: Blocks, centers: np.ndarray, tol: float) -> tuple[np.ndarray, float, int, np.ndarray]:
        """Lloyd passes until the centres move less than tol; then inertia and sizes under the final centres."""
        k = len(centers)
        iterations = 0
        while iterations < self.max_iter:
            iterations += 1
            c = centers

            def step(block: Block, c: np.ndarray = c) -> tuple[np.ndarray, np.ndarray]:
                return _cluster_sums(block["x"], c)

            parts = blocks.map(step)
            sums = sum((p[0] for p in parts), np.zeros_like(centers))
            counts = sum((p[1] for p in parts), np.zeros(k, dtype=np.intp))
            new = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], centers)
            shift = float(((new - centers) ** 2).sum())
            centers = new
            if shift <= tol:
                break

        def assign(block: Block) -> tuple[float, np.ndarray]:
            idx, d2 = _nearest(block["x"], centers)
            return float(d2.sum()), np.bincount(idx, minlength=k)

        assigned = blocks.map(assign)
        return centers, sum(p[0] for p in assigned), iterations, np.sum([p[1] for p in assigned], axis=0)

    def fit_predict(self, X: Any, y: Any = None) -> np.ndarray:
        """Fit, then the index of each row's nearest centre."""
        self.fit(X)
        return self.labels_ if hasattr(self, "labels_") else self.predict(X)

    def predict(self, X: Any) -> np.ndarray:
        """Index of each row's nearest centre."""
        check_is_fitted(self)
        centers = self.cluster_centers_
        return self._per_block(X, lambda block: _nearest_index(block["x"], centers))

    def transform(self, X: Any) -> np.ndarray:
        """Distances from each row to every centre."""
        check_is_fitted(self)
        centers = self.cluster_centers_
        return self._per_block(X, lambda block: np.sqrt(_sq_distances(block["x"], centers)))

    def score(self, X: Any, y: Any = None) -> float:
        """Negative inertia of X under the fitted centres (scikit-learn's convention)."""
        check_is_fitted(self)
        centers = self.cluster_centers_
        return -float(self._per_block(X, lambda block: _nearest(block["x"], centers)[1]).sum())


def elbow(X: Blocks | Any, ks: list[int], **params: Any) -> dict[int, float]:
    """Inertia for each k (the elbow curve)."""
    return {k: KMeans(n_clusters=k, **params).fit(X).inertia_ for k in ks}
