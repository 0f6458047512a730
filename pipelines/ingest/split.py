"""Seeded hash split: a record's split depends only on (source file name, row, seed), on any engine."""

from __future__ import annotations

import zlib

import numpy as np

from pipelines.ingest.config import SplitConfig

TRAIN, VAL, TEST = 0, 1, 2
SPLIT_NAMES = {TRAIN: "train", VAL: "val", TEST: "test"}
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finalizer, vectorized (uint64 arithmetic wraps)."""
    with np.errstate(over="ignore"):
        x = x + _GOLDEN
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
        return x ^ (x >> np.uint64(31))


def uniform_keys(source: str, rows: np.ndarray, seed: int) -> np.ndarray:
    """A uniform number in [0, 1) per (source, row, seed)."""
    base = np.uint64(zlib.crc32(source.encode("utf-8"))) ^ (np.uint64(seed & 0xFFFFFFFF) << np.uint64(32))
    with np.errstate(over="ignore"):
        mixed = splitmix64(splitmix64(np.full(len(rows), base, dtype=np.uint64)) + rows.astype(np.uint64))
    return (mixed >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def assign_split(source: str, rows: np.ndarray, split: SplitConfig) -> np.ndarray:
    """TRAIN/VAL/TEST code per row."""
    u = uniform_keys(source, rows, split.seed)
    out = np.full(len(rows), TRAIN, dtype=np.int8)
    out[u < split.test_fraction + split.val_fraction] = VAL
    out[u < split.test_fraction] = TEST
    return out
