"""Figures of a training run: curves, misclassified test images, reconstructions (confusion matrix is shared)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.plotting import confusion, plt
from pipelines.plotting import save as _save

__all__ = ["confusion", "curves", "misclassified", "reconstructions"]


def curves(path: Path, history: list[dict[str, Any]]) -> str:
    """Loss (and accuracy) per epoch, training and validation."""
    epochs = [h["epoch"] for h in history]
    has_acc = any("accuracy" in h for h in history)
    fig, axes = plt.subplots(1, 2 if has_acc else 1, figsize=(10 if has_acc else 5, 3.5), squeeze=False)
    for ax, metric in zip(axes[0], ("loss", "accuracy") if has_acc else ("loss",), strict=False):
        for prefix, style in (("", "o-"), ("val_", "s--")):
            values = [h.get(prefix + metric) for h in history]
            if any(v is not None for v in values):
                ax.plot(epochs, values, style, ms=3, label=(prefix or "train_") + metric)
        ax.set(xlabel="epoch", ylabel=metric)
        ax.legend(fontsize=7)
    fig.suptitle("training curves (averaged over ranks)")
    return _save(fig, path)


def misclassified(path: Path, examples: list[tuple[np.ndarray, np.ndarray, np.ndarray]], names: Sequence[str]) -> str:
    """A grid of up to 25 wrongly classified test images captioned 'predicted P, label L'."""
    images = [(img, p, t) for x, pred, true in examples for img, p, t in zip(x, pred, true, strict=True)][:25]
    cols = 5
    rows = max(1, (len(images) + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.7, rows * 1.9), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (img, p, t) in zip(axes.ravel(), images, strict=False):
        ax.imshow(np.squeeze(img), cmap="gray_r")
        ax.set_title(f"predicted {names[int(p)]}\nlabel {names[int(t)]}", fontsize=7)
    fig.suptitle("misclassified test images" if images else "no misclassified test images")
    return _save(fig, path)


def reconstructions(path: Path, examples: list[tuple[np.ndarray, np.ndarray, np.ndarray]], n: int = 8) -> str:
    """Test images (top row) and the autoencoder's reconstructions (bottom row)."""
    x = np.concatenate([e[0] for e in examples])[:n]
    out = np.concatenate([e[1] for e in examples])[:n]
    fig, axes = plt.subplots(2, len(x), figsize=(len(x) * 1.2, 2.6), squeeze=False)
    for i in range(len(x)):
        for row, img in ((0, x[i]), (1, out[i])):
            axes[row, i].imshow(np.squeeze(img), cmap="gray_r")
            axes[row, i].axis("off")
    fig.suptitle("test images (top) and reconstructions (bottom)")
    return _save(fig, path)
