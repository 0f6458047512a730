"""Logistic regression (binomial and multinomial softmax, optional L2) by distributed Newton or L-BFGS."""

from __future__ import annotations

import logging
from numbers import Integral, Real
from typing import Any, Literal

import numpy as np
from scipy import optimize
from scipy.special import expit, log_expit, log_softmax
from sklearn.base import ClassifierMixin
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from pipelines.classical.base import Estimator
from pipelines.classical.data import MAX_LEVELS, Blocks, ModelInputError
from pipelines.classical.linalg import with_intercept
from pipelines.classical.summary import CoefficientTable, ModelSummary, SummaryMixin, label_text
from pipelines.engines.base import Block

log = logging.getLogger(__name__)

NEWTON_MAX_DIM = 1500


def _onehot(y_index: np.ndarray, k: int) -> np.ndarray:
    out = np.zeros((len(y_index), k))
    out[np.arange(len(y_index)), y_index] = 1.0
    return out


CHUNK = 8192  # rows per step of the binomial kernel: its temporaries stay in the CPU's cache


def _binomial_terms(
    w: np.ndarray, x: np.ndarray, y: np.ndarray, intercept: bool, hessian: bool
) -> tuple[float, np.ndarray, np.ndarray | None]:
    """Binomial negative log-likelihood, gradient (and Hessian) in chunks; w = [b0, b] with `intercept`."""
    # the intercept's column is implied, never materialized
    d = len(w)
    b0, b = (float(w[0]), w[1:]) if intercept else (0.0, w)
    lead = 1 if intercept else 0
    loss = 0.0
    grad = np.zeros(d)
    hess = np.zeros((d, d)) if hessian else None
    buf = np.empty((min(CHUNK, len(x)), x.shape[1]))  # reused by every chunk: no mmap per chunk in Dask workers
    for i in range(0, len(x), CHUNK):
        xs, ys = x[i : i + CHUNK], y[i : i + CHUNK]
        z = xs @ b
        z += b0
        loss += float(np.sum(np.logaddexp(0.0, z) - ys * z))
        p = expit(z)
        r = p - ys
        grad[lead:] += xs.T @ r
        if hess is not None:
            s = p * (1.0 - p)
            weighted = np.multiply(xs, s[:, None], out=buf[: len(xs)])
            hess[lead:, lead:] += weighted.T @ xs
        if intercept:
            grad[0] += r.sum()
            if hess is not None:
                column = weighted.sum(axis=0)
                hess[0, 0] += s.sum()
                hess[1:, 0] += column
                hess[0, 1:] += column
    return loss, grad, hess


def _loss_terms(w: np.ndarray, x: np.ndarray, yi: np.ndarray, k: int, hessian: bool, intercept: bool) -> tuple:
    """Loss, gradient (and Hessian) of the unpenalized negative log-likelihood on one block."""
    if k == 2:
        return _binomial_terms(w, x, yi.astype(float), intercept, hessian)
    a = with_intercept(x) if intercept else x
    wm = w.reshape(k, -1)
    logp = log_softmax(a @ wm.T, axis=1)
    p = np.exp(logp)
    loss = float(-logp[np.arange(len(yi)), yi].sum())
    grad = ((p - _onehot(yi, k)).T @ a).ravel()
    hess = None
    if hessian:
        d = a.shape[1]
        hess = np.zeros((k * d, k * d))
        for i in range(k):
            for j in range(i, k):
                weight = p[:, i] * ((i == j) - p[:, j])
                block = (a * weight[:, None]).T @ a
                hess[i * d : (i + 1) * d, j * d : (j + 1) * d] = block
                hess[j * d : (j + 1) * d, i * d : (i + 1) * d] = block.T
    return loss, grad, hess


