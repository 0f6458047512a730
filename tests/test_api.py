"""The Python API (docs/NOTEBOOKS.md): the same runs as the command line, results as Python values."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import pipelines
from pipelines.cli import main
from pipelines.data.bundled import resolve_path
from pipelines.errors import ConfigError, UsageError

ROOT = Path(__file__).resolve().parent.parent


def fair_data(tmp_path: Path) -> dict:
    """conf/fair.yaml on a copy of its CSV with two bad rows appended (they go to the quarantine)."""
    lines = Path(resolve_path("bundled:fair")).read_text().splitlines()
    width = len(lines[0].split(","))
    bad = [",".join(["abc"] * width), "1,2"]
    data = tmp_path / "fair.csv"
    data.write_text("\n".join(lines + bad) + "\n")
    overrides = {"runs_dir": str(tmp_path / "runs"), "dataset.path": str(data), "engine.partitions": 2}
    return pipelines.load_config(ROOT / "conf" / "fair.yaml", overrides).model_dump(mode="json")


@pytest.fixture(scope="module")
def fair_runs(dask_engine, tmp_path_factory):
    """The same config run through the API (on a shared engine) and through `pipelines run` (its own engine)."""
    tmp = tmp_path_factory.mktemp("api")
    config = fair_data(tmp)
    run = pipelines.run(config, engine=dask_engine)
    conf = tmp / "fair.json"
    conf.write_text(json.dumps(config))
    assert main(["run", str(conf)]) == 0
    cli_dir = next(r for r in (tmp / "runs" / "fair").iterdir() if r.name not in ("latest", run.id, "jobs", ".lock"))
    return run, pipelines.open_run(cli_dir), tmp


def test_import_is_light_and_the_api_is_at_the_top_level():
    code = (
        "import sys, pipelines; assert callable(pipelines.run) and callable(pipelines.runs); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'pyspark', 'dask', 'keras'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_load_config_from_a_mapping_with_overrides_and_errors_naming_the_key():
    data = pipelines.load_config(ROOT / "conf" / "fair.yaml").model_dump(mode="json")
    config = pipelines.load_config(data, ["engine.kind=spark", "stages.1.model=random_forest_regressor"])
    assert config.engine.kind == "spark" and config.stages[1].model == "random_forest_regressor"
    assert pipelines.load_config(config, {"engine.partitions": 3}).engine.partitions == 3
    assert data["engine"]["kind"] == "dask"  # the caller's mapping is left as it was
    with pytest.raises(ConfigError, match=r"stages\[1\].model"):
        pipelines.load_config(data, {"stages.1.model": "no_such_model"})
    with pytest.raises(ConfigError, match="engine.partitions"):
        pipelines.load_config(data, ["engine.partitions=0"])


def test_a_run_through_the_api_matches_the_command_line_and_reads_back(fair_runs):
    run, cli_run, tmp = fair_runs
    assert run.status == cli_run.status == "succeeded" and run.stages == ["ingest", "lm"]
    ours, theirs = run.metrics, cli_run.metrics
    numeric = ours["value"].map(lambda v: isinstance(v, int | float) and not isinstance(v, bool))
    numbers = ours[numeric & ~ours["metric"].str.contains("seconds")]  # timings differ, results do not
    merged = numbers.merge(theirs, on=["stage", "metric"], suffixes=("", "_cli"))
    assert len(merged) == len(numbers) > 20
    np.testing.assert_allclose(merged["value"].astype(float), merged["value_cli"].astype(float), rtol=1e-9, atol=1e-12)
    r2 = ours.set_index(["stage", "metric"]).loc[("lm", "summary.r_squared"), "value"]
    assert r2 == pytest.approx(0.0616, abs=5e-4)  # statsmodels' OLS on the same 5,099 training rows gives 0.0616
    # the fitted estimator, the R-style table, the quarantine and the report
    model = run.model("lm")
    coefs = run.record.metrics["lm"]["summary"]["coefficients"]
    np.testing.assert_allclose(model.coef_, coefs["estimate"][1:], rtol=1e-9)
    assert "Coefficients:" in run.summary("lm") and "rate_marriage" in run.summary("lm")
    quarantine = run.quarantine
    assert len(quarantine) == 2 == run.record.manifest["stages"][0]["rejected"]
    assert run.report_path == run.dir / "report.html" and run.report_path.is_file()
    stage = run.stage("lm")
    assert stage.status == "succeeded" and run.dir / "models" / "lm" in stage.artifacts
    assert [p.name for p in stage.plots] == ["predicted_vs_actual.png"]
    page = run._repr_html_()
    assert page.count('<img src="data:image/png;base64,') == 1 and "rate_marriage" in page
    with pytest.raises(UsageError, match="no stage 'nope'"):
        run.stage("nope")


def test_runs_table_and_open_run_by_id(fair_runs):
    run, cli_run, tmp = fair_runs
    table = pipelines.runs(tmp / "runs")
    assert isinstance(table, pd.DataFrame) and set(table["run"]) == {run.id, cli_run.id}
    assert list(table["status"]) == ["succeeded", "succeeded"]
    assert table["lm.test_r2"].nunique() == 1  # same config, same split, same fit
    assert pipelines.open_run(run.id, tmp / "runs").dir == run.dir
    with pytest.raises(UsageError, match="no runs"):
        pipelines.runs(tmp / "runs", "other")


def test_predict_returns_a_frame_or_writes_a_folder(fair_runs, dask_engine, tmp_path):
    run, _, tmp = fair_runs
    data = tmp / "fair.csv"
    frame = pipelines.predict(run, "lm", data, engine=dask_engine)
    summary = frame.attrs["summary"]
    assert (summary["read"], summary["scored"], summary["rejected"]) == (6368, 6366, 2)
    assert len(frame) == 6366 and frame["row"].is_monotonic_increasing
    out = pipelines.predict(run.dir, "lm", data, out=tmp_path / "scored", engine=dask_engine)
    written = pd.read_parquet(out / "predictions").sort_values("row", ignore_index=True)
    np.testing.assert_allclose(written["prediction"], frame["prediction"], rtol=1e-12)


def test_one_engine_serves_several_runs(tmp_path):
    config = fair_data(tmp_path)
    with pipelines.engine("dask", n_workers=1, threads_per_worker=1, memory_limit="2GB") as eng:
        assert set(eng.links) == {"dask dashboard"} and "dask" in eng._repr_html_()
        first, second = pipelines.run(config, engine=eng), pipelines.run(config, engine=eng)
    assert eng.closed and "closed" in repr(eng)
    scheduler = {r.record.manifest["engine"]["scheduler"] for r in (first, second)}
    assert len(scheduler) == 1 and first.id != second.id  # both runs on the one started cluster
    with pytest.raises(UsageError, match="closed"):
        pipelines.run(config, engine=eng)
