"""Pack stages from configs on a real Dask LocalCluster and a real local[2] SparkSession.

Each pack is checked against the same tasks run one after another in this process (exact equality), and
against statsmodels on the rows read back from the run: per-group OLS coefficients (1e-8 relative), and the
bootstrap SEs of 1,000 replicates within 10 % of statsmodels' HC1 SEs on the Fair affairs survey.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import statsmodels.api as sm
from conftest import ROOT, stage_problem

from pipelines.config import load_config, parse_config
from pipelines.data.bundled import resolve_path
from pipelines.pack.tasks import fit, logistic_hc1, run_task
from pipelines.pipeline import run_pipeline

FAIR = ["rate_marriage", "age", "yrs_married", "children", "religious", "educ"]


def _run(engine, tmp_path, conf, edit=None):
    data = load_config(ROOT / "conf" / conf, [f"runs_dir={tmp_path / engine.kind}"]).model_dump(mode="json")
    if edit is not None:
        edit(data)
    run, state = run_pipeline(parse_config(data), engine=engine)
    return run, state


def _train(run):
    return pq.read_table(run.dir / "data" / "train").to_pandas().sort_values(["_source", "_row"])


def _without_timing(value):
    return {k: v for k, v in value.items() if k != "fit_seconds"}


def _assert_sequential_equal(result):
    """Every task's value equals the same task run again in this process, in order (exact)."""
    for outcome in result.outcomes:
        if outcome.ok:
            assert _without_timing(outcome.value) == _without_timing(run_task(outcome.item)), outcome.key


def test_pack_config_problems_name_their_keys():
    def problem(**stage):
        return stage_problem("pack_configs.yaml", 1, {"stage": "pack", "name": "p", **stage})

    assert "exactly one of bootstrap, group_by, configs" in problem(model="kmeans", group_by="a", configs=[{}])
    assert "exactly one of" in problem(model="kmeans")
    assert "configs.1.n_clusters" in problem(model="kmeans", configs=[{"n_clusters": 2}, {"n_clusters": 0}])
    assert "params.n_init" in problem(model="kmeans", params={"n_init": -1}, configs=[{"n_clusters": 2}])
    assert "model: bootstrap compares standard errors" in problem(model="kmeans", bootstrap={})
    assert "params.penalty" in problem(model="logistic_regression", bootstrap={"replicates": 10})


def test_logistic_hc1_is_statsmodels_sandwich_with_the_hc1_factor():
    frame = pd.read_csv(resolve_path("bundled:breast-cancer"))
    x = frame[["mean_radius", "mean_texture", "mean_smoothness", "mean_compactness", "mean_symmetry"]]
    x, y = (x - x.mean()) / x.std(), frame["target"].to_numpy()
    ours = logistic_hc1(fit("logistic_regression", {"penalty": None}, x, y), x, y)
    hc0 = sm.Logit(y, sm.add_constant(x.to_numpy())).fit(disp=0, cov_type="HC0").bse
    n, k = len(y), x.shape[1] + 1
    np.testing.assert_allclose(ours, hc0 * np.sqrt(n / (n - k)), rtol=1e-4)  # statsmodels' Logit HC1 omits n/(n-k)


@pytest.mark.slow
def test_group_by_pack_equals_sequential_run_and_statsmodels(engine, tmp_path):
    run, state = _run(engine, tmp_path, "pack_groups.yaml")
    result = state["lm-by-occupation"]
    assert result.metrics["tasks"] == 6 and result.metrics["failed"] == 0 and result.metrics["groups"] == 6
    _assert_sequential_equal(result)
    folder = run.dir / "packs" / "lm-by-occupation"
    table = pd.read_csv(folder / "results.csv", dtype={"occupation": str})
    train = _train(run)
    assert table["train_rows"].sum() == len(train)
    for row in table.itertuples(index=False):
        rows = train[train["occupation"] == row.occupation]
        assert row.train_rows == len(rows)
        ref = sm.OLS(rows["affairs"].to_numpy(), sm.add_constant(rows[FAIR].to_numpy())).fit()
        ours = table.loc[table["key"] == row.key, [f"coef_{t}" for t in ["(Intercept)", *FAIR]]].to_numpy()[0]
        np.testing.assert_allclose(ours, ref.params, rtol=1e-8)
        assert row.train_r2 == pytest.approx(ref.rsquared, rel=1e-8)
    assert (folder / "scores.png").stat().st_size > 1000
    assert json.loads((folder / "summary.json").read_text())["groups"] == 6


