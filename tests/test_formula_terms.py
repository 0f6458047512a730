"""Formula terms users expect from R (issue 29 item 4): I(), log()/exp()/sqrt(), a:b and a*b computed at ingest on
either engine, named as R names them, equal to statsmodels' (patsy) design and fit; predict computes them too."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf

from pipelines.config import PipelineConfig
from pipelines.pipeline import run_pipeline
from pipelines.predict.job import predict

OURS = "y ~ x*z + I(x^2) + log(z) + sqrt(w) + C(g)"
PATSY = "y ~ x*z + I(x**2) + np.log(z) + np.sqrt(w) + C(g)"
# our term -> patsy's name for the same column (R's names are ours)
NAMES = {
    "(Intercept)": "Intercept",
    "x": "x",
    "z": "z",
    "I(x^2)": "I(x ** 2)",
    "log(z)": "np.log(z)",
    "sqrt(w)": "np.sqrt(w)",
    "x:z": "x:z",
    "g_b": "C(g)[T.b]",
    "g_c": "C(g)[T.c]",
}


def _frame(n: int = 500, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x, z, w = rng.uniform(0.5, 3, n), rng.uniform(1, 5, n), rng.uniform(0, 4, n)
    g = rng.choice(["a", "b", "c"], n)
    y = 1 + 2 * x - 0.5 * x**2 + 0.8 * np.log(z) + 0.3 * x * z - np.sqrt(w) + (g == "b") + rng.normal(0, 0.3, n)
    return pd.DataFrame({"x": x, "z": z, "w": w, "g": g, "y": y})


def _fit(engine, tmp_path, path, formula):
    cfg = PipelineConfig.model_validate(
        {
            "name": "terms",
            "runs_dir": str(tmp_path / f"runs-{engine.kind}"),
            "dataset": {"name": "terms", "format": "csv", "path": str(path), "formula": formula},
            "stages": [
                {"stage": "ingest", "split": {"test_fraction": 0.0}, "standardize": False, "encode": "dummy"},
                {"stage": "model", "name": "ols", "model": "linear_regression"},
            ],
        }
    )
    run, _ = run_pipeline(cfg, engine=engine)
    return run, json.loads((run.dir / "metrics.json").read_text())["ols"]["summary"]


@pytest.mark.slow
def test_formula_terms_equal_statsmodels_on_both_engines_and_predict_computes_them(engine, tmp_path):
    frame = _frame()
    path = tmp_path / "terms.csv"
    frame.to_csv(path, index=False)
    run, summary = _fit(engine, tmp_path, path, OURS)
    coefficients = summary["coefficients"]
    # R's term names in R's order: main effects as written, then the interaction
    assert coefficients["term"] == ["(Intercept)", "x", "z", "I(x^2)", "log(z)", "sqrt(w)", "g_b", "g_c", "x:z"]
    ref = smf.ols(PATSY, frame).fit()
    theirs = [NAMES[t] for t in coefficients["term"]]
    for key, reference in (("estimate", ref.params), ("std_error", ref.bse)):
        ours = np.asarray(coefficients[key])
        np.testing.assert_allclose(ours, reference[theirs].to_numpy(), rtol=1e-8, atol=1e-12)
    assert summary["r_squared"] == pytest.approx(ref.rsquared, rel=1e-10)
    # predict reads new rows of the file's layout and computes the same terms before scoring
    new = _frame(60, seed=9)
    new_path = tmp_path / "new.csv"
    new.to_csv(new_path, index=False)
    predict(run.dir, "ols", str(new_path), tmp_path / "scored", engine=engine)
    scored = pd.read_parquet(tmp_path / "scored" / "predictions").sort_values("row")
    assert len(scored) == len(new)
    np.testing.assert_allclose(scored["prediction"].to_numpy(), ref.predict(new).to_numpy(), rtol=1e-8)


def test_formula_terms_become_derived_columns_recorded_with_their_sql(dask_engine, tmp_path):
    from pipelines.ingest.config import DatasetConfig
    from pipelines.ingest.stage import plan_ingest

    path = tmp_path / "t.csv"
    _frame(40).to_csv(path, index=False)
    ds = DatasetConfig(name="t", format="csv", path=str(path), formula="y ~ x:z + log(z) + x - 1")
    plan = plan_ingest(ds, 2, dask_engine)
    assert [c.name for c in plan.table.features] == ["log(z)", "x", "x:z"]  # main effects first, as R orders them
    assert plan.table.column_types()["x:z"] == {"type": "float", "origin": "derived"}
    assert not plan.table.intercept
    bad = DatasetConfig(name="t", format="csv", path=str(path), formula="y ~ log(nope)")
    with pytest.raises(Exception, match="unknown column 'nope'"):
        plan_ingest(bad, 2, dask_engine)


def test_a_term_that_cannot_be_computed_quarantines_its_row_naming_the_term(dask_engine, tmp_path):
    frame = _frame(50)
    frame.loc[3, "z"] = 0.0  # log(0) = -inf
    frame.loc[7, "w"] = -1.0  # sqrt(-1)
    path = tmp_path / "t.csv"
    frame.to_csv(path, index=False)
    run, _ = _fit(dask_engine, tmp_path, path, "y ~ x + log(z) + sqrt(w)")
    quarantine = pd.read_csv(run.dir / "quarantine.csv")
    assert list(quarantine["row"]) == [5, 9]  # file lines (the header is line 1)
    assert list(quarantine["column"]) == ["log(z)", "sqrt(w)"]
    assert list(quarantine["reason"]) == ["infinite value", "NaN value"]
    facts = next(s for s in json.loads((run.dir / "manifest.json").read_text())["stages"] if s["name"] == "ingest")
    assert (facts["read"], facts["accepted"], facts["rejected"]) == (50, 48, 2)


def r_poly(x: np.ndarray, degree: int) -> np.ndarray:
    """R's stats::poly(x, degree) as R computes it: QR of the centred Vandermonde matrix, Z = Q diag(R), unit norm."""
    q, r = np.linalg.qr(np.vander(x - x.mean(), degree + 1, increasing=True))
    z = q * np.diag(r)
    return (z / np.sqrt((z**2).sum(axis=0)))[:, 1:]


