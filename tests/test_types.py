"""Column types inferred from the data (issue 29 item 5): R's factor coding with no `types:` section, the same
answer on both engines and whatever the partitioning, declared types overriding, helpful rejects."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import statsmodels.formula.api as smf
import yaml

from pipelines.config import PipelineConfig
from pipelines.data import hmda
from pipelines.ingest.config import DatasetConfig
from pipelines.ingest.infer import r_level_order
from pipelines.ingest.stage import IngestStage, plan_ingest, run_ingest
from pipelines.pipeline import run_pipeline

YES_NO = ["deny", "phist", "selfemp", "insurance", "condomin", "afam", "single", "hschool"]


def _rel(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))


def test_levels_sort_as_r_sorts_factor_levels():
    # R (en_US.UTF-8): sort(c("b","A","a","B","10","2")) -> "10" "2" "a" "A" "b" "B"; factor(c(10, 2, 1.5)) -> 1.5 2 10
    assert r_level_order(["b", "A", "a", "B", "10", "2"]) == ["10", "2", "a", "A", "b", "B"]
    assert r_level_order(["10", "2", "1.5"]) == ["1.5", "2", "10"]
    assert r_level_order(["yes", "no", "No"]) == ["no", "No", "yes"]


def test_inference_rule_on_mixed_columns(dask_engine, tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("i,f,b,t,c,g,y\n1,1.5,Yes,TRUE,x,b,1\n2,2,no,false,7,A,0\n-3,,NO,True,y,a,1\n")
    ds = DatasetConfig(name="d", format="csv", path=str(path), features=list("ifbtcg"), label="y")
    table = plan_ingest(ds, 2, dask_engine).table
    kinds = {c.name: c.kind for c in table.columns}
    assert kinds == {"i": "int", "f": "float", "b": "bool", "t": "bool", "c": "category", "g": "category", "y": "int"}
    assert table.declared == frozenset()
    declared = plan_ingest(ds.model_copy(update={"types": {"i": "float", "y": "category"}}), 2, dask_engine).table
    assert {c.name: c.kind for c in declared.columns}["i"] == "float" and declared.label.kind == "category"
    assert declared.column_types()["i"] == {"type": "float", "origin": "declared"}
    assert declared.column_types()["f"] == {"type": "float", "origin": "inferred"}


def test_inference_sees_the_whole_column_on_both_engines(dask_engine, spark_engine, tmp_path):
    # numbers only in the first 600 rows (the first partitions), text after: a category on either engine
    rows = [f"{i % 7},{i * 0.5},{i % 2}" for i in range(600)] + [
        f"{w},{i},1" for i, w in enumerate(["low", "High"] * 20)
    ]
    path = tmp_path / "late.csv"
    path.write_text("code,x,y\n" + "\n".join(rows) + "\n")
    ds = DatasetConfig(name="late", format="csv", path=str(path), features=["code", "x"], label="y")
    found = []
    for engine in (dask_engine, spark_engine):
        for partitions in (1, 4):
            plan = plan_ingest(ds, partitions, engine, block_mb=1)
            assert len(plan.parts) == partitions
            found.append({c.name: c.kind for c in plan.table.columns})
            stage = IngestStage(encode="dummy", standardize=False, split={"test_fraction": 0.0})
            result = run_ingest(engine, ds, stage, partitions)
            assert result.rejected == 0 and result.accepted == 640
            assert result.fitted.levels["code"] == ["0", "1", "2", "3", "4", "5", "6", "High", "low"]
    assert all(f == {"code": "category", "x": "float", "y": "int"} for f in found)


def test_declared_type_broken_names_column_and_the_entry_that_accepts_it(dask_engine, tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("a,y\n1,0\nno,1\n2.5,0\n")
    ds = DatasetConfig(name="d", format="csv", path=str(path), features=["a"], label="y", types={"a": "int"})
    result = run_ingest(dask_engine, ds, IngestStage(max_rejected_fraction=1.0), 1)
    assert result.rejected == 2
    from pipelines.ingest.stage import read_part

    plan = plan_ingest(ds, 1, dask_engine)
    frame = read_part(plan, plan.parts[0], IngestStage().split)
    reasons = frame["_reason"].dropna().tolist()
    assert reasons == [
        "not a number: 'no' in column 'a'; `types: {a: category}` would accept it",
        "not an integer: 2.5 in column 'a'; `types: {a: float}` would accept it",
    ]


def _write_prepared(tmp_path):
    frame = hmda.prepared()
    frame["branch"] = np.where(np.arange(len(frame)) % 3 == 0, "urban", "Rural")  # a two-level text factor
    path = tmp_path / "hmda.csv"
    frame.to_csv(path, index=False)
    return frame, path


def _fit(engine, tmp_path, path, formula, model, types=None, tag=""):
    dataset = {"name": "hmda", "format": "csv", "path": str(path), "formula": formula}
    if types:
        dataset["types"] = types
    cfg = PipelineConfig.model_validate(
        {
            "name": "hmda",
            "runs_dir": str(tmp_path / f"runs-{engine.kind}{tag}"),
            "dataset": dataset,
            "stages": [
                {"stage": "ingest", "split": {"test_fraction": 0.0}, "standardize": False, "encode": "dummy"},
                {"stage": "model", "name": "m", "model": model},
            ],
        }
    )
    run, _ = run_pipeline(cfg, engine=engine)
    metrics = json.loads((run.dir / "metrics.json").read_text())
    return run, metrics["m"]["summary"]


@pytest.mark.slow
def test_prepared_hmda_fits_with_no_types_section_as_r_does(engine, tmp_path):
    frame, path = _write_prepared(tmp_path)
    formula = "deny ~ pirat + afam + branch + chist"
    run, summary = _fit(engine, tmp_path, path, formula, "linear_regression")
    ref_frame = frame.assign(deny=(frame["deny"] == "yes").astype(float))
    ref = smf.ols("deny ~ pirat + C(afam) + C(branch) + chist", ref_frame).fit()
    coefficients = summary["coefficients"]
    order = ["Intercept", "pirat", "C(afam)[T.yes]", "C(branch)[T.urban]", "chist"]  # R's baselines: no, Rural
    assert _rel(coefficients["estimate"], ref.params[order]) < 1e-8
    assert _rel(coefficients["std_error"], ref.bse[order]) < 1e-8
    manifest = json.loads((run.dir / "manifest.json").read_text())
    recorded = next(s for s in manifest["stages"] if s["name"] == "ingest")["column_types"]
    assert recorded["afam"] == {"type": "bool", "origin": "inferred"}
    assert recorded["branch"] == {"type": "category", "origin": "inferred"}
    assert recorded["chist"] == {"type": "int", "origin": "inferred"}
    declared = {"deny": "bool", "afam": "bool", "branch": "category", "pirat": "float", "chist": "int"}
    _, again = _fit(engine, tmp_path, path, formula, "linear_regression", declared, tag="-declared")
    assert again["coefficients"]["estimate"] == coefficients["estimate"]
    assert again["coefficients"]["std_error"] == coefficients["std_error"]
    written = pq.read_table(run.dir / "data" / "train").to_pandas()
    assert set(written["deny"].unique()) == {0, 1}


def test_schema_command_prints_types_to_paste(tmp_path, capsys):
    import yaml

    from pipelines.cli import main

    _, path = _write_prepared(tmp_path)
    conf = tmp_path / "c.yaml"
    conf.write_text(
        "name: s\ndataset: {name: s, format: csv, path: " + str(path) + ", formula: deny ~ pirat + afam + C(chist)}\n"
        "stages: [{stage: ingest}]\n"
    )
    assert main(["schema", str(conf)]) == 0
    types = yaml.safe_load(capsys.readouterr().out)["types"]
    assert types == {"pirat": "float", "afam": "bool", "chist": "category", "deny": "bool"}


@pytest.mark.slow
def test_hmda_raw_layout_config_reproduces_the_course(engine, tmp_path):
    from conftest import ROOT

    from pipelines.config import load_config

    cfg = load_config(ROOT / "conf" / "hmda.yaml", [f"runs_dir={tmp_path / engine.kind}"])
    run, _ = run_pipeline(cfg, engine=engine)
    metrics = json.loads((run.dir / "metrics.json").read_text())
    raw = hmda.raw()
    kept = raw[raw["s13"].isin([3, 4, 5])]
    frame = pd.DataFrame(
        {
            "deny": (kept["s7"] == 3).astype(float),
            "pi_rat": kept["s46"] / 100,
            "race": kept["s13"].isin([3, 4]).astype(float),
        }
    )
    lpm = smf.ols("deny ~ pi_rat + race", frame).fit(cov_type="HC1")
    logit = smf.logit("deny ~ pi_rat + race", frame).fit(disp=0, method="newton", tol=1e-12, maxiter=100)
    ours = metrics["lpm"]["summary"]
    assert _rel(ours["coefficients"]["estimate"], lpm.params) < 1e-8
    assert _rel(ours["coefficients_hc1"]["std_error"], lpm.bse) < 1e-8
    glm = metrics["logit"]["summary"]["coefficients"]
    assert _rel(glm["estimate"], logit.params) < 1e-6 and _rel(glm["std_error"], logit.bse) < 1e-4
    manifest = json.loads((run.dir / "manifest.json").read_text())
    ingest = next(s for s in manifest["stages"] if s["name"] == "ingest")
    assert ingest["accepted"] == len(kept) and ingest["read"] == len(raw)


def test_expressions_read_inferred_columns_and_counts_reconcile_with_filter_and_drop(dask_engine, tmp_path, capsys):
    """An undeclared text column a derive reads is inferred (category) in the schema's pass, checked at validate
    from the first rows, recorded for predict; read = accepted + rejected + filtered + dropped, here and in predict."""
    from pipelines.cli import main
    from pipelines.plan import check_plan
    from pipelines.predict import predict

    rng = np.random.default_rng(7)
    n = 300
    frame = pd.DataFrame(
        {
            "grade": rng.choice(["a", "b", "c"], n),
            "keep": rng.choice(["yes", "no"], n, p=[0.8, 0.2]),
            "x": np.round(rng.normal(0, 1, n), 3),
            "z": np.round(rng.normal(0, 1, n), 3),
        }
    )
    frame["y"] = np.round(2.0 * frame["x"] + (frame["grade"] != "c") + rng.normal(0, 0.1, n), 4)
    frame["z"] = frame["z"].astype(object).where(rng.random(n) >= 0.1, None)  # missing: dropped by policy
    frame.loc[5, "y"] = None  # a missing label: quarantined
    path = tmp_path / "g.csv"
    frame.to_csv(path, index=False)
    conf = {
        "name": "g",
        "runs_dir": str(tmp_path / "runs"),
        "engine": {"kind": "dask", "partitions": 3},
        "dataset": {
            "name": "g",
            "format": "csv",
            "path": str(path),
            "formula": "y ~ x + good + z",
            "missing": {"z": "drop"},
        },  # fmt: skip
        "stages": [
            {
                "stage": "ingest",
                "filter": "keep",
                "derive": {"good": "grade IN ('a', 'b')"},
                "split": {"test_fraction": 0.0},
                "standardize": False,
                "encode": "dummy",
            },  # fmt: skip
            {"stage": "model", "name": "lm", "model": "linear_regression"},
        ],
    }
    cfg = PipelineConfig.model_validate(conf)
    assert check_plan(cfg) == []  # grade typed by the first rows: a category, so IN ('a', 'b') is fine
    run, _ = run_pipeline(cfg, engine=dask_engine)
    facts = run.stage_facts("ingest")
    kept = frame[frame["keep"] == "yes"]
    assert facts["filtered"] == int((frame["keep"] == "no").sum())
    assert facts["rejected"] == int(kept["y"].isna().sum())
    assert facts["dropped"] == int((kept["z"].isna() & kept["y"].notna()).sum())
    assert facts["read"] == facts["accepted"] + facts["rejected"] + facts["filtered"] + facts["dropped"] == n
    assert facts["input_types"] == {"grade": "category", "keep": "bool"}
    assert facts["column_types"]["good"] == {"type": "bool", "origin": "derived"}
    assert facts["column_types"]["z"] == {"type": "float", "origin": "inferred"}
    rows = kept[kept["y"].notna() & kept["z"].notna()]
    x = np.column_stack([np.ones(len(rows)), rows["x"], rows["grade"] != "c", rows["z"].astype(float)]).astype(float)
    want = np.linalg.lstsq(x, rows["y"].to_numpy(float), rcond=None)[0]
    summary = json.loads((run.dir / "metrics.json").read_text())["lm"]["summary"]
    assert _rel(summary["coefficients"]["estimate"], want) < 1e-8

    new = frame.head(80).drop(columns="y")  # predict: the run's types, filter, derive and drop policy
    new_path = tmp_path / "new.csv"
    new.to_csv(new_path, index=False)
    out = predict(run.dir, "lm", str(new_path), tmp_path / "out", engine=dask_engine)
    assert out["filtered"] == int((new["keep"] == "no").sum())
    assert out["dropped"] == int(((new["keep"] == "yes") & new["z"].isna()).sum())
    assert out["scored"] + out["filtered"] + out["dropped"] + out["rejected"] == 80 and out["rejected"] == 0

    conf_path = tmp_path / "g.yaml"
    conf_path.write_text(yaml.safe_dump(conf))
    assert main(["schema", str(conf_path)]) == 0
    printed = capsys.readouterr().out
    assert yaml.safe_load(printed)["types"] == {"x": "float", "z": "float", "y": "float", "grade": "category",
                                                "keep": "bool"}  # fmt: skip
    assert "# good: bool" in printed
