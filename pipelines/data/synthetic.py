"""Synthetic data for scale: classification, regression and blobs, written as partitioned Parquet."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.atomic import atomic_dir

Kind = Literal["classification", "regression", "blobs"]


def _coefficients(features: int, seed: int) -> np.ndarray:
    return np.random.default_rng([seed, 0xC0EF]).normal(0.0, 1.0, features)


def generate_part(kind: Kind, rows: int, features: int, seed: int, part: int, classes: int = 2) -> pa.Table:
    """One part: columns x0..x{features-1} and y, reproducible from (seed, part)."""
    rng = np.random.default_rng([seed, part])
    beta = _coefficients(features, seed)
    if kind == "blobs":
        centers = np.random.default_rng([seed, 0xB10B]).uniform(-10, 10, (classes, features))
        y = rng.integers(0, classes, rows)
        x = centers[y] + rng.normal(0.0, 1.0, (rows, features))
    else:
        x = rng.normal(0.0, 1.0, (rows, features))
        eta = x @ beta / np.sqrt(features) * 3.0
        if kind == "regression":
            y = eta + 1.5 + rng.normal(0.0, 1.0, rows)
        elif classes == 2:
            y = (rng.random(rows) < 1.0 / (1.0 + np.exp(-eta))).astype(np.int64)
        else:
            w = np.random.default_rng([seed, 0x5EED]).normal(0.0, 1.0, (features, classes))
            logits = x @ w
            p = np.exp(logits - logits.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            y = (rng.random((rows, 1)) > np.cumsum(p, axis=1)).sum(axis=1)
    cols: dict[str, np.ndarray] = {f"x{i}": x[:, i] for i in range(features)}
    cols["y"] = y
    return pa.table(cols)


def generate(
    path: str | os.PathLike[str],
    kind: Kind = "classification",
    rows: int = 100_000,
    features: int = 20,
    parts: int = 8,
    seed: int = 0,
    classes: int = 2,
    fmt: Literal["parquet", "csv"] = "parquet",
) -> Path:
    """Write `rows` rows in `parts` files (part-00000.parquet ...) atomically; returns the directory."""
    bounds = [round(i * rows / parts) for i in range(parts + 1)]
    with atomic_dir(path) as tmp:
        tmp.mkdir(parents=True)
        for i in range(parts):
            table = generate_part(kind, bounds[i + 1] - bounds[i], features, seed, i, classes)
            if fmt == "parquet":
                pq.write_table(table, tmp / f"part-{i:05d}.parquet", row_group_size=64_000)
            else:
                import pyarrow.csv as pacsv

                pacsv.write_csv(table, tmp / f"part-{i:05d}.csv")
    return Path(path)
