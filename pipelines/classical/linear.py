"""Ordinary least squares on row blocks: one TSQR pass for the fit, one pass for residual statistics."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import linalg, stats
from sklearn.base import RegressorMixin
from sklearn.utils.validation import check_is_fitted

from pipelines.classical.base import Estimator
from pipelines.classical.data import Blocks, ModelInputError
from pipelines.classical.linalg import design_matrix, tsqr_r, with_intercept
from pipelines.classical.summary import CoefficientTable, ModelSummary, SummaryMixin
from pipelines.engines.base import Block
from pipelines.ingest.transform import combine_moments

RANK_TOL = 1e-10


def check_rank(r: np.ndarray, names: list[str], what: str) -> None:
    """Raise a ModelInputError naming the first column that is (nearly) a combination of the earlier ones."""
    diag = np.abs(np.diag(r))
    scale = np.abs(r).max(axis=0)
    for j, (d, s) in enumerate(zip(diag, scale, strict=True)):
        if s == 0 or d <= RANK_TOL * max(s, 1e-300) * max(1, len(diag)):
            hint = " (a constant column is collinear with the intercept)" if names and names[0] == "(Intercept)" else ""
            raise ModelInputError(
                f"{what}: column {names[j]!r} is constant or a linear combination of earlier columns{hint}; "
                "drop it from the features or formula"
            )


class LinearRegression(SummaryMixin, RegressorMixin, Estimator):
    """OLS with an R-style summary (classical and HC1 standard errors, t, p, R², adjusted R², F)."""

    _what = "linear regression"
    _parameter_constraints: dict[str, list[Any]] = {"fit_intercept": ["boolean"]}

    def __init__(self, fit_intercept: bool = True) -> None:
        self.fit_intercept = fit_intercept

    def _design(self, x: np.ndarray) -> np.ndarray:
        return with_intercept(x) if self.fit_intercept else x

    def _fit(self, blocks: Blocks) -> None:
        names = (["(Intercept)"] if self.fit_intercept else []) + blocks.features
        p = len(names)
        n = blocks.n_rows
        if n <= p:
            raise ModelInputError(f"linear regression: {n} rows for {p} coefficients; need more rows than coefficients")
        intercept = self.fit_intercept
        r = tsqr_r(blocks, lambda block: design_matrix(block["x"], intercept, block["y"]), scratch=True)
        check_rank(r[:p, :p], names, "linear regression")
        beta = linalg.solve_triangular(r[:p, :p], r[:p, p])
        rinv = linalg.solve_triangular(r[:p, :p], np.eye(p))
        xtx_inv = rinv @ rinv.T

        lead = int(intercept)

        def residual_stats(block: Block) -> tuple[np.ndarray, list[float]]:
            x, y = block["x"], block["y"]
            e = y - x @ beta[lead:] - (beta[0] if lead else 0.0)
            w = e * e
            xw = x * w[:, None]
            meat = np.empty((p, p))  # the design's [1, x]' diag(e^2) [1, x], without building [1, x]
            meat[lead:, lead:] = xw.T @ x
            if lead:
                meat[0, 0], meat[0, 1:] = w.sum(), xw.sum(axis=0)
                meat[1:, 0] = meat[0, 1:]
            mean = float(y.mean()) if len(y) else 0.0
            return meat, [len(y), mean, float(((y - mean) ** 2).sum())]

        parts = blocks.map(residual_stats)
        meat = sum(m for m, _ in parts)
        _, y_mean, y_std = combine_moments([mom for _, mom in parts])
        rss: float = np.float64(r[p, p] ** 2)
        df_resid = n - p
        sigma2 = rss / df_resid
        tss = np.float64(y_std**2 * n if self.fit_intercept else r[: p + 1, p] @ r[: p + 1, p])
        se = np.sqrt(np.diag(xtx_inv) * sigma2)
        hc1 = np.sqrt(np.diag(xtx_inv @ meat @ xtx_inv) * n / df_resid)
        df_model = p - (1 if self.fit_intercept else 0)
        with np.errstate(divide="ignore", invalid="ignore"):  # an exact fit: infinite F, p-value 0
            r2 = 1.0 - rss / tss if tss > 0 else np.nan
            adj = 1.0 - (1.0 - r2) * (n - (1 if self.fit_intercept else 0)) / df_resid
            f_stat = ((tss - rss) / df_model) / sigma2 if df_model else np.nan
        f_p = float(stats.f.sf(f_stat, df_model, df_resid)) if df_model else float("nan")
        rss, r2, adj, f_stat = float(rss), float(r2), float(adj), float(f_stat)

        self.coef_ = beta[1:] if self.fit_intercept else beta
        self.intercept_ = float(beta[0]) if self.fit_intercept else 0.0
        self.cov_params_ = xtx_inv * sigma2
        label = blocks.label or "y"
        self.summary_ = ModelSummary(
            title=f"Linear regression: {label} ~ {' + '.join(blocks.features)}   (n = {n})",
            coefficients=CoefficientTable(names, beta, se, df_resid),
            robust=CoefficientTable(names, beta, hc1, df_resid),
            statistics={
                "n": n,
                "df_residual": df_resid,
                "df_model": df_model,
                "r_squared": r2,
                "adj_r_squared": adj,
                "residual_std_error": float(np.sqrt(sigma2)),
                "f_statistic": f_stat,
                "f_p_value": f_p,
                "rss": rss,
                "y_mean": y_mean,
            },
            footer=[
                f"Residual standard error: {np.sqrt(sigma2):.4g} on {df_resid} degrees of freedom",
                f"Multiple R-squared:  {r2:.4g},\tAdjusted R-squared:  {adj:.4g}",
                f"F-statistic: {f_stat:.4g} on {df_model} and {df_resid} DF,  p-value: {f_p:.3g}",
            ],
        )

    def predict(self, X: Any) -> np.ndarray:
        """Fitted values for Blocks or arrays."""
        check_is_fitted(self)
        coef, intercept = self.coef_, self.intercept_
        return self._per_block(X, lambda block: block["x"] @ coef + intercept)

    def score(self, X: Any, y: Any = None, sample_weight: Any = None) -> float:
        """R² of the predictions (Blocks: against their label column)."""
        return super().score(X, self._target(X, y), sample_weight=sample_weight)