@pytest.mark.slow
def test_poly_terms_are_rs_orthogonal_polynomials_fitted_on_the_train_split(engine, tmp_path):
    frame = _frame()
    frame["x"] = frame["x"] * 40 + 1000  # far from 0: centring and the partitions' shifted sums keep precision
    path = tmp_path / "poly.csv"
    frame.to_csv(path, index=False)
    run, summary = _fit(engine, tmp_path, path, "y ~ poly(x, 3) + z")
    terms = ["(Intercept)", "poly(x, 3)1", "poly(x, 3)2", "poly(x, 3)3", "z"]
    assert summary["coefficients"]["term"] == terms
    design = pd.DataFrame(r_poly(frame["x"].to_numpy(), 3), columns=["p1", "p2", "p3"]).assign(z=frame["z"])
    ref = smf.ols("y ~ p1 + p2 + p3 + z", design.assign(y=frame["y"])).fit()
    np.testing.assert_allclose(summary["coefficients"]["estimate"], ref.params.to_numpy(), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(summary["coefficients"]["std_error"], ref.bse.to_numpy(), rtol=1e-8)
    train = pd.read_parquet(run.dir / "data" / "train").sort_values("_row")
    np.testing.assert_allclose(train[terms[1:4]].to_numpy(), design[["p1", "p2", "p3"]].to_numpy(), atol=1e-10)
    # new rows get the train split's polynomials (R's predict.poly), not ones refitted on the new rows
    new = _frame(40, seed=11).assign(x=lambda f: f["x"] * 40 + 1000)
    new_path = tmp_path / "new.csv"
    new.to_csv(new_path, index=False)
    predict(run.dir, "ols", str(new_path), tmp_path / "scored", engine=engine)
    scored = pd.read_parquet(tmp_path / "scored" / "predictions").sort_values("row")
    powers = np.vander(frame["x"] - frame["x"].mean(), 4, increasing=True)
    to_poly = np.linalg.lstsq(powers, design[["p1", "p2", "p3"]].to_numpy(), rcond=None)[0]
    new_powers = np.vander(new["x"] - frame["x"].mean(), 4, increasing=True)
    new_design = pd.DataFrame(new_powers @ to_poly, columns=["p1", "p2", "p3"])
    expected = ref.predict(new_design.assign(z=new["z"].to_numpy()))
    np.testing.assert_allclose(scored["prediction"].to_numpy(), expected.to_numpy(), rtol=1e-7)
