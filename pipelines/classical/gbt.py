"""Gradient-boosted trees by XGBoost, trained where the blocks live; saved in XGBoost's own JSON model format."""

from __future__ import annotations

from numbers import Integral, Real
from pathlib import Path
from typing import Any, Self

import numpy as np
from sklearn.base import ClassifierMixin, RegressorMixin
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from pipelines.atomic import atomic_write_bytes
from pipelines.classical.base import Estimator, seed_of
from pipelines.classical.data import Blocks, ModelInputError
from pipelines.classical.xgb_train import train_booster
from pipelines.engines.base import Block
from pipelines.errors import DataError

MODEL_FILE = "xgboost.json"
REGRESSION_OBJECTIVES = {"reg:squarederror", "reg:absoluteerror", "reg:pseudohubererror", "count:poisson"}


class _GBT(Estimator):
    """XGBoost's hist trees with scikit-learn-style params; fit(X, eval_set=val) early-stops on the val rows."""

    _parameter_constraints: dict[str, list[Any]] = {
        "n_estimators": [Interval(Integral, 1, None, closed="left")],
        "learning_rate": [Interval(Real, 0, 1, closed="right")],
        "max_depth": [Interval(Integral, 0, None, closed="left")],
        "min_child_weight": [Interval(Real, 0, None, closed="left")],
        "subsample": [Interval(Real, 0, 1, closed="right")],
        "colsample_bytree": [Interval(Real, 0, 1, closed="right")],
        "reg_lambda": [Interval(Real, 0, None, closed="left")],
        "reg_alpha": [Interval(Real, 0, None, closed="left")],
        "gamma": [Interval(Real, 0, None, closed="left")],
        "max_bin": [Interval(Integral, 2, None, closed="left")],
        "early_stopping_rounds": [Interval(Integral, 1, None, closed="left"), None],
        "random_state": ["random_state"],
        "n_jobs": [Interval(Integral, 1, None, closed="left"), None],
    }

    def __init__(
        self,
        n_estimators: int = 100,
        learning_rate: float = 0.3,
        max_depth: int = 6,
        min_child_weight: float = 1.0,
        subsample: float = 1.0,
        colsample_bytree: float = 1.0,
        reg_lambda: float = 1.0,
        reg_alpha: float = 0.0,
        gamma: float = 0.0,
        max_bin: int = 256,
        early_stopping_rounds: int | None = 10,
        random_state: Any = 0,
        n_jobs: int | None = None,
    ) -> None:
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.max_depth = max_depth
        self.min_child_weight = min_child_weight
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.reg_lambda = reg_lambda
        self.reg_alpha = reg_alpha
        self.gamma = gamma
        self.max_bin = max_bin
        self.early_stopping_rounds = early_stopping_rounds
        self.random_state = random_state
        self.n_jobs = n_jobs

    def booster_params(self) -> dict[str, Any]:
        """XGBoost's names for this estimator's params (objective included)."""
        params = {
            "tree_method": "hist",
            "eta": self.learning_rate,
            "max_depth": self.max_depth,
            "min_child_weight": self.min_child_weight,
            "subsample": self.subsample,
            "colsample_bytree": self.colsample_bytree,
            "lambda": self.reg_lambda,
            "alpha": self.reg_alpha,
            "gamma": self.gamma,
            "max_bin": self.max_bin,
            "seed": seed_of(self.random_state),
            **self._objective(),
        }
        if self.n_jobs is not None:
            params["nthread"] = self.n_jobs
        return params

    def _objective(self) -> dict[str, Any]:
        raise NotImplementedError

    def _encoder(self, labels: np.ndarray) -> Any:
        raise NotImplementedError

    def fit(self, X: Any, y: Any = None, eval_set: Any = None) -> Self:
        """Fit on Blocks or arrays; eval_set (Blocks, or an (X, y) pair) is the validation data for early stopping."""
        self._validate_params()
        blocks, owned = self._fit_input(X, y)
        val, val_owned = self._val_input(eval_set, blocks)
        try:
            early = self.early_stopping_rounds if val is not None else None
            encode = self._encoder(np.asarray(blocks.labels, dtype=np.float64))
            booster, history = train_booster(self.booster_params(), blocks, val, self.n_estimators, early, encode)
        finally:
            if owned:
                blocks.release()
            if val_owned and val is not None:
                val.release()
        self._set_booster(booster)
        self.evals_result_ = {k: {m: np.asarray(v) for m, v in d.items()} for k, d in history.items()}
        return self

    def _val_input(self, eval_set: Any, train: Blocks) -> tuple[Blocks | None, bool]:
        """The validation rows as Blocks labelled as the train blocks are (class values or indices)."""
        if eval_set is None:
            return None, False
        if isinstance(eval_set, Blocks):
            val, owned = eval_set, False
        else:
            xv, yv = eval_set
            yv = np.asarray(yv)
            if isinstance(self, ClassifierMixin):
                unknown = ~np.isin(yv, self.classes_)
                if unknown.any():
                    raise ModelInputError(f"{self._what}: eval_set has label {yv[unknown][0]!r}, not a train class")
                yv = np.asarray(train.labels)[np.searchsorted(self.classes_, yv)]
            val, owned = Blocks.from_arrays(np.asarray(xv, dtype=np.float64), np.asarray(yv, dtype=np.float64)), True
        if val.n_features != self.n_features_in_:
            raise ModelInputError(f"{self._what}: eval_set has {val.n_features} features, train {self.n_features_in_}")
        if isinstance(self, ClassifierMixin) and not set(val.labels) <= set(train.labels):
            extra = sorted(set(val.labels) - set(train.labels))
            raise ModelInputError(f"{self._what}: the validation rows have label(s) {extra[:5]} the train rows lack")
        return val, owned

    def _set_booster(self, booster: Any) -> None:
        self.booster_ = booster
        best = booster.attributes().get("best_iteration")
        self.best_iteration_ = int(best) if best is not None else booster.num_boosted_rounds() - 1
        self.n_estimators_ = booster.num_boosted_rounds()
        gain = booster.get_score(importance_type="gain")
        total = np.zeros(self.n_features_in_)
        for key, value in gain.items():
            total[int(key[1:])] = value
        self.feature_importances_ = total / total.sum() if total.sum() > 0 else total

    def _raw(self, X: Any) -> np.ndarray:
        """The booster's output (margin transformed by the objective) for each row, using the best iteration."""
        check_is_fitted(self)
        raw = bytes(self.booster_.save_raw("ubj"))
        upto = self.best_iteration_ + 1

        def predict(block: Block) -> np.ndarray:
            import xgboost as xgb

            booster = xgb.Booster()
            booster.load_model(bytearray(raw))
            booster.set_param({"nthread": 1})
            return booster.inplace_predict(np.asarray(block["x"]), iteration_range=(0, upto))

        return self._per_block(X, predict)

    def save_native(self, directory: Path) -> None:
        """Write the booster as XGBoost's own JSON model file (persist.save_model calls this)."""
        atomic_write_bytes(directory / MODEL_FILE, bytes(self.booster_.save_raw("json")))

    def load_native(self, directory: Path) -> None:
        """Read the booster back from XGBoost's JSON model file (no pickle)."""
        import xgboost as xgb

        booster = xgb.Booster()
        try:
            booster.load_model(bytearray((directory / MODEL_FILE).read_bytes()))
        except (OSError, xgb.core.XGBoostError) as exc:
            raise DataError(f"{directory / MODEL_FILE}: cannot read the XGBoost model: {exc}") from exc
        self.booster_ = booster


