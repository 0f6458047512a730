"""Poisson/Gamma GLMs against statsmodels, elastic net/lasso against scikit-learn, XGBoost GBT against XGBoost
called directly: in-process and through model stages on Dask and Spark.

Tolerances: Poisson 1e-6 relative (coefficients, SEs, deviance, AIC); Gamma deviance/AIC/dispersion 1e-6
relative, coefficients within 1e-3 of a standard error (statsmodels' IRLS stops on a flatter criterion, and our
deviance is never larger than its); elastic net/lasso coefficients 1e-6 absolute at tol 1e-12; in-process GBT
probabilities 1e-6 (the same single-process XGBoost call); distributed GBT test AUC within 0.01 of XGBoost's
single-process fit on the same rows (the distributed quantile sketch differs slightly).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import statsmodels.api as sm
import xgboost as xgb
from conftest import ROOT
from sklearn import datasets
from sklearn import linear_model as sklin
from sklearn.metrics import roc_auc_score

from pipelines.classical import (
    Blocks,
    ElasticNet,
    GammaRegression,
    GBTClassifier,
    GBTRegressor,
    Lasso,
    ModelInputError,
    PoissonRegression,
    load_model,
    save_model,
)
from pipelines.config import load_config
from pipelines.data.bundled import resolve_path
from pipelines.data.synthetic import generate
from pipelines.pipeline import run_pipeline

COLS = ["lncoins", "idp", "lpi", "fmde", "physlm", "disea", "hlthg", "hlthf", "hlthp"]


@pytest.fixture(scope="module")
def randhie():
    frame = pd.read_csv(resolve_path("bundled:randhie"))
    rng = np.random.default_rng(0)
    frame["exposure"] = np.log(rng.uniform(0.5, 2.0, len(frame)))
    frame["w"] = rng.uniform(0.5, 2.0, len(frame))
    return frame


def _statsmodels(frame, y, family, offset=True, weights=True):
    kw = {"offset": frame["exposure"]} if offset else {}
    if weights:
        kw["var_weights"] = frame["w"]
    return sm.GLM(y, sm.add_constant(frame[COLS].to_numpy()), family=family, **kw).fit(tol=1e-13)


@pytest.mark.parametrize("n_blocks", [1, 4])
@pytest.mark.parametrize(("offset", "weights"), [(True, True), (False, False)])
def test_poisson_matches_statsmodels(randhie, n_blocks, offset, weights):
    y = randhie["mdvis"].to_numpy()
    params = {"offset": "exposure" if offset else None, "weights": "w" if weights else None}
    x = randhie[COLS + [c for c in params.values() if c]]
    model = PoissonRegression(**params).fit(Blocks.from_arrays(x, y, n_blocks))
    ref = _statsmodels(randhie, y, sm.families.Poisson(), offset, weights)
    s = model.summary()
    np.testing.assert_allclose(s.coefficients.estimate, ref.params, rtol=1e-6)
    np.testing.assert_allclose(s.coefficients.std_error, ref.bse, rtol=1e-6)
    np.testing.assert_allclose(s.coefficients.p_value, ref.pvalues, rtol=1e-6, atol=1e-300)
    for ours, theirs in [("deviance", ref.deviance), ("aic", ref.aic), ("null_deviance", ref.null_deviance)]:
        assert s.statistics[ours] == pytest.approx(theirs, rel=1e-6), ours
    assert s.statistics["log_likelihood"] == pytest.approx(ref.llf, rel=1e-6)
    assert s.statistics["dispersion"] == 1.0 and s.statistics["df_residual"] == ref.df_resid
    text = str(s)
    assert "Pr(>|z|)" in text and "Null deviance" in text and "AIC:" in text
    np.testing.assert_allclose(model.predict(x), ref.fittedvalues, rtol=1e-6)


@pytest.mark.parametrize(("offset", "weights"), [(True, True), (False, False)])
def test_gamma_matches_statsmodels(randhie, offset, weights):
    y = randhie["mdvis"].to_numpy() + 0.5
    params = {"offset": "exposure" if offset else None, "weights": "w" if weights else None}
    x = randhie[COLS + [c for c in params.values() if c]]
    model = GammaRegression(**params).fit(Blocks.from_arrays(x, y, 3))
    ref = _statsmodels(randhie, y, sm.families.Gamma(sm.families.links.Log()), offset, weights)
    s = model.summary()
    assert np.all(np.abs(s.coefficients.estimate - ref.params) < 1e-3 * ref.bse)
    np.testing.assert_allclose(s.coefficients.std_error, ref.bse, rtol=1e-4)
    assert s.statistics["deviance"] <= ref.deviance * (1 + 1e-10)
    for ours, theirs in [
        ("deviance", ref.deviance),
        ("aic", ref.aic),
        ("null_deviance", ref.null_deviance),
        ("dispersion", ref.scale),
        ("pearson_chi2", ref.pearson_chi2),
    ]:
        assert s.statistics[ours] == pytest.approx(theirs, rel=1e-6), ours
    assert "Dispersion parameter for Gamma family taken to be" in str(s)


def test_glm_rejects_bad_labels_and_columns(randhie):
    x = randhie[COLS]
    with pytest.raises(ModelInputError, match="must be non-negative; first offending value at <array> row 0"):
        PoissonRegression().fit(x, -np.ones(len(x)))
    with pytest.raises(ModelInputError, match="must be positive"):
        GammaRegression().fit(x, randhie["mdvis"])  # has zeros
    with pytest.raises(ModelInputError, match="offset column 'nope' is not among the features"):
        PoissonRegression(offset="nope").fit(x, randhie["mdvis"])


@pytest.mark.parametrize(
    "params",
    [
        {"alpha": 0.1, "l1_ratio": 0.5},
        {"alpha": 0.01, "l1_ratio": 0.9},
        {"alpha": 1.0, "l1_ratio": 0.2, "fit_intercept": False},
        {"alpha": 0.05, "l1_ratio": 0.7, "positive": True},
    ],
)
def test_elastic_net_matches_sklearn(params):
    x, y = datasets.load_diabetes(return_X_y=True)
    x = x * 10 + 3  # non-centred columns: the intercept and the Gram's centring matter
    ours = ElasticNet(tol=1e-12, max_iter=100_000, **params).fit(Blocks.from_arrays(x, y, n_blocks=4))
    ref = sklin.ElasticNet(tol=1e-12, max_iter=100_000, **params).fit(x, y)
    np.testing.assert_allclose(ours.coef_, ref.coef_, atol=1e-6)
    assert ours.intercept_ == pytest.approx(ref.intercept_, abs=1e-6)
    np.testing.assert_allclose(ours.predict(x), ref.predict(x), atol=1e-6)


@pytest.mark.parametrize("alpha", [0.05, 0.5, 2.0])
def test_lasso_matches_sklearn(alpha):
    x, y = datasets.load_diabetes(return_X_y=True)
    ours = Lasso(alpha=alpha, tol=1e-12, max_iter=100_000).fit(x * 10, y)
    ref = sklin.Lasso(alpha=alpha, tol=1e-12, max_iter=100_000).fit(x * 10, y)
    np.testing.assert_allclose(ours.coef_, ref.coef_, atol=1e-6)
    assert (ours.coef_ == 0).sum() == (ref.coef_ == 0).sum()


def _xgb_params():
    return {"n_estimators": 30, "max_depth": 3, "learning_rate": 0.3, "early_stopping_rounds": 5, "random_state": 0}


@pytest.mark.parametrize("classes", [2, 3])
def test_gbt_classifier_is_xgboost_in_process(classes):
    x, y = datasets.make_classification(1200, 8, n_informative=5, n_classes=classes, random_state=0)
    ours = GBTClassifier(**_xgb_params()).fit(x[:900], y[:900], eval_set=(x[900:], y[900:]))
    ref = xgb.XGBClassifier(**_xgb_params(), tree_method="hist").fit(
        x[:900], y[:900], eval_set=[(x[900:], y[900:])], verbose=False
    )
    np.testing.assert_allclose(ours.predict_proba(x[900:]), ref.predict_proba(x[900:]), atol=1e-6)
    assert ours.best_iteration_ == ref.best_iteration
    np.testing.assert_allclose(ours.feature_importances_, ref.feature_importances_, rtol=1e-5)


def test_gbt_regressor_is_xgboost_in_process():
    x, y = datasets.make_regression(1000, 6, noise=5.0, random_state=1)
    ours = GBTRegressor(**_xgb_params()).fit(x[:800], y[:800], eval_set=(x[800:], y[800:]))
    ref = xgb.XGBRegressor(**_xgb_params(), tree_method="hist").fit(
        x[:800], y[:800], eval_set=[(x[800:], y[800:])], verbose=False
    )
    np.testing.assert_allclose(ours.predict(x[800:]), ref.predict(x[800:]), rtol=1e-5, atol=1e-4)


def test_gbt_string_labels_and_round_trip(tmp_path):
    x, y = datasets.make_classification(600, 5, n_informative=3, n_classes=3, random_state=2)
    labels = np.array(["cat", "dog", "emu"], dtype=object)[y]
    model = GBTClassifier(n_estimators=10).fit(x, labels)
    save_model(model, tmp_path)
    assert json.loads((tmp_path / "xgboost.json").read_text())["learner"]["objective"]["name"] == "multi:softprob"
    again = load_model(tmp_path)
    np.testing.assert_array_equal(again.predict(x), model.predict(x))
    np.testing.assert_allclose(again.predict_proba(x), model.predict_proba(x), rtol=1e-7)
    np.testing.assert_allclose(again.feature_importances_, model.feature_importances_)


@pytest.mark.parametrize(
    "model",
    [PoissonRegression(offset="x3"), GammaRegression(weights="x3"), ElasticNet(alpha=0.1), Lasso(alpha=0.1)],
    ids=lambda m: type(m).__name__,
)
def test_glm_and_enet_round_trip(tmp_path, model):
    rng = np.random.default_rng(3)
    x = np.column_stack([rng.normal(size=(300, 3)), rng.uniform(0.5, 1.5, 300)])
    y = rng.poisson(np.exp(0.3 * x[:, 0])) + 1.0
    model.fit(x, y)
    save_model(model, tmp_path)
    again = load_model(tmp_path)
    np.testing.assert_allclose(again.predict(x), model.predict(x), rtol=1e-12)
    if hasattr(model, "summary_"):
        assert str(again.summary()) == str(model.summary())


def _run(engine, tmp_path, conf, *overrides):
    cfg = load_config(ROOT / "conf" / conf, [f"runs_dir={tmp_path / engine.kind}", *overrides])
    run, state = run_pipeline(cfg, engine=engine)
    return run, state, json.loads((run.dir / "metrics.json").read_text())


def _split(run, split, features, label):
    frame = pq.read_table(run.dir / "data" / split).to_pandas().sort_values(["_source", "_row"])
    return frame[features].to_numpy(dtype=float), frame[label].to_numpy(dtype=float)


@pytest.mark.slow
def test_glm_and_enet_stages_match_references(engine, tmp_path):
    run, state, metrics = _run(engine, tmp_path, "randhie_glm.yaml")
    features = list(state["poisson"].model.feature_names_in_)
    x, y = _split(run, "train", features, "mdvis")
    ref = sm.GLM(y, sm.add_constant(x), family=sm.families.Poisson()).fit(tol=1e-13)
    table = metrics["poisson"]["summary"]["coefficients"]
    np.testing.assert_allclose(table["estimate"], ref.params, rtol=1e-6)
    np.testing.assert_allclose(table["std_error"], ref.bse, rtol=1e-6)
    assert metrics["poisson"]["summary"]["aic"] == pytest.approx(ref.aic, rel=1e-6)
    assert (run.dir / "models" / "poisson" / "summary.txt").read_text().count("Residual deviance") == 1
    enet = sklin.ElasticNet(alpha=0.01, l1_ratio=0.5, tol=1e-10, max_iter=10000).fit(x, y)
    np.testing.assert_allclose(state["enet"].model.coef_, enet.coef_, atol=1e-6)
    lasso = sklin.Lasso(alpha=0.05, tol=1e-10, max_iter=10000).fit(x, y)
    np.testing.assert_allclose(state["lasso"].model.coef_, lasso.coef_, atol=1e-6)
    xt, yt = _split(run, "test", features, "mdvis")
    assert metrics["lasso"]["test_r2"] == pytest.approx(lasso.score(xt, yt), abs=1e-6)


@pytest.fixture(scope="module")
def small_synthetic(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("syn") / "synth", rows=6000, features=6, parts=4, seed=3, classes=3)


@pytest.mark.slow
def test_gbt_stage_on_both_engines(engine, tmp_path, small_synthetic):
    overrides = [f"dataset.path={small_synthetic}", "engine.partitions=4", "stages.1.params.n_estimators=40"]
    run, state, metrics = _run(engine, tmp_path, "gbt_synthetic.yaml", *overrides)
    model = state["gbt"].model
    features = list(model.feature_names_in_)
    x, y = _split(run, "train", features, "y")
    xv, yv = _split(run, "val", features, "y")
    xt, yt = _split(run, "test", features, "y")
    ref = xgb.XGBClassifier(
        n_estimators=40, learning_rate=0.2, max_depth=6, early_stopping_rounds=10, tree_method="hist", random_state=0
    ).fit(x, y, eval_set=[(xv, yv)], verbose=False)
    ref_auc = roc_auc_score(yt, ref.predict_proba(xt), multi_class="ovr")
    assert metrics["gbt"]["test_roc_auc_ovr"] == pytest.approx(ref_auc, abs=0.01)
    assert len(metrics["gbt"]["feature_importances"]) == len(features)
    assert (run.dir / "models" / "gbt" / "xgboost.json").stat().st_size > 1000
    again = load_model(run.dir / "models" / "gbt")
    named = pd.DataFrame(xt, columns=features)
    np.testing.assert_allclose(again.predict_proba(named), model.predict_proba(named), rtol=1e-7)
    assert model.best_iteration_ < model.n_estimators_ <= 40
