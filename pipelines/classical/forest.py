"""Random forests grown in parallel: trees on bootstrap samples, by LightGBM's histogram splits or scikit-learn's."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from numbers import Integral, Real
from typing import Any, Literal

import numpy as np
from sklearn.base import ClassifierMixin, RegressorMixin
from sklearn.ensemble import RandomForestClassifier as SkForestClassifier
from sklearn.ensemble import RandomForestRegressor as SkForestRegressor
from sklearn.utils._param_validation import Interval, RealNotInt, StrOptions
from sklearn.utils.validation import check_is_fitted

from pipelines.classical.base import Estimator, seed_of
from pipelines.classical.data import Blocks, block_key, block_seed
from pipelines.classical.histogram_trees import grow_histogram_trees, lightgbm_params
from pipelines.engines.base import Block

log = logging.getLogger(__name__)

HISTOGRAM_ROWS = 100_000  # `auto` grows histogram trees from here on (binary labels or regression)


def allocate_trees(n_trees: int, rows: list[int]) -> list[int]:
    """Trees per block in proportion to its rows (largest remainders), every tree assigned exactly once."""
    rows_arr = np.asarray(rows, dtype=float)
    share = n_trees * rows_arr / rows_arr.sum()
    counts = np.floor(share).astype(int)
    for i in np.argsort(-(share - counts), kind="stable")[: n_trees - counts.sum()]:
        counts[i] += 1
    return counts.tolist()


class _Forest(Estimator):
    """Shared machinery: grow per-block sub-forests, keep their trees, average their outputs.

    learner: `exact` grows scikit-learn's trees; `histogram` finds each tree's splits with one LightGBM round
    on bootstrap-weighted rows (255-bin histograms, several times faster; `classical.histogram_trees`); `auto`
    uses histograms from HISTOGRAM_ROWS rows on for regression and binary labels.
    """

    _classifier = True
    _parameter_constraints: dict[str, list[Any]] = {
        "n_estimators": [Interval(Integral, 1, None, closed="left")],
        "max_depth": [Interval(Integral, 1, None, closed="left"), None],
        "min_samples_leaf": [
            Interval(Integral, 1, None, closed="left"),
            Interval(RealNotInt, 0.0, 1.0, closed="neither"),
        ],
        "max_features": [
            Interval(Integral, 1, None, closed="left"),
            Interval(RealNotInt, 0.0, 1.0, closed="right"),
            StrOptions({"sqrt", "log2"}),
            None,
        ],
        "bootstrap": ["boolean"],
        "random_state": ["random_state"],
        "sampling": [StrOptions({"auto", "global", "local"})],
        "max_gather_mb": [Interval(Real, 0, None, closed="left")],
        "learner": [StrOptions({"auto", "histogram", "exact"})],
    }

    def __init__(
        self,
        n_estimators: int = 100,
        max_depth: int | None = None,
        min_samples_leaf: int | float = 1,
        max_features: str | float | int | None = "sqrt",
        bootstrap: bool = True,
        random_state: int | np.random.RandomState | None = 0,
        sampling: Literal["auto", "global", "local"] = "auto",
        max_gather_mb: float = 256.0,
        learner: Literal["auto", "histogram", "exact"] = "auto",
    ) -> None:
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.min_samples_leaf = min_samples_leaf
        self.max_features = max_features
        self.bootstrap = bootstrap
        self.random_state = random_state
        self.sampling = sampling
        self.max_gather_mb = max_gather_mb
        self.learner = learner

    def _fit(self, blocks: Blocks) -> None:
        labels = np.asarray(blocks.labels, dtype=float)  # the label values the blocks hold, in classes_ order
        params = {
            "max_depth": self.max_depth,
            "min_samples_leaf": self.min_samples_leaf,
            "max_features": self.max_features,
            "bootstrap": self.bootstrap,
            "n_jobs": 1,
        }
        factory = SkForestClassifier if self._classifier else SkForestRegressor
        max_depth, min_leaf, max_features = self.max_depth, self.min_samples_leaf, self.max_features
        n_features, classifier, bootstrap = blocks.n_features, self._classifier, self.bootstrap
        possible = not classifier or len(blocks.labels) <= 2
        if self.learner == "histogram" and not possible:
            log.warning("histogram trees take two classes at most; growing exact trees for %d", len(blocks.labels))
        wanted = self.learner == "histogram" or (self.learner == "auto" and blocks.n_rows >= HISTOGRAM_ROWS)
        use_histogram = possible and wanted

        def grow_on(x: np.ndarray, y: np.ndarray, count: int, state: int) -> tuple[list[Any], np.ndarray | None]:
            if use_histogram:
                lgb = lightgbm_params(max_depth, min_leaf, max_features, n_rows=len(x), n_features=n_features)
                return grow_histogram_trees(x, y, count, lgb, bootstrap, state, classifier)
            return _grow(factory(n_estimators=count, random_state=state, **params), x, y)

        size_mb = blocks.n_rows * (blocks.n_features + 1) * 8 / 2**20
        mode = self.sampling if self.sampling != "auto" else ("global" if size_mb <= self.max_gather_mb else "local")
        seed = seed_of(self.random_state)
        grow = self._grow_global if mode == "global" else self._grow_local
        grown = grow(blocks, grow_on, seed)
        self.sampling_ = mode
        self.learner_ = "histogram" if use_histogram else "exact"
        self.trees_: list[Any] = []
        self.tree_columns_: list[np.ndarray] = []
        for trees, classes in grown:
            for tree in trees:
                self.trees_.append(tree)
                if classes is not None:
                    self.tree_columns_.append(np.searchsorted(labels, classes))
        self.feature_importances_ = _importances(self.trees_, blocks.n_features)

    def _grow_local(self, blocks: Blocks, grow_on: Any, seed: int) -> list[tuple[list[Any], Any]]:
        """Each block grows its share of trees on bootstrap samples of its own rows (no data moves)."""
        trees = dict(zip(blocks.keys, allocate_trees(self.n_estimators, blocks.rows_per_block), strict=True))

        def grow(block: Block) -> tuple[list[Any], np.ndarray | None]:
            count = trees[block_key(block)]
            if count == 0 or len(block["x"]) == 0:
                return [], None
            state = int(block_seed(block, seed).integers(2**31 - 1))
            return grow_on(block["x"], block["y"], count, state)

        return blocks.map(grow)

    def _grow_global(self, blocks: Blocks, grow_on: Any, seed: int) -> list[tuple[list[Any], Any]]:
        """Tasks across the workers each grow a group of trees on bootstrap samples of all rows."""
        parts = blocks.map(lambda block: (block["x"], block["y"]))
        x = np.vstack([p[0] for p in parts])
        y = np.concatenate([p[1] for p in parts])
        workers = blocks.parallelism
        counts = [c for c in allocate_trees(self.n_estimators, [1] * min(self.n_estimators, workers)) if c]

        def grow(group: tuple[int, int]) -> tuple[list[Any], np.ndarray | None]:
            index, count = group
            state = int(np.random.default_rng([seed, index]).integers(2**31 - 1))
            return grow_on(x, y, count, state)

        groups = list(enumerate(counts))
        if blocks.engine is None:  # in this process: the groups on threads (tree fitting releases the GIL)
            with ThreadPoolExecutor(max_workers=workers) as pool:
                return list(pool.map(grow, groups))
        return blocks.engine.run_tasks(grow, groups)

    def _tree_outputs(self, X: Any) -> np.ndarray:
        """Average of the trees' outputs: class probabilities (classifier) or values (regressor)."""
        check_is_fitted(self)
        trees, columns = self.trees_, self.tree_columns_
        width = len(self.classes_) if self._classifier else 1

        def average(block: Block) -> np.ndarray:
            x32 = np.ascontiguousarray(block["x"], dtype=np.float32)
            total = np.zeros((len(x32), width))
            for i, tree in enumerate(trees):
                value = tree.predict(x32).reshape(len(x32), -1)
                if columns:
                    value = value / np.maximum(value.sum(axis=1, keepdims=True), 1e-300)
                    total[:, columns[i]] += value
                else:
                    total[:, 0] += value[:, 0]
            return total / len(trees)

        return self._per_block(X, average)


