"""Poisson and Gamma GLMs (log link, offsets, prior weights) by IRLS: one pass over the blocks per iteration."""

from __future__ import annotations

import logging
from numbers import Integral, Real
from typing import Any

import numpy as np
from scipy import linalg
from scipy.special import gammaln, xlogy
from sklearn.base import RegressorMixin
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_is_fitted

from pipelines.classical.base import Estimator
from pipelines.classical.data import Blocks, ModelInputError
from pipelines.classical.linear import check_rank
from pipelines.classical.summary import CoefficientTable, ModelSummary, SummaryMixin
from pipelines.engines.base import Block

log = logging.getLogger(__name__)


class _Family:
    """A GLM family with the log link: variance, unit deviance, log-likelihood and R's starting mean."""

    name = ""
    rule = ""
    scale_known = True

    def check(self, y: np.ndarray) -> bool:
        raise NotImplementedError

    def variance(self, mu: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def deviance(self, y: np.ndarray, mu: np.ndarray, w: np.ndarray) -> float:
        raise NotImplementedError

    def loglike(self, y: np.ndarray, mu: np.ndarray, w: np.ndarray, scale: float) -> float:
        raise NotImplementedError

    def start(self, y: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class _Poisson(_Family):
    name = "poisson"
    rule = "non-negative"

    def check(self, y: np.ndarray) -> bool:
        return bool(np.all(y >= 0))

    def variance(self, mu: np.ndarray) -> np.ndarray:
        return mu

    def deviance(self, y: np.ndarray, mu: np.ndarray, w: np.ndarray) -> float:
        return float(2 * np.sum(w * (xlogy(y, y) - xlogy(y, mu) - (y - mu))))

    def loglike(self, y: np.ndarray, mu: np.ndarray, w: np.ndarray, scale: float) -> float:
        return float(np.sum(w / scale * (xlogy(y, mu) - mu - gammaln(y + 1))))

    def start(self, y: np.ndarray) -> np.ndarray:
        return y + 0.1


class _Gamma(_Family):
    name = "Gamma"
    rule = "positive"
    scale_known = False

    def check(self, y: np.ndarray) -> bool:
        return bool(np.all(y > 0))

    def variance(self, mu: np.ndarray) -> np.ndarray:
        return mu * mu

    def deviance(self, y: np.ndarray, mu: np.ndarray, w: np.ndarray) -> float:
        return float(2 * np.sum(w * (-np.log(y / mu) + (y - mu) / mu)))

    def loglike(self, y: np.ndarray, mu: np.ndarray, w: np.ndarray, scale: float) -> float:
        ws = w / scale
        keep = ws > 0  # a zero prior weight drops the row
        ws, y, mu = ws[keep], y[keep], mu[keep]
        return float(np.sum(ws * np.log(ws * y / mu) - ws * y / mu - gammaln(ws) - np.log(y)))

    def start(self, y: np.ndarray) -> np.ndarray:
        return y.copy()


def _irls_pass(family: _Family, beta: np.ndarray | None, parts: tuple) -> Any:
    """fn(block) -> the block's X'WX, X'Wz, deviance, Pearson chi², sum of weights and rows, at beta (None: start)."""
    regressors, offset, weights, intercept = parts

    def part(block: Block) -> tuple:
        x, y = block["x"], block["y"]
        a = np.column_stack([np.ones(len(x)), x[:, regressors]]) if intercept else x[:, regressors]
        off = x[:, offset] if offset is not None else 0.0
        w = x[:, weights] if weights is not None else np.ones(len(x))
        if beta is None:
            mu = family.start(y)
            eta = np.log(mu)
        else:
            eta = a @ beta + off
            mu = np.exp(eta)
        var = family.variance(mu)
        working = w * mu * mu / var  # log link: dmu/deta = mu
        z = eta - off + (y - mu) / mu
        aw = a * working[:, None]
        dev = family.deviance(y, mu, w)
        pearson = float(np.sum(w * (y - mu) ** 2 / var))
        return aw.T @ a, aw.T @ z, dev, pearson, float(np.sum(w * y)), float(np.sum(w)), int(np.sum(w > 0))

    return part


class _GLM(SummaryMixin, RegressorMixin, Estimator):
    """A log-link GLM fitted by IRLS over blocks; offset and weights name feature columns (not regressors)."""

    _family: _Family = _Poisson()
    _parameter_constraints: dict[str, list[Any]] = {
        "fit_intercept": ["boolean"],
        "offset": [str, None],
        "weights": [str, None],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="neither")],
    }

    def __init__(
        self,
        fit_intercept: bool = True,
        offset: str | None = None,
        weights: str | None = None,
        max_iter: int = 100,
        tol: float = 1e-10,
    ) -> None:
        self.fit_intercept = fit_intercept
        self.offset = offset
        self.weights = weights
        self.max_iter = max_iter
        self.tol = tol

    def _columns(self, features: list[str]) -> tuple[list[int], int | None, int | None]:
        """Indices of the regressors, the offset column and the weights column among the features."""
        special = {}
        for key in ("offset", "weights"):
            name = getattr(self, key)
            if name is not None:
                if name not in features:
                    raise ModelInputError(f"{self._what}: {key} column {name!r} is not among the features {features}")
                special[key] = features.index(name)
        if len(special) == 2 and special["offset"] == special["weights"]:
            raise ModelInputError(f"{self._what}: offset and weights name the same column {self.offset!r}")
        regressors = [j for j in range(len(features)) if j not in special.values()]
        return regressors, special.get("offset"), special.get("weights")

    def _check_data(self, blocks: Blocks, weights: int | None) -> None:
        family, label, weights_name = self._family, str(blocks.label), str(self.weights)

        def bad(block: Block) -> list[str] | None:
            y = block["y"]
            if weights is not None:
                w = block["x"][:, weights]
                if np.any(w < 0):
                    i = int(np.argmax(w < 0))
                    return [str(block.get("source") or "<input>"), str(block["row"][i]), weights_name, "negative"]
            ok = family.check(y)
            if not ok:
                i = int(np.argmax(~(y >= 0) if family.rule == "non-negative" else ~(y > 0)))
                return [str(block.get("source") or "<input>"), str(block["row"][i]), label, family.rule]
            return None

        found = [b for b in blocks.map(bad) if b is not None]
        if found:
            source, row, column, rule = found[0]
            need = "non-negative" if rule == "negative" else rule
            raise ModelInputError(
                f"{self._what}: column {column!r} must be {need}; first offending value at {source} row {row}"
            )

    def _irls(self, blocks: Blocks, parts: tuple, p: int) -> tuple:
        """IRLS to convergence; returns beta and the last pass's (X'WX, deviance, Pearson, ...) at beta."""
        family = self._family
        beta: np.ndarray | None = None if p else np.zeros(0)
        dev_old = np.inf
        for it in range(self.max_iter + 1):
            terms = blocks.map(_irls_pass(family, beta, parts))
            xtwx = sum(t[0] for t in terms)
            xtwz = sum(t[1] for t in terms)
            stats = [sum(t[k] for t in terms) for k in range(2, 7)]
            dev = stats[0]
            if not np.isfinite(dev):
                raise ModelInputError(f"{self._what}: the deviance is not finite at iteration {it}; check the data")
            if p == 0 or (beta is not None and abs(dev - dev_old) / (abs(dev) + 0.1) < self.tol):
                return beta, xtwx, stats, it, True
            beta = linalg.solve(xtwx, xtwz, assume_a="pos")
            dev_old = dev
        log.warning("%s did not converge in %d iterations", self._what, self.max_iter)
        return beta, xtwx, stats, self.max_iter, False

    def _fit(self, blocks: Blocks) -> None:
        family = self._family
        features = blocks.features
        regressors, offset, weights = self._columns(features)
        self._check_data(blocks, weights)
        names = (["(Intercept)"] if self.fit_intercept else []) + [features[j] for j in regressors]
        p = len(names)
        parts = (regressors, offset, weights, self.fit_intercept)
        beta, xtwx, (dev, pearson, _, _, n_used), iters, converged = self._irls(blocks, parts, p)
        if p:
            r = linalg.cholesky(xtwx, lower=False)
            check_rank(r, names, self._what)
        df_resid = n_used - p
        if df_resid <= 0:
            raise ModelInputError(f"{self._what}: {n_used} rows for {p} coefficients; need more rows than coefficients")
        scale = 1.0 if family.scale_known else pearson / df_resid
        cov = linalg.inv(xtwx) * scale if p else np.zeros((0, 0))
        se = np.sqrt(np.diag(cov))

        def loglike(block: Block) -> float:
            x, y = block["x"], block["y"]
            a = np.column_stack([np.ones(len(x)), x[:, regressors]]) if self.fit_intercept else x[:, regressors]
            eta = a @ beta + (x[:, offset] if offset is not None else 0.0)
            w = x[:, weights] if weights is not None else np.ones(len(x))
            return family.loglike(y, np.exp(eta), w, scale)

        llf = float(sum(blocks.map(loglike)))
        null_dev = self._null_deviance(blocks, parts)
        df_model = p - int(self.fit_intercept)
        aic = -2 * llf + 2 * (df_model + 1)
        self.coef_ = beta[1:] if self.fit_intercept else beta
        self.intercept_ = float(beta[0]) if self.fit_intercept else 0.0
        self.cov_params_ = cov
        self.scale_ = float(scale)
        self.n_iter_ = iters
        self.converged_ = converged
        self.deviance_ = float(dev)
        self.summary_ = self._summary(blocks, names, beta, se, df_resid, df_model, scale, dev, null_dev, pearson, llf)
        self.summary_.statistics["aic"] = float(aic)
        self.summary_.footer.insert(2, f"AIC: {aic:.6g}")
        self.summary_.footer.append(f"Number of Fisher Scoring iterations: {iters}")

    def _null_deviance(self, blocks: Blocks, parts: tuple) -> float:
        """The deviance of the intercept-only model (with the offset and weights), as R and statsmodels report it."""
        _, offset, weights, intercept = parts
        no_regressors: list[np.ndarray] = []
        null_parts = (no_regressors, offset, weights, intercept)
        _, _, (dev, *_), _, _ = self._irls(blocks, null_parts, int(intercept))
        return float(dev)

    def _summary(
        self,
        blocks: Blocks,
        names: list[str],
        beta: np.ndarray,
        se: np.ndarray,
        df_resid: int,
        df_model: int,
        scale: float,
        dev: float,
        null_dev: float,
        pearson: float,
        llf: float,
    ) -> ModelSummary:
        family = self._family
        rhs = " + ".join(names[1:] if self.fit_intercept else names) or "1"
        extras = [f"offset({self.offset})"] if self.offset else []
        title = f"{self._what.capitalize()} ({family.name} family, log link): {blocks.label} ~ {rhs}"
        title += "".join(f" + {e}" for e in extras) + (f"   weights: {self.weights}" if self.weights else "")
        dispersion = "taken to be 1" if family.scale_known else f"taken to be {scale:.6g}"
        statistics = {
            "n": blocks.n_rows,
            "df_residual": df_resid,
            "df_model": df_model,
            "deviance": float(dev),
            "null_deviance": float(null_dev),
            "pearson_chi2": float(pearson),
            "dispersion": float(scale),
            "log_likelihood": float(llf),
        }
        footer = [
            f"(Dispersion parameter for {family.name} family {dispersion})",
            f"    Null deviance: {null_dev:.6g}  on {df_resid + df_model} degrees of freedom\n"
            f"Residual deviance: {dev:.6g}  on {df_resid} degrees of freedom",
        ]
        return ModelSummary(title, CoefficientTable(names, beta, se), statistics=statistics, footer=footer)

    def _linear(self, block: Block) -> np.ndarray:
        regressors, offset, _ = self._columns(list(self.feature_names_in_)) if self._named_fit() else self._plain()
        x = block["x"]
        eta = x[:, regressors] @ self.coef_ + self.intercept_
        return eta + x[:, offset] if offset is not None else eta

    def _named_fit(self) -> bool:
        return getattr(self, "feature_names_in_", None) is not None

    def _plain(self) -> tuple[list[int], int | None, int | None]:
        return self._columns([f"x{i}" for i in range(self.n_features_in_)])

    def predict(self, X: Any) -> np.ndarray:
        """The fitted mean exp(x'b + offset) (X holds the same columns as at fit, offset and weights included)."""
        check_is_fitted(self)
        return self._per_block(X, lambda block: np.exp(self._linear(block)))

    def score(self, X: Any, y: Any = None, sample_weight: Any = None) -> float:
        """R² of the predicted means (Blocks: against their label column)."""
        return super().score(X, self._target(X, y), sample_weight=sample_weight)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.target_tags.positive_only = True
        return tags


class PoissonRegression(_GLM):
    """Poisson regression (log link) with offset and prior weights; statsmodels' GLM and R's glm() summary."""

    _what = "poisson regression"
    _family = _Poisson()


class GammaRegression(_GLM):
    """Gamma regression (log link) with offset and prior weights; dispersion by Pearson chi² / residual df."""

    _what = "gamma regression"
    _family = _Gamma()
