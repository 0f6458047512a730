"""Stratified split: exact per-class quotas from the seeded keys, found by two small reductions (no row gathered).

Each accepted row (a filter's drop is none) of a file that no split declares has its seeded key u(source, row,
seed). Within a class of N rows, the test split takes the round(N * test_fraction) rows with the smallest keys and
val the next round(N * (test + val)) - round(N * test): each share is within half a row of its exact fraction. The
cut keys are found without moving rows: a first pass counts each class's keys in BINS bins, a second fetches the
keys of the one bin where each cut falls. Both passes and the reassignment depend only on (source, row, seed,
label), so either engine makes the same split.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import pandas as pd

from pipelines.engines.base import Engine
from pipelines.ingest.config import SplitConfig
from pipelines.ingest.expressions import FILTERED
from pipelines.ingest.split import TEST, TRAIN, VAL, uniform_keys

BINS = 4096


def _keys(pdf: pd.DataFrame, label: str, declared: frozenset[str], seed: int) -> tuple[np.ndarray, ...]:
    """Positions, class names and seeded keys of the accepted rows the seeded split divides."""
    accepted = pdf["_reason"].isna().to_numpy() & (pdf["_split"].to_numpy() != FILTERED)  # a filter's drop stays one
    ok = accepted & ~pdf["_source"].isin(declared).to_numpy()
    where = np.flatnonzero(ok)
    u = np.empty(len(where))
    sources = pdf["_source"].to_numpy()[where]
    rows = pdf["_row"].to_numpy()[where]
    for source in np.unique(sources):
        at = sources == source
        u[at] = uniform_keys(str(source), rows[at], seed)
    classes = np.array([str(v) for v in pdf[label].to_numpy()[where].tolist()], dtype=object)
    return where, classes, u


def _counts(pdf: pd.DataFrame, label: str, declared: frozenset[str], seed: int) -> dict[str, Any]:
    _, classes, u = _keys(pdf, label, declared, seed)
    bins = np.minimum((u * BINS).astype(np.int64), BINS - 1)
    frame = pd.DataFrame({"c": classes, "b": bins}).value_counts()
    return {"counts": [[c, int(b), int(n)] for (c, b), n in frame.items()]}


def _boundary(
    pdf: pd.DataFrame, label: str, declared: frozenset[str], seed: int, wanted: list[tuple[str, int]]
) -> dict[str, Any]:
    _, classes, u = _keys(pdf, label, declared, seed)
    bins = np.minimum((u * BINS).astype(np.int64), BINS - 1)
    out = []
    for c, b in wanted:
        out += [[c, float(v)] for v in u[(classes == c) & (bins == b)]]
    return {"keys": out}


def stratified_cuts(engine: Engine, frame: Any, label: str, declared: frozenset[str], split: SplitConfig) -> dict:
    """Per class: the largest key of the test split and of test + val (-1: none), and the class's row count."""
    seed = split.seed
    hist: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(BINS, np.int64))
    for part in engine.reduce_partitions(frame, lambda pdf: _counts(pdf, label, declared, seed)):
        for c, b, n in part["counts"]:
            hist[c][b] += n
    targets: dict[str, list[int]] = {}
    wanted: set[tuple[str, int]] = set()
    for c, counts in hist.items():
        total = int(counts.sum())
        k_test = round(total * split.test_fraction)
        k_both = round(total * (split.test_fraction + split.val_fraction))
        targets[c] = [total, k_test, k_both]
        cumulative = np.cumsum(counts)
        for k in (k_test, k_both):
            if k > 0:
                wanted.add((c, int(np.searchsorted(cumulative, k))))
    keys: dict[tuple[str, int], list[float]] = defaultdict(list)
    order = sorted(wanted)
    for part in engine.reduce_partitions(frame, lambda pdf: _boundary(pdf, label, declared, seed, order)):
        for c, v in part["keys"]:
            keys[(c, min(int(v * BINS), BINS - 1))].append(v)
    cuts = {}
    for c, (total, k_test, k_both) in targets.items():
        cumulative = np.cumsum(hist[c])
        found = []
        for k in (k_test, k_both):
            if k == 0:
                found.append(-1.0)
                continue
            b = int(np.searchsorted(cumulative, k))
            before = int(cumulative[b - 1]) if b else 0
            found.append(sorted(keys[(c, b)])[k - before - 1])
        cuts[c] = {"rows": total, "test_cut": found[0], "val_cut": found[1], "test": k_test, "val": k_both - k_test}
    return cuts


def restratify(pdf: pd.DataFrame, label: str, declared: frozenset[str], seed: int, cuts: dict) -> pd.DataFrame:
    """Reassign the split of the rows the seeded split divides: by class, keys up to the cuts to test, then val."""
    where, classes, u = _keys(pdf, label, declared, seed)
    test_cut = np.array([cuts[c]["test_cut"] for c in classes.tolist()], dtype=float)
    val_cut = np.array([cuts[c]["val_cut"] for c in classes.tolist()], dtype=float)
    codes = np.full(len(where), TRAIN, dtype=np.int8)
    codes[u <= val_cut] = VAL
    codes[u <= test_cut] = TEST
    out = pdf.copy()
    split = out["_split"].to_numpy().copy()
    split[where] = codes
    out["_split"] = split
    return out
