"""Stratified splits: exact per-class shares, a rare class kept in test, the same split on both engines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.config import parse_config
from pipelines.ingest.config import SplitConfig
from pipelines.ingest.split import TEST, assign_split
from pipelines.pipeline import run_pipeline

COUNTS = {0: 420, 1: 175, 2: 5}  # 600 rows, the rare class (2) 5 of them
RARE = 2


def rare_csv(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    labels = np.repeat(list(COUNTS), list(COUNTS.values()))
    labels = labels[rng.permutation(len(labels))]
    frame = pd.DataFrame({"x1": rng.normal(size=len(labels)), "x2": rng.normal(size=len(labels)), "kind": labels})
    path = tmp_path / "rare.csv"
    frame.to_csv(path, index=False)
    return path


def seed_losing_the_rare_class(path: Path, test_fraction: float) -> int:
    """The first seed whose plain seeded split sends none of the rare rows to test (CSV rows are line numbers)."""
    frame = pd.read_csv(path)
    lines = np.flatnonzero(frame["kind"].to_numpy() == RARE) + 2
    for seed in range(1000):
        if not (assign_split(path.name, lines, SplitConfig(test_fraction=test_fraction, seed=seed)) == TEST).any():
            return seed
    raise AssertionError("no seed loses the rare class")


def config(tmp_path: Path, path: Path, engine: str, split: dict) -> dict:
    return {
        "name": "rare",
        "runs_dir": str(tmp_path / "runs"),
        "engine": {"kind": engine, "partitions": 3},
        "dataset": {
            "name": "rare",
            "format": "csv",
            "path": str(path),
            "features": ["x1", "x2"],
            "label": "kind",
            "types": {"kind": "int"},
        },
        "stages": [{"stage": "ingest", "split": split, "max_rejected_fraction": 0.0}],
    }


@pytest.mark.slow
def test_a_stratified_split_keeps_the_rare_class_and_each_share_on_both_engines(dask_engine, spark_engine, tmp_path):
    path = rare_csv(tmp_path)
    seed = seed_losing_the_rare_class(path, 0.2)
    plain_config = parse_config(config(tmp_path / "plain", path, "dask", {"test_fraction": 0.2, "seed": seed}))
    plain = run_pipeline(plain_config, engine=dask_engine)
    test = pd.read_parquet(plain.run.dir / "data" / "test")
    split = {"test_fraction": 0.2, "val_fraction": 0.1, "seed": seed, "stratify": True}
    digests = {}
    for engine in (dask_engine, spark_engine):
        run = run_pipeline(parse_config(config(tmp_path / engine.kind, path, engine.kind, split)), engine=engine).run
        facts = run.stage_facts("ingest")
        digests[engine.kind] = facts["splits_digest"]
        frames = {s: pd.read_parquet(run.dir / "data" / s) for s in ("train", "val", "test")}
        for name, n in COUNTS.items():
            share = {s: int((frames[s]["kind"] == name).sum()) for s in frames}
            assert sum(share.values()) == n
            assert abs(share["test"] - 0.2 * n) <= 0.5, (name, share)
            assert abs(share["val"] - 0.1 * n) <= 1.0, (name, share)
        assert int((frames["test"]["kind"] == RARE).sum()) == 1  # kept, where the plain split lost it
    assert int((test["kind"] == RARE).sum()) == 0
    assert digests["dask"] == digests["spark"]


def test_a_stratified_split_leaves_the_rows_a_filter_dropped_out_of_every_share(dask_engine, tmp_path):
    path = rare_csv(tmp_path)
    conf = config(tmp_path, path, "dask", {"test_fraction": 0.2, "seed": 3, "stratify": True})
    conf["stages"][0]["filter"] = "x1 > -0.5"
    run = run_pipeline(parse_config(conf), engine=dask_engine).run
    facts = run.stage_facts("ingest")
    kept = pd.read_csv(path).query("x1 > -0.5")
    assert facts["filtered"] == 600 - len(kept)
    frames = {s: pd.read_parquet(run.dir / "data" / s) for s in ("train", "test")}
    assert sum(len(f) for f in frames.values()) == len(kept)  # no dropped row came back into a split
    assert sorted(pd.concat(frames.values())["_row"]) == sorted(kept.index + 2)  # rows are CSV line numbers
    for name, n in kept["kind"].value_counts().items():
        share = int((frames["test"]["kind"] == name).sum())
        assert abs(share - 0.2 * n) <= 0.5, (name, n, share)  # exact shares of the rows the filter kept
