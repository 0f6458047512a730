"""Figures of a training run: curves, misclassified test images, reconstructions, first-layer filters (confusion
matrix is shared)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.plotting import confusion, plt
from pipelines.plotting import save as _save

__all__ = ["confusion", "curves", "filters", "first_conv_kernel", "misclassified", "reconstructions"]


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


def first_conv_kernel(model: Any) -> np.ndarray | None:
    """The kernel (height, width, in, out) of a network's first weighted layer when it is a Conv2D, else None.

    A nested model (a transfer network's base) counts by its own first layer.
    """
    for layer in model.layers:
        if hasattr(layer, "layers"):
            return first_conv_kernel(layer)
        if layer.weights:
            return np.asarray(layer.get_weights()[0]) if type(layer).__name__ == "Conv2D" else None
    return None


def filters(path: Path, kernel: np.ndarray, limit: int = 64) -> str:
    """The first conv layer's filters as small images (input channels averaged; red positive, blue negative)."""
    weights = np.asarray(kernel, dtype=float).mean(axis=2)[..., :limit]  # (h, w, filters)
    count = weights.shape[-1]
    cols = min(8, count)
    rows = (count + cols - 1) // cols
    top = float(np.abs(weights).max()) or 1.0
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.9, rows * 0.9 + 0.5), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i, ax in enumerate(axes.ravel()[:count]):
        ax.imshow(weights[..., i], cmap="RdBu_r", vmin=-top, vmax=top)
    shape = "x".join(str(n) for n in kernel.shape[:2])
    fig.suptitle(f"first-layer filters ({count} of {kernel.shape[-1]}, {shape})", fontsize=9)
    return _save(fig, path)