@pytest.mark.slow
def test_configs_pack_equals_sequential_run_and_a_failing_config_is_retried_once(engine, tmp_path):
    def add_impossible_k(data):
        data["stages"][1]["configs"].append({"n_clusters": 99999})  # more clusters than rows: fails at fit

    run, state = _run(engine, tmp_path, "pack_configs.yaml", add_impossible_k)
    result = state["kmeans-k"]
    assert result.metrics["tasks"] == 7 and result.metrics["failed"] == 1
    _assert_sequential_equal(result)
    log = pd.read_csv(run.dir / "packs" / "kmeans-k" / "tasks.csv")
    failed = log[~log["ok"]]
    assert list(failed["key"]) == ["config-006"] and list(failed["attempts"]) == [2]
    assert "99999" in failed["error"].iloc[0]
    assert (log[log["ok"]]["attempts"] == 1).all()
    table = pd.read_csv(run.dir / "packs" / "kmeans-k" / "results.csv")
    inertia = table[table["ok"]]["train_inertia"].to_numpy()
    assert (np.diff(inertia) < 0).all()  # more clusters, less inertia
    assert result.metrics["best"]["key"] == "config-005"  # k = 8, the least inertia
    # resuming the finished run restores the pack from what it recorded (no task runs); slots may change
    data = load_config(ROOT / "conf" / "pack_configs.yaml", [f"runs_dir={tmp_path / engine.kind}"]).model_dump(
        mode="json"
    )
    add_impossible_k(data)
    data["stages"][1]["slots"] = 1
    again = run_pipeline(parse_config(data), engine=engine, resume=run.dir).results["kmeans-k"]
    assert again.metrics == json.loads(json.dumps(result.metrics)) and again.outcomes == []


@pytest.mark.slow
def test_bootstrap_ses_within_ten_percent_of_statsmodels_hc1(engine, tmp_path):
    run, state = _run(engine, tmp_path, "pack_bootstrap.yaml")
    result = state["lm-bootstrap"]
    assert result.metrics["replicates"] == 1000 and result.metrics["failed"] == 0
    train = _train(run)
    hc1 = sm.OLS(train["affairs"].to_numpy(), sm.add_constant(train[FAIR].to_numpy())).fit(cov_type="HC1")
    table = pd.read_csv(run.dir / "packs" / "lm-bootstrap" / "results.csv")
    np.testing.assert_allclose(table["estimate"], hc1.params, rtol=1e-8)
    np.testing.assert_allclose(table["hc1_std_error"], hc1.bse, rtol=1e-8)
    ratio = table["bootstrap_std_error"].to_numpy() / hc1.bse
    assert np.all(np.abs(ratio - 1) < 0.10), ratio  # worst measured: 0.958 (educ)
    assert ((table["ci_low"] < table["estimate"]) & (table["estimate"] < table["ci_high"])).all()
    # the replicates are those of a sequential run of the same tasks (two of the twenty chunks re-run here)
    draws = pd.read_csv(run.dir / "packs" / "lm-bootstrap" / "replicates.csv")
    assert list(draws["replicate"]) == list(range(1000))
    chunks = [o for o in result.outcomes if o.key in ("replicates-0000-0049", "replicates-0950-0999")]
    for outcome in chunks:
        again = run_task(outcome.item)["replicates"]
        assert again == outcome.value["replicates"]
        ids = [r["replicate"] for r in again]
        written = draws.set_index("replicate").loc[ids, ["(Intercept)", *FAIR]].to_numpy()
        np.testing.assert_array_equal(written, [[r["coef"][t] for t in ["(Intercept)", *FAIR]] for r in again])
    assert (run.dir / "packs" / "lm-bootstrap" / "bootstrap.png").stat().st_size > 1000