class LogisticRegression(SummaryMixin, ClassifierMixin, Estimator):
    """Binomial or multinomial (softmax) logistic regression; C and penalty as in scikit-learn."""

    _what = "logistic regression"
    _parameter_constraints: dict[str, list[Any]] = {
        "penalty": [StrOptions({"l2"}), None],
        "C": [Interval(Real, 0, None, closed="neither")],
        "fit_intercept": ["boolean"],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "solver": [StrOptions({"auto", "newton", "lbfgs"})],
    }

    def __init__(
        self,
        penalty: Literal["l2"] | None = "l2",
        C: float = 1.0,
        fit_intercept: bool = True,
        max_iter: int = 100,
        tol: float = 1e-8,
        solver: Literal["auto", "newton", "lbfgs"] = "auto",
    ) -> None:
        self.penalty = penalty
        self.C = C
        self.fit_intercept = fit_intercept
        self.max_iter = max_iter
        self.tol = tol
        self.solver = solver

    def _penalty_mask(self, k: int, d: int) -> np.ndarray:
        mask = np.ones((1 if k == 2 else k, d))
        if self.fit_intercept:
            mask[:, 0] = 0.0
        return mask.ravel() if self.penalty == "l2" else np.zeros(mask.size)

    def _fit(self, blocks: Blocks) -> None:
        classes = np.asarray(blocks.labels, dtype=float)  # the label values the blocks hold, in classes_ order
        k = len(classes)
        if k > MAX_LEVELS:
            raise ModelInputError(f"logistic regression: {k} classes; at most {MAX_LEVELS} are supported")
        d = blocks.n_features + (1 if self.fit_intercept else 0)
        dim = d if k == 2 else k * d
        mask = self._penalty_mask(k, d) / self.C
        intercept = self.fit_intercept

        def evaluate(w: np.ndarray, hessian: bool) -> tuple[float, np.ndarray, np.ndarray | None]:
            def part(block: Block) -> tuple:
                y: np.ndarray = block["y"]
                yi = np.searchsorted(classes, y)
                return _loss_terms(w, block["x"], yi, k, hessian, intercept)

            parts = blocks.map(part)
            loss = sum(p[0] for p in parts) + 0.5 * float(np.sum(mask * w * w))
            grad = sum(p[1] for p in parts) + mask * w
            hess = sum(p[2] for p in parts) + np.diag(mask) if hessian else None
            return loss, grad, hess

        solver = self.solver if self.solver != "auto" else ("newton" if dim <= NEWTON_MAX_DIM else "lbfgs")
        w0 = np.zeros(dim)
        if solver == "newton":
            w, loss, hess, iters, converged = self._newton(evaluate, w0, blocks.n_rows)
        else:
            w, loss, iters, converged = self._lbfgs(evaluate, w0)
            hess = None
        if self.penalty is None and loss / blocks.n_rows < 1e-6:
            raise ModelInputError(
                "logistic regression: the classes are perfectly separated by the features, so the unpenalized "
                "coefficients diverge; use penalty 'l2' (set C) or drop the separating feature"
            )
        if not converged:
            log.warning("logistic regression did not converge in %d iterations", iters)
        wm = w.reshape(1 if k == 2 else k, d)
        if k > 2 and self.penalty is None:
            wm = wm - wm.mean(axis=0)  # the minimum-norm (sum-to-zero) optimum, as scikit-learn's lbfgs finds
        self.coef_ = wm[:, 1:] if self.fit_intercept else wm
        self.intercept_ = wm[:, 0] if self.fit_intercept else np.zeros(len(wm))
        self.n_iter_ = np.array([iters])
        self.converged_ = converged
        self.solver_ = solver
        self.summary_ = self._summary(blocks, k, loss - 0.5 * float(np.sum(mask * w * w)), w, hess)

    def _newton(self, evaluate: Any, w: np.ndarray, n: int) -> tuple:
        loss, grad, hess = evaluate(w, True)
        for it in range(1, self.max_iter + 1):
            step = np.linalg.lstsq(hess, -grad, rcond=None)[0]
            decrease = float(grad @ step)
            if -decrease < self.tol * max(1.0, abs(loss)):
                return w, loss, hess, it - 1, True
            t = 1.0
            while True:
                candidate = w + t * step
                new_loss, new_grad, new_hess = evaluate(candidate, True)
                if new_loss <= loss + 1e-4 * t * decrease or t < 1e-10:
                    break
                t *= 0.5
            w, loss, grad, hess = candidate, new_loss, new_grad, new_hess
            if loss / n < 1e-9 and self.penalty is None:
                return w, loss, hess, it, False
        return w, loss, hess, self.max_iter, False

    def _lbfgs(self, evaluate: Any, w0: np.ndarray) -> tuple:
        def fun(w: np.ndarray) -> tuple[float, np.ndarray]:
            loss, grad, _ = evaluate(w, False)
            return loss, grad

        res = optimize.minimize(
            fun, w0, jac=True, method="L-BFGS-B", options={"maxiter": self.max_iter, "gtol": self.tol, "ftol": 1e-12}
        )
        return res.x, float(res.fun), int(res.nit), bool(res.success)

    def _summary(self, blocks: Blocks, k: int, nll: float, w: np.ndarray, hess: np.ndarray | None) -> ModelSummary:
        names = (["(Intercept)"] if self.fit_intercept else []) + blocks.features
        stats: dict[str, float] = {"n": blocks.n_rows, "classes": k, "deviance": 2 * nll, "aic": 2 * nll + 2 * len(w)}
        if k == 2:
            se = np.full(len(w), np.nan)
            if hess is not None and self.penalty is None:
                se = np.sqrt(np.diag(np.linalg.inv(hess)))
            table = CoefficientTable(names, w, se)
            title = f"Logistic regression (binomial): {blocks.label} ~ {' + '.join(blocks.features)}"
        else:
            expanded = [f"{label_text(c)}:{name}" for c in self.classes_ for name in names]
            table = CoefficientTable(expanded, w, np.full(len(w), np.nan))
            title = f"Logistic regression (multinomial, {k} classes): {blocks.label}"
        footer = [f"Residual deviance: {2 * nll:.6g} on {blocks.n_rows - len(w)} degrees of freedom"]
        if self.penalty is not None:
            footer.append(f"L2 penalty with C = {self.C:g}: standard errors are not reported for penalized fits")
        return ModelSummary(title, table, statistics=stats, footer=footer)

    def decision_function(self, X: Any) -> np.ndarray:
        """Linear scores: (n,) for binomial (positive favours classes_[1]), (n, classes) for multinomial."""
        check_is_fitted(self)
        coef, intercept = self.coef_, self.intercept_
        scores = self._per_block(X, lambda block: block["x"] @ coef.T + intercept)
        return scores.ravel() if len(self.classes_) == 2 else scores

    def predict_log_proba(self, X: Any) -> np.ndarray:
        """Log class probabilities, columns in classes_ order."""
        scores = self.decision_function(X)
        if len(self.classes_) == 2:
            return np.column_stack([log_expit(-scores), log_expit(scores)])
        return log_softmax(scores, axis=1)

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, columns in classes_ order."""
        scores = self.decision_function(X)
        if len(self.classes_) == 2:
            return np.column_stack([expit(-scores), expit(scores)])
        return np.exp(log_softmax(scores, axis=1))

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class, a value of classes_."""
        scores = self.decision_function(X)
        best = (scores > 0).astype(int) if len(self.classes_) == 2 else np.argmax(scores, axis=1)
        return self.classes_[best]

    def score(self, X: Any, y: Any = None, sample_weight: Any = None) -> float:
        """Accuracy (Blocks: against their label column)."""
        return super().score(X, self._target(X, y), sample_weight=sample_weight)
