"""A sweep's figures: the metric as a heatmap over two keys, and a parallel-coordinates plot of every trial."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from pipelines.plotting import plt, save


def _positions(column: pd.Series) -> tuple[np.ndarray, list[str]]:
    """Each value's position on its axis (sorted distinct values, numbers in order) and the tick labels."""
    column = column.map(lambda v: json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v)
    number = (int, float, np.number)
    levels = sorted(
        column.dropna().unique().tolist(),
        key=lambda v: (0, float(v), "") if isinstance(v, number) else (1, 0.0, str(v)),
    )
    levels += [None] if column.isna().any() else []
    where = {str(v): i for i, v in enumerate(levels)}
    return column.map(lambda v: where[str(None if pd.isna(v) else v)]).to_numpy(float), [str(v) for v in levels]


def heatmap(path: Path, table: pd.DataFrame, x: str, y: str, metric: str, mode: Literal["max", "min"]) -> str:
    """The best metric (over the other keys) for each pair of values of two keys, the numbers written in."""
    xs, xlabels = _positions(table[x].astype(object))
    ys, ylabels = _positions(table[y].astype(object))
    grid = np.full((len(ylabels), len(xlabels)), np.nan)
    pick = np.fmax if mode == "max" else np.fmin
    for i, j, m in zip(ys.astype(int), xs.astype(int), table["metric"].to_numpy(float), strict=True):
        grid[i, j] = pick(grid[i, j], m)
    fig, ax = plt.subplots(figsize=(1.6 + 0.9 * len(xlabels), 1.2 + 0.6 * len(ylabels)))
    image = ax.imshow(grid, cmap="viridis" if mode == "max" else "viridis_r", aspect="auto")
    ax.set(xticks=range(len(xlabels)), yticks=range(len(ylabels)), xlabel=x, ylabel=y)
    ax.set_xticklabels(xlabels)
    ax.set_yticklabels(ylabels)
    for (i, j), v in np.ndenumerate(grid):
        if np.isfinite(v):
            r, g, b, _ = image.cmap(image.norm(v))
            shade = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"
            ax.text(j, i, f"{v:.3g}", ha="center", va="center", fontsize=8, color=shade)
    fig.colorbar(image, ax=ax, label=metric)
    ax.set_title(f"{mode} {metric} over the other keys")
    return save(fig, path)


def parallel(path: Path, table: pd.DataFrame, keys: Sequence[str], metric: str) -> str:
    """One line per scored trial across an axis per key and the metric, colored by the metric."""
    axes = [*keys, "metric"]
    scaled, labels = [], []
    for key in axes:
        if key == "metric":
            values = table["metric"].to_numpy(float)
            low, high = np.nanmin(values), np.nanmax(values)
            scaled.append((values - low) / (high - low) if high > low else np.full(len(values), 0.5))
            labels.append([f"{low:.3g}", f"{high:.3g}"])
            continue
        pos, names = _positions(table[key].astype(object))
        scaled.append(pos / max(1, len(names) - 1))
        labels.append(names)
    data = np.column_stack(scaled)
    colors = plt.get_cmap("viridis")(data[:, -1])
    fig, ax = plt.subplots(figsize=(2.0 + 1.6 * len(axes), 4.0))
    for line, color in zip(data, colors, strict=True):
        ax.plot(range(len(axes)), line, color=color, alpha=0.7, linewidth=1.2)
    for i, names in enumerate(labels):
        ax.axvline(i, color="grey", linewidth=0.8)
        ticks = np.linspace(0, 1, len(names)) if len(names) > 1 else [0.5]
        for t, name in zip(ticks, names, strict=True):
            ax.text(i + 0.03, t, name, fontsize=7, va="center")
    ax.set(xticks=range(len(axes)), yticks=[], xlim=(-0.2, len(axes) - 0.6))
    ax.set_xticklabels([*keys, metric])
    ax.set_title("trials (color: metric)")
    return save(fig, path)


def sweep_plots(
    folder: Path,
    table: pd.DataFrame,
    keys: Sequence[str],
    axes: Sequence[str],
    metric: str,
    mode: Literal["max", "min"],
) -> list[str]:
    """heatmap.png (with two keys or more) and parallel.png of the trials that have a metric."""
    scored = table[table["metric"].notna()]
    figures = []
    if len(axes) == 2:
        figures.append(heatmap(folder / "heatmap.png", scored, axes[0], axes[1], metric, mode))
    figures.append(parallel(folder / "parallel.png", scored, keys, metric))
    return figures
