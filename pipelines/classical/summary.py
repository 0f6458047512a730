"""R-style coefficient tables (estimate, standard error, t or z, p) for linear and logistic models."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import stats
from sklearn.utils.validation import check_is_fitted


def label_text(value: object) -> str:
    """A class label as text: numbers compactly (1.0 -> '1'), anything else as str."""
    return f"{value:g}" if isinstance(value, (int, float, np.integer, np.floating)) else str(value)


def _stars(p: float) -> str:
    return "***" if p < 0.001 else "**" if p < 0.01 else "*" if p < 0.05 else "." if p < 0.1 else ""


def _p_text(p: float) -> str:
    return "< 2e-16" if p < 2e-16 else f"{p:.3g}"


@dataclass
class CoefficientTable:
    """Estimates with standard errors; `df` given means t tests (OLS), None means z tests (GLM)."""

    names: list[str]
    estimate: np.ndarray
    std_error: np.ndarray
    df: int | None = None

    @property
    def statistic(self) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.estimate / self.std_error

    @property
    def p_value(self) -> np.ndarray:
        tail = (
            stats.t.sf(np.abs(self.statistic), self.df)
            if self.df is not None
            else stats.norm.sf(np.abs(self.statistic))
        )
        return 2 * tail

    def to_dict(self) -> dict[str, list]:
        """Columns in term order (term, estimate, std_error, statistic, p_value) for metrics.json."""
        return {
            "term": list(self.names),
            "estimate": [float(v) for v in self.estimate],
            "std_error": [float(v) for v in self.std_error],
            "statistic": [float(v) for v in self.statistic],
            "p_value": [float(v) for v in self.p_value],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> CoefficientTable:
        """Inverse of dataclasses.asdict (lists back to arrays)."""
        return cls(list(state["names"]), np.asarray(state["estimate"]), np.asarray(state["std_error"]), state["df"])

    def format(self, title: str = "Coefficients:") -> str:
        """The table as R prints it, with significance stars."""
        stat = "t value" if self.df is not None else "z value"
        prob = "Pr(>|t|)" if self.df is not None else "Pr(>|z|)"
        width = max(12, *(len(n) for n in self.names))
        lines = [title, f"{'':<{width}} {'Estimate':>12} {'Std. Error':>12} {stat:>9} {prob:>10}"]
        cols = zip(self.estimate, self.std_error, self.statistic, self.p_value, strict=True)
        for name, (b, se, t, p) in zip(self.names, cols, strict=True):
            lines.append(f"{name:<{width}} {b:>12.5g} {se:>12.5g} {t:>9.3f} {_p_text(p):>10} {_stars(p)}")
        lines.append("---\nSignif. codes:  0 '***' 0.001 '**' 0.01 '*' 0.05 '.' 0.1 ' ' 1")
        return "\n".join(lines)


@dataclass
class ModelSummary:
    """A model's coefficient tables and fit statistics, printable like R's summary()."""

    title: str
    coefficients: CoefficientTable
    robust: CoefficientTable | None = None
    statistics: dict[str, float] = field(default_factory=dict)
    footer: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary."""
        out: dict[str, Any] = {"coefficients": self.coefficients.to_dict(), **self.statistics}
        if self.robust is not None:
            out["coefficients_hc1"] = self.robust.to_dict()
        return out

    def to_state(self) -> dict[str, Any]:
        """Everything needed to rebuild the summary (JSON-able), for saved models."""
        state = asdict(self)
        for table in ("coefficients", "robust"):
            if state[table] is not None:
                state[table] = {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in state[table].items()}
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ModelSummary:
        """Inverse of to_state."""
        robust = state.get("robust")
        return cls(
            state["title"],
            CoefficientTable.from_state(state["coefficients"]),
            CoefficientTable.from_state(robust) if robust is not None else None,
            dict(state.get("statistics", {})),
            list(state.get("footer", [])),
        )

    def __str__(self) -> str:
        parts = [self.title, "", self.coefficients.format()]
        if self.robust is not None:
            parts += ["", self.robust.format("Heteroskedasticity-robust (HC1) standard errors:")]
        parts += ["", *self.footer]
        return "\n".join(parts)


class SummaryMixin:
    """summary() for models whose fit leaves an R-style summary_ (linear and logistic regression)."""

    summary_: ModelSummary  # set by fit

    def summary(self) -> ModelSummary:
        """The fit's R-style summary: coefficient table(s), fit statistics."""
        check_is_fitted(self, "summary_")
        return self.summary_
