"""Figures a person would rather look at than read: confusion matrix, ROC, elbow, scree, scatter, importances."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipelines.plotting import confusion, plt
from pipelines.plotting import save as _save

__all__ = ["confusion"]


def roc(path: Path, curves: dict[str, tuple[np.ndarray, np.ndarray, float]]) -> str:
    """ROC curves, one per class (one-vs-rest) or the positive class."""
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, (fpr, tpr, auc) in curves.items():
        ax.plot(fpr, tpr, lw=1, label=f"{name} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.5)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (test)")
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def elbow(path: Path, inertia: dict[int, float]) -> str:
    """Inertia against k."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ks = sorted(inertia)
    ax.plot(ks, [inertia[k] for k in ks], "o-")
    ax.set(xlabel="k (clusters)", ylabel="inertia", title="elbow curve")
    return _save(fig, path)


def scree(path: Path, ratio: np.ndarray, targets: dict[str, int]) -> str:
    """Explained-variance ratio per component and its cumulative sum, with the k for each target."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    k = np.arange(1, len(ratio) + 1)
    ax.bar(k, ratio, color="tab:blue", label="per component")
    ax.plot(k, np.cumsum(ratio), "o-", color="tab:orange", ms=2, label="cumulative")
    for target, kk in targets.items():
        ax.axvline(kk, ls=":", lw=0.8, color="grey")
        ax.text(kk, 0.5, f"{target}: k={kk}", rotation=90, fontsize=7, va="center")
    ax.set(xlabel="component", ylabel="explained variance ratio", title="scree plot", ylim=(0, 1.02))
    ax.legend(fontsize=7)
    return _save(fig, path)


def scatter(path: Path, scores: np.ndarray, colour: np.ndarray | None, title: str) -> str:
    """First two components (or any 2-D embedding), coloured by label or cluster."""
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    points = ax.scatter(scores[:, 0], scores[:, 1], c=colour, s=4, cmap="tab10", alpha=0.7)
    if colour is not None:
        fig.colorbar(points, ax=ax)
    ax.set(xlabel="PC1", ylabel="PC2", title=title)
    return _save(fig, path)


def importances(path: Path, names: Sequence[str], values: np.ndarray, top: int = 20) -> str:
    """Horizontal bars of the largest feature importances."""
    order = np.argsort(values)[::-1][:top][::-1]
    fig, ax = plt.subplots(figsize=(6, 0.8 + 0.25 * len(order)))
    ax.barh([names[i] for i in order], values[order])
    ax.set(xlabel="mean impurity decrease", title="feature importances")
    return _save(fig, path)


def predicted_vs_actual(path: Path, actual: np.ndarray, predicted: np.ndarray) -> str:
    """Regression fit: predictions against truth with the identity line."""
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(actual, predicted, s=4, alpha=0.5)
    lo, hi = float(min(actual.min(), predicted.min())), float(max(actual.max(), predicted.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set(xlabel="actual", ylabel="predicted", title="predicted vs actual (test)")
    return _save(fig, path)
