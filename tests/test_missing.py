"""Missing values as a declared policy per column (issue 29 item 2): quarantine (default), drop, or impute fitted
on the train split as scikit-learn's SimpleImputer fits it; recorded in the manifest and applied by predict."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from sklearn.impute import SimpleImputer

from pipelines.config import PipelineConfig
from pipelines.errors import ConfigError
from pipelines.ingest.config import DatasetConfig
from pipelines.ingest.schema import resolve_table_schema
from pipelines.pipeline import run_pipeline
from pipelines.predict import predict

POLICY = {
    "a": {"impute": "mean"},
    "b": {"impute": "median"},
    "g": {"impute": "most_frequent"},
    "h": {"impute": "constant", "value": "none"},
    "c": "drop",
}


def _frame(rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "a": np.round(rng.normal(5, 2, rows), 3),
            "b": rng.integers(0, 9, rows).astype(float),
            "g": rng.choice(["x", "y", "z"], rows, p=[0.5, 0.3, 0.2]),
            "h": rng.choice(["p", "q"], rows),
            "c": np.round(rng.normal(0, 1, rows), 3),
            "d": np.round(rng.normal(0, 1, rows), 3),
        }
    )
    frame["y"] = (frame["a"] + frame["b"] / 3 + rng.normal(0, 1, rows) > 6).astype(int)
    for col, share in [("a", 0.1), ("b", 0.15), ("g", 0.1), ("h", 0.1), ("c", 0.05)]:
        frame[col] = frame[col].astype(object).where(rng.random(rows) >= share, None)
    frame.loc[3, "d"] = None  # quarantined: d has the default policy
    return frame


def _config(tmp_path, path, engine):
    return PipelineConfig.model_validate(
        {
            "name": "miss",
            "runs_dir": str(tmp_path / engine.kind),
            "dataset": {
                "name": "miss",
                "format": "csv",
                "path": str(path),
                "formula": "y ~ a + b + g + h + c + d",
                "types": {"a": "float", "b": "float", "c": "float", "d": "float", "y": "int"},
                "missing": POLICY,
            },
            "stages": [
                {
                    "stage": "ingest",
                    "split": {"test_fraction": 0.3, "seed": 4},
                    "standardize": False,
                    "encode": "dummy",
                },
                {"stage": "model", "name": "glm", "model": "logistic_regression", "params": {"penalty": None}},
            ],
        }
    )


@pytest.mark.slow
def test_imputation_matches_simple_imputer_on_the_train_split_and_predict_applies_it(engine, tmp_path):
    frame = _frame(400, 1)
    path = tmp_path / "d.csv"
    frame.to_csv(path, index=False)
    run, _ = run_pipeline(_config(tmp_path, path, engine), engine=engine)
    facts = next(s for s in json.loads((run.dir / "manifest.json").read_text())["stages"] if s["name"] == "ingest")
    frame["_row"] = np.arange(len(frame)) + 2  # CSV record numbers, the header being 1
    train_rows = pq.read_table(run.dir / "data" / "train").to_pandas()["_row"]
    train = frame.set_index("_row").loc[train_rows]
    kept = frame[frame["c"].notna() & frame["d"].notna()]
    # fitted values: SimpleImputer on exactly the train split's rows
    for col, strategy in [("a", "mean"), ("b", "median")]:
        ref = SimpleImputer(strategy=strategy).fit(train[[col]].astype(float)).statistics_[0]
        assert facts["imputed_values"][col] == pytest.approx(ref, rel=1e-12), col
    ref_g = SimpleImputer(strategy="most_frequent", missing_values=None).fit(train[["g"]]).statistics_[0]
    assert facts["imputed_values"]["g"] == ref_g and facts["imputed_values"]["h"] == "none"
    # counts: read = accepted + rejected + dropped; imputed cells counted on the rows kept
    assert facts["read"] == 400 and facts["rejected"] == 1
    assert facts["dropped"] == int(frame["c"].isna().sum() - (frame["c"].isna() & frame["d"].isna()).sum())
    assert facts["read"] == facts["accepted"] + facts["rejected"] + facts["dropped"]
    assert facts["imputed_cells"] == {c: int(kept[c].isna().sum()) for c in ["a", "b", "g", "h"]}
    assert facts["missing"]["c"] == "drop" and facts["missing"]["a"] == {"impute": "mean", "value": None}
    # the written splits hold the imputed values (train and test alike)
    test = pq.read_table(run.dir / "data" / "test").to_pandas().set_index("_row")
    source = frame.set_index("_row").loc[test.index]
    expect = source["a"].astype(float).fillna(facts["imputed_values"]["a"])
    np.testing.assert_allclose(test["a"], expect, rtol=0, atol=0)
    # predict: the same values fill new data's missing cells; drop and quarantine as at ingest
    new = frame.drop(columns="_row").head(60)
    new_path = tmp_path / "new.csv"
    new.to_csv(new_path, index=False)
    summary = predict(run.dir, "glm", str(new_path), tmp_path / f"out-{engine.kind}", engine=engine)
    assert summary["rejected"] == 1
    assert summary["scored"] == int((new["c"].notna() & new["d"].notna()).sum())


def test_policies_are_checked_against_the_schema():
    base = {"name": "d", "format": "csv", "path": "x.csv", "features": ["a", "g"], "label": "y"}
    for missing, match in [
        ({"z": "drop"}, "dataset.missing.z: 'z' is not a column"),
        ({"g": {"impute": "mean"}}, "impute mean needs a number column"),
        ({"y": {"impute": "median"}}, "the label is not imputed"),
    ]:
        with pytest.raises(ConfigError, match=match):
            ds = DatasetConfig(**base, types={"g": "category"}, missing=missing)
            resolve_table_schema(ds, ["a", "g", "y"], "x.csv")
    with pytest.raises(ValueError, match="'value' goes with impute: constant"):
        DatasetConfig(name="d", format="csv", path="x", features=["a"], missing={"a": {"impute": "constant"}})


def test_report_lists_imputed_cells_and_dropped_rows():
    from pipelines.report.content import short_facts

    facts = dict(short_facts({"name": "ingest", "read": 10, "dropped": 2, "imputed_cells": {"a": 3, "g": 1}}))
    assert facts["dropped"] == "2" and facts["imputed cells"] == "a 3, g 1"