class GBTClassifier(ClassifierMixin, _GBT):
    """Binary (binary:logistic) or multi-class (multi:softprob) boosting; classes_ as in scikit-learn."""

    _what = "gradient-boosted trees"

    def _objective(self) -> dict[str, Any]:
        k = len(self.classes_)
        if k == 2:
            return {"objective": "binary:logistic", "eval_metric": "logloss"}
        return {"objective": "multi:softprob", "num_class": k, "eval_metric": "mlogloss"}

    def _encoder(self, labels: np.ndarray) -> Any:
        def encode(block: Block) -> np.ndarray:
            y: np.ndarray = block["y"]
            return np.searchsorted(labels, y).astype(np.float64)

        return encode

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, columns in classes_ order."""
        out = self._raw(X)
        if len(self.classes_) == 2:
            out = out.reshape(-1)
            return np.column_stack([1.0 - out, out])
        return out.reshape(-1, len(self.classes_))

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class, a value of classes_."""
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]

    def score(self, X: Any, y: Any = None, sample_weight: Any = None) -> float:
        """Accuracy (Blocks: against their label column)."""
        return super().score(X, self._target(X, y), sample_weight=sample_weight)


class GBTRegressor(RegressorMixin, _GBT):
    """Boosted regression trees (squared error unless objective says otherwise)."""

    _what = "gradient-boosted trees"
    _parameter_constraints: dict[str, list[Any]] = {
        **_GBT._parameter_constraints,
        "objective": [StrOptions(REGRESSION_OBJECTIVES)],
    }

    def __init__(
        self,
        n_estimators: int = 100,
        learning_rate: float = 0.3,
        max_depth: int = 6,
        min_child_weight: float = 1.0,
        subsample: float = 1.0,
        colsample_bytree: float = 1.0,
        reg_lambda: float = 1.0,
        reg_alpha: float = 0.0,
        gamma: float = 0.0,
        max_bin: int = 256,
        early_stopping_rounds: int | None = 10,
        random_state: Any = 0,
        n_jobs: int | None = None,
        objective: str = "reg:squarederror",
    ) -> None:
        super().__init__(
            n_estimators, learning_rate, max_depth, min_child_weight, subsample, colsample_bytree, reg_lambda,
            reg_alpha, gamma, max_bin, early_stopping_rounds, random_state, n_jobs,
        )  # fmt: skip
        self.objective = objective

    def _objective(self) -> dict[str, Any]:
        return {"objective": self.objective}

    def _encoder(self, labels: np.ndarray) -> Any:
        return _label

    def predict(self, X: Any) -> np.ndarray:
        """Predicted values for Blocks or arrays."""
        return self._raw(X).reshape(-1)

    def score(self, X: Any, y: Any = None, sample_weight: Any = None) -> float:
        """R² of the predictions (Blocks: against their label column)."""
        return super().score(X, self._target(X, y), sample_weight=sample_weight)


def _label(block: Block) -> np.ndarray:
    return np.asarray(block["y"], dtype=np.float64)
