"""Figures of a pack: each coefficient's bootstrap distribution beside its analytic interval; a score per task."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.plotting import plt, save


def bootstrap(path: Path, draws: pd.DataFrame, table: pd.DataFrame) -> str:
    """A histogram of each coefficient's replicates with the percentile CI (dashed) and the HC1 one (shaded)."""
    terms = list(table["term"])
    cols = min(4, len(terms))
    rows = math.ceil(len(terms) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    for ax, row in zip(axes.ravel(), table.itertuples(index=False), strict=False):
        ax.hist(draws[row.term].dropna(), bins=30, color="#8fb3d9")
        ax.axvline(row.ci_low, color="#1f4e79", linestyle="--", linewidth=1)
        ax.axvline(row.ci_high, color="#1f4e79", linestyle="--", linewidth=1, label="percentile CI")
        ax.axvspan(row.hc1_ci_low, row.hc1_ci_high, color="#d9822b", alpha=0.2, label="HC1 CI")
        ax.axvline(row.estimate, color="#d9822b", linewidth=1)
        ax.set_title(f"{row.term} (SE ratio {row.se_ratio:.2f})", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[len(terms) :]:
        ax.axis("off")
    axes.ravel()[0].legend(fontsize=6)
    return save(fig, path)


def task_scores(path: Path, keys: Sequence[str], values: Sequence[float], what: str) -> str:
    """One bar per task (group or config) of its headline score."""
    fig, ax = plt.subplots(figsize=(max(4.0, 0.35 * len(keys) + 1.5), 3.2))
    ax.bar(range(len(keys)), np.asarray(values, dtype=float), color="#5a8fc4")
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels(keys, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel(what)
    return save(fig, path)