def _grow(forest: Any, x: np.ndarray, y: np.ndarray) -> tuple[list[Any], np.ndarray | None]:
    """Fit a scikit-learn forest; keep only its trees' structures and its classes (what the driver needs)."""
    forest.fit(x, y)
    return [estimator.tree_ for estimator in forest.estimators_], getattr(forest, "classes_", None)


def _importances(trees: list[Any], n_features: int) -> np.ndarray:
    """Mean impurity-decrease importance over trees that split at least once (scikit-learn's rule)."""
    used = [t.compute_feature_importances() for t in trees if t.node_count > 1]
    if not used:
        return np.zeros(n_features)
    mean = np.mean(used, axis=0)
    return mean / mean.sum() if mean.sum() > 0 else mean


class RandomForestClassifier(ClassifierMixin, _Forest):
    """Classification forest; predict_proba averages the trees' class proportions."""

    _what = "random forest classifier"
    _classifier = True

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, columns in classes_ order."""
        return self._tree_outputs(X)

    def predict_log_proba(self, X: Any) -> np.ndarray:
        """Log class probabilities (-inf where no tree votes for a class)."""
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def predict(self, X: Any) -> np.ndarray:
        """The class with the highest mean probability, a value of classes_."""
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]

    def score(self, X: Any, y: Any = None, sample_weight: Any = None) -> float:
        """Accuracy (Blocks: against their label column)."""
        return super().score(X, self._target(X, y), sample_weight=sample_weight)


class RandomForestRegressor(RegressorMixin, _Forest):
    """Regression forest; predict averages the trees."""

    _what = "random forest regressor"
    _classifier = False

    def __init__(
        self,
        n_estimators: int = 100,
        max_depth: int | None = None,
        min_samples_leaf: int | float = 1,
        max_features: str | float | int | None = 1.0,
        bootstrap: bool = True,
        random_state: int | np.random.RandomState | None = 0,
        sampling: Literal["auto", "global", "local"] = "auto",
        max_gather_mb: float = 256.0,
        learner: Literal["auto", "histogram", "exact"] = "auto",
    ) -> None:
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.min_samples_leaf = min_samples_leaf
        self.max_features = max_features
        self.bootstrap = bootstrap
        self.random_state = random_state
        self.sampling = sampling
        self.max_gather_mb = max_gather_mb
        self.learner = learner

    def predict(self, X: Any) -> np.ndarray:
        """Mean of the trees' predictions."""
        return self._tree_outputs(X)[:, 0]

    def score(self, X: Any, y: Any = None, sample_weight: Any = None) -> float:
        """R² (Blocks: against their label column)."""
        return super().score(X, self._target(X, y), sample_weight=sample_weight)
