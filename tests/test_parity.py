"""Engine parity: Spark and Dask produce the same split membership, fit and written data; scaler vs scikit-learn."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import ROOT
from sklearn.preprocessing import StandardScaler

from pipelines.config import dump_config, load_config
from pipelines.data.bundled import fashion_mnist_available, resolve_path
from pipelines.ingest.stage import run_ingest
from pipelines.runs import Run


def _ingest_both(dask_engine, spark_engine, tmp_path, conf: str, overrides: list[str] = ()):
    out = {}
    for engine in (dask_engine, spark_engine):
        cfg = load_config(ROOT / "conf" / conf, [f"runs_dir={tmp_path / engine.kind}", *overrides])
        run = Run.create(cfg.name, cfg.runs_dir, dump_config(cfg), {"kind": engine.kind})
        result = run_ingest(engine, cfg.dataset, cfg.stages[0], cfg.engine.partitions, run)
        frames = {
            split: pq.read_table(path).to_pandas().sort_values(["_source", "_row"], ignore_index=True)
            for split, path in result.outputs.items()
        }
        out[engine.kind] = (result, frames)
    return out


def test_tabular_parity_and_train_only_scaler(dask_engine, spark_engine, tmp_path):
    both = _ingest_both(dask_engine, spark_engine, tmp_path, "fair.yaml")
    (rd, fd), (rs, fs) = both["dask"], both["spark"]
    assert rd.splits == rs.splits and rd.read == rs.read == 6366
    # later stages get engine-native frames over the written splits
    assert dask_engine.count(rd.frames["train"]) == spark_engine.count(rs.frames["train"]) == rd.splits["train"]
    assert rd.partition_rows == rs.partition_rows and max(rd.partition_rows) - min(rd.partition_rows) <= 1
    for split in fd:
        assert fd[split]["_row"].tolist() == fs[split]["_row"].tolist()  # same membership
        pd.testing.assert_frame_equal(fd[split], fs[split], check_exact=False, rtol=1e-12)
    # Reference: scikit-learn's StandardScaler fitted on the same training rows of the raw file.
    raw = pd.read_csv(resolve_path("bundled:fair"))
    raw["_row"] = np.arange(2, len(raw) + 2)
    numeric = ["rate_marriage", "age", "yrs_married", "children", "religious", "educ"]
    train_raw = raw.set_index("_row").loc[fd["train"]["_row"], numeric]
    test_raw = raw.set_index("_row").loc[fd["test"]["_row"], numeric]
    scaler = StandardScaler().fit(train_raw.to_numpy())
    np.testing.assert_allclose(
        fd["test"][numeric].to_numpy(), scaler.transform(test_raw.to_numpy()), rtol=1e-9, atol=1e-12
    )
    np.testing.assert_allclose(fd["train"][numeric].mean().to_numpy(), 0.0, atol=1e-12)
    # Dummy coding: occupation levels 1..6 -> five indicator columns, first level dropped.
    assert [c for c in fd["train"].columns if c.startswith("occupation_")][:5] == [
        f"occupation_{i}" for i in range(2, 7)
    ]


@pytest.mark.slow
def test_image_parity(dask_engine, spark_engine, tmp_path):
    conf = "fashion_mnist.yaml" if fashion_mnist_available() else "digits.yaml"
    both = _ingest_both(dask_engine, spark_engine, tmp_path, conf)
    (rd, fd), (rs, fs) = both["dask"], both["spark"]
    assert rd.splits == rs.splits
    for split in fd:
        assert fd[split]["_row"].tolist() == fs[split]["_row"].tolist()
        assert fd[split]["label"].tolist() == fs[split]["label"].tolist()
        assert fd[split]["image"].tolist() == fs[split]["image"].tolist()
    first = np.frombuffer(fd["train"]["image"].iloc[0], np.float32)
    assert first.min() >= 0.0 and first.max() <= 1.0


def test_split_fractions_and_seed(dask_engine, tmp_path):
    if not fashion_mnist_available():
        pytest.skip("Fashion-MNIST not installed")
    cfg = load_config(ROOT / "conf" / "fashion_mnist.yaml", [f"runs_dir={tmp_path}", "stages.0.write=false"])
    a = run_ingest(dask_engine, cfg.dataset, cfg.stages[0], 4)
    # 60,000 rows, 10 % test and 10 % val: binomial sd is about 73 rows, so allow 5 sd.
    assert abs(a.splits["test"] - 6000) < 370 and abs(a.splits["val"] - 6000) < 370
    cfg2 = load_config(ROOT / "conf" / "fashion_mnist.yaml", ["stages.0.split.seed=43", "stages.0.write=false"])
    b = run_ingest(dask_engine, cfg2.dataset, cfg2.stages[0], 4)
    assert a.splits != b.splits
