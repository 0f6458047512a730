"""Classical estimators against scikit-learn / statsmodels / NumPy on real bundled data (in-process blocks).

Tolerances: OLS 1e-6 relative (issue 3), logistic 1e-3 relative, PCA explained variance 1e-6 relative
(1e-12 absolute for zero-variance directions), k-means inertia within 1 %, forests within 1 point.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from sklearn import datasets
from sklearn import ensemble as skens
from sklearn import linear_model as sklin
from sklearn.base import clone
from sklearn.cluster import KMeans as SkKMeans
from sklearn.decomposition import PCA as SkPCA
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from pipelines.classical import (
    PCA,
    Blocks,
    KMeans,
    LinearRegression,
    LogisticRegression,
    RandomForestClassifier,
    RandomForestRegressor,
    TruncatedSVD,
    load_model,
    save_model,
)
from pipelines.data.bundled import resolve_path
from pipelines.errors import DataError


def _rel(a, b):
    return np.max(np.abs(np.asarray(a) - np.asarray(b)) / np.maximum(np.abs(b), 1e-300))


@pytest.fixture(scope="module")
def fair():
    frame = pd.read_csv(resolve_path("bundled:fair"))
    x = frame[["rate_marriage", "age", "yrs_married", "children", "religious", "educ"]]
    return x, frame["affairs"].to_numpy()


@pytest.mark.parametrize("n_blocks", [1, 5])
def test_ols_matches_statsmodels_on_fair(fair, n_blocks):
    x, y = fair
    model = LinearRegression().fit(Blocks.from_arrays(x, y, n_blocks=n_blocks))
    ref = sm.OLS(y, sm.add_constant(x.to_numpy())).fit()
    hc1 = sm.OLS(y, sm.add_constant(x.to_numpy())).fit(cov_type="HC1")
    s = model.summary()
    assert _rel(s.coefficients.estimate, ref.params) < 1e-6
    assert _rel(s.coefficients.std_error, ref.bse) < 1e-6
    assert _rel(s.coefficients.statistic, ref.tvalues) < 1e-6
    assert _rel(s.coefficients.p_value, ref.pvalues) < 1e-6
    assert _rel(s.robust.std_error, hc1.bse) < 1e-6
    for ours, theirs in [("r_squared", ref.rsquared), ("adj_r_squared", ref.rsquared_adj), ("f_statistic", ref.fvalue)]:
        assert abs(s.statistics[ours] / theirs - 1) < 1e-6, ours
    assert s.statistics["n"] == len(y) and s.statistics["df_residual"] == ref.df_resid
    assert "Pr(>|t|)" in str(s) and "Adjusted R-squared" in str(s)
    np.testing.assert_allclose(model.predict(x), ref.fittedvalues, rtol=1e-9)


def test_ols_without_intercept_matches_statsmodels(fair):
    x, y = fair
    s = LinearRegression(fit_intercept=False).fit(x, y).summary()
    ref = sm.OLS(y, x.to_numpy()).fit()
    assert _rel(s.coefficients.estimate, ref.params) < 1e-6 and _rel(s.coefficients.std_error, ref.bse) < 1e-6
    assert abs(s.statistics["r_squared"] / ref.rsquared - 1) < 1e-6
    assert abs(s.statistics["adj_r_squared"] / ref.rsquared_adj - 1) < 1e-6


@pytest.fixture(scope="module")
def cancer():
    x, y = datasets.load_breast_cancer(return_X_y=True)
    return StandardScaler().fit_transform(x[:, :10]), y


def test_binomial_glm_matches_statsmodels(cancer):
    x, y = cancer
    model = LogisticRegression(penalty=None).fit(Blocks.from_arrays(x, y, n_blocks=3))
    ref = sm.Logit(y, sm.add_constant(x)).fit(disp=0, method="newton", tol=1e-12, maxiter=200)
    s = model.summary()
    assert _rel(s.coefficients.estimate, ref.params) < 1e-3
    assert _rel(s.coefficients.std_error, ref.bse) < 1e-3
    assert _rel(s.coefficients.p_value, ref.pvalues) < 1e-3
    assert abs(s.statistics["deviance"] / (-2 * ref.llf) - 1) < 1e-6
    assert "Pr(>|z|)" in str(s)


@pytest.mark.parametrize("solver", ["newton", "lbfgs"])
def test_penalized_binomial_matches_sklearn(cancer, solver):
    x, y = cancer
    ours = LogisticRegression(C=0.3, solver=solver, max_iter=5000, tol=1e-10).fit(x, y)
    ref = sklin.LogisticRegression(C=0.3, tol=1e-12, max_iter=10000).fit(x, y)
    assert _rel(ours.coef_, ref.coef_) < 1e-3 and _rel(ours.intercept_, ref.intercept_) < 1e-3
    np.testing.assert_allclose(ours.predict_proba(x), ref.predict_proba(x), atol=1e-4)


def test_multinomial_softmax_matches_sklearn_on_digits():
    x, y = datasets.load_digits(return_X_y=True)
    x = x / 16.0
    ours = LogisticRegression(C=0.5).fit(Blocks.from_arrays(x, y, n_blocks=4))
    ref = sklin.LogisticRegression(C=0.5, tol=1e-12, max_iter=20000).fit(x, y)
    assert ours.coef_.shape == ref.coef_.shape == (10, 64)
    assert np.max(np.abs(ours.coef_ - ref.coef_)) / np.max(np.abs(ref.coef_)) < 1e-3
    assert np.max(np.abs(ours.intercept_ - ref.intercept_)) / np.max(np.abs(ref.intercept_)) < 1e-3
    assert ours.score(x, y) == pytest.approx(ref.score(x, y), abs=1e-9)


def test_unpenalized_multinomial_matches_sklearn_probabilities():
    x, y = datasets.load_wine(return_X_y=True)
    x = StandardScaler().fit_transform(x)[:, :4]
    ours = LogisticRegression(penalty=None).fit(x, y)
    ref = sklin.LogisticRegression(C=np.inf, tol=1e-12, max_iter=20000).fit(x, y)
    np.testing.assert_allclose(ours.predict_proba(x), ref.predict_proba(x), atol=1e-3)
    np.testing.assert_allclose(ours.coef_.sum(axis=0), 0.0, atol=1e-8)  # sum-to-zero form, as sklearn


def test_kmeans_inertia_within_one_percent_of_sklearn():
    x, _ = datasets.load_digits(return_X_y=True)
    for k in (4, 10):
        ours = KMeans(n_clusters=k, n_init=10, random_state=1).fit(Blocks.from_arrays(x, n_blocks=4))
        ref = SkKMeans(n_clusters=k, n_init=10, random_state=0).fit(x)
        assert ours.inertia_ <= ref.inertia_ * 1.01, (k, ours.inertia_, ref.inertia_)
        assert ours.cluster_sizes_.sum() == len(x) and ours.cluster_centers_.shape == (k, 64)
        assert -ours.score(x) == pytest.approx(ours.inertia_, rel=1e-9)
        np.testing.assert_array_equal(np.bincount(ours.predict(x), minlength=k), ours.cluster_sizes_)


def test_pca_matches_sklearn_on_digits():
    x, _ = datasets.load_digits(return_X_y=True)
    ours = PCA().fit(Blocks.from_arrays(x, n_blocks=3))
    ref = SkPCA().fit(x)
    np.testing.assert_allclose(ours.explained_variance_ratio_, ref.explained_variance_ratio_, rtol=1e-6, atol=1e-12)
    top = ref.explained_variance_ > 1e-6 * ref.explained_variance_[0]
    np.testing.assert_allclose(ours.explained_variance_[top], ref.explained_variance_[top], rtol=1e-6)
    np.testing.assert_allclose(ours.components_[:10], ref.components_[:10], atol=1e-6)
    np.testing.assert_allclose(ours.transform(x)[:, :10], ref.transform(x)[:, :10], atol=1e-6)
    for target in (0.8, 0.9, 0.95):
        assert ours.components_for(target) == SkPCA(target).fit(x).n_components_
    assert PCA(0.9).fit(x).n_components_ == SkPCA(0.9).fit(x).n_components_


def test_tall_skinny_svd_matches_numpy():
    x = datasets.load_digits().data[:, 10:40]
    ours = TruncatedSVD(8).fit(Blocks.from_arrays(x, n_blocks=6))
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    np.testing.assert_allclose(ours.singular_values_, s[:8], rtol=1e-10)
    np.testing.assert_allclose(np.abs(ours.components_), np.abs(vt[:8]), atol=1e-8)


def _mean_scores(factory, xtr, ytr, xte, yte, seeds=3):
    return np.mean([factory(seed).fit(xtr, ytr).score(xte, yte) for seed in range(seeds)])


@pytest.mark.parametrize("loader", [datasets.load_digits, datasets.load_breast_cancer])
def test_forest_classifier_within_one_point_of_sklearn(loader):
    x, y = loader(return_X_y=True)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.3, random_state=0)
    ours = np.mean(
        [
            RandomForestClassifier(100, random_state=s).fit(Blocks.from_arrays(xtr, ytr, 4)).score(xte, yte)
            for s in range(3)
        ]
    )
    ref = _mean_scores(lambda s: skens.RandomForestClassifier(100, random_state=s), xtr, ytr, xte, yte)
    assert abs(ours - ref) <= 0.01, (ours, ref)


def test_forest_regressor_within_one_point_of_sklearn():
    x, y = datasets.make_friedman1(n_samples=4000, noise=1.0, random_state=0)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, random_state=0)
    ours = _mean_scores(lambda s: RandomForestRegressor(60, random_state=s), xtr, ytr, xte, yte)
    ref = _mean_scores(lambda s: skens.RandomForestRegressor(60, random_state=s), xtr, ytr, xte, yte)
    assert abs(ours - ref) <= 0.01, (ours, ref)


def test_local_sampling_forest_on_large_blocks_within_one_point():
    # Trees grown only on their own block's rows (no data moves) stay within a point once blocks are large.
    x, y = datasets.make_classification(n_samples=24000, n_features=20, n_informative=8, random_state=0)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, random_state=0)
    ours = RandomForestClassifier(40, sampling="local").fit(Blocks.from_arrays(xtr, ytr, 2))
    assert ours.sampling_ == "local" and len(ours.trees_) == 40
    ref = skens.RandomForestClassifier(40, random_state=0).fit(xtr, ytr)
    assert abs(ours.score(xte, yte) - ref.score(xte, yte)) <= 0.01
    assert np.corrcoef(ours.feature_importances_, ref.feature_importances_)[0, 1] > 0.95


def test_histogram_forest_on_120k_rows_within_one_point_of_sklearn():
    """From 100,000 rows `auto` takes LightGBM's histogram splits: same accuracy (mean of 2 seeds), same importances."""
    x, y = datasets.make_classification(n_samples=150_000, n_features=12, n_informative=6, flip_y=0.1, random_state=1)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.2, random_state=0)
    ours = [
        RandomForestClassifier(16, max_depth=10, random_state=s).fit(Blocks.from_arrays(xtr, ytr, 4)) for s in (0, 1)
    ]
    assert {m.learner_ for m in ours} == {"histogram"}
    ref = [skens.RandomForestClassifier(16, max_depth=10, random_state=s, n_jobs=2).fit(xtr, ytr) for s in (0, 1)]
    ours_acc, ref_acc = np.mean([m.score(xte, yte) for m in ours]), np.mean([m.score(xte, yte) for m in ref])
    assert abs(ours_acc - ref_acc) <= 0.01, (ours_acc, ref_acc)
    assert np.corrcoef(ours[0].feature_importances_, ref[0].feature_importances_)[0, 1] > 0.95
    proba = ours[0].predict_proba(xte)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-12)


def test_histogram_regression_forest_within_one_point_of_sklearn():
    x, y = datasets.make_friedman1(n_samples=4000, noise=1.0, random_state=0)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, random_state=0)
    ours = _mean_scores(lambda s: RandomForestRegressor(60, random_state=s, learner="histogram"), xtr, ytr, xte, yte, 2)
    ref = _mean_scores(lambda s: skens.RandomForestRegressor(60, random_state=s), xtr, ytr, xte, yte)
    assert abs(ours - ref) <= 0.01, (ours, ref)


def test_histogram_learner_takes_two_classes_at_most():
    x, y = datasets.load_wine(return_X_y=True)
    assert RandomForestClassifier(5, learner="histogram").fit(x, y).learner_ == "exact"  # three classes
    assert RandomForestClassifier(5, learner="histogram").fit(x, y == 1).learner_ == "histogram"


@pytest.mark.parametrize(
    "model",
    [
        LinearRegression(),
        LogisticRegression(C=0.2),
        KMeans(3, n_init=1),
        PCA(3),
        TruncatedSVD(3),
        RandomForestClassifier(5),
        RandomForestRegressor(5),
        RandomForestRegressor(5, learner="histogram"),
    ],
)
def test_save_load_round_trip_without_pickle(tmp_path, model):
    x, y = datasets.load_wine(return_X_y=True)
    x = StandardScaler().fit_transform(x)
    model.fit(x, y)
    save_model(model, tmp_path)
    loaded = load_model(tmp_path)
    out = getattr(model, "predict", None) or model.transform
    again = getattr(loaded, "predict", None) or loaded.transform
    np.testing.assert_array_equal(out(x), again(x))
    assert loaded.get_params() == model.get_params() == clone(model).get_params()
    with np.load(tmp_path / "arrays.npz", allow_pickle=False) as arrays:
        assert arrays.files  # readable without pickle


def test_constant_column_is_a_clear_error(fair):
    x, y = fair
    x = x.assign(const=3.0)
    with pytest.raises(DataError, match="column 'const' is constant or a linear combination"):
        LinearRegression().fit(x, y)


def test_perfect_separation_is_a_clear_error_and_l2_fits():
    x = np.array([[0.0], [1.0], [2.0], [3.0], [4.0], [5.0]])
    y = np.array([0, 0, 0, 1, 1, 1])
    with pytest.raises(DataError, match="perfectly separated"):
        LogisticRegression(penalty=None).fit(x, y)
    assert LogisticRegression(C=1.0).fit(x, y).score(x, y) == 1.0


def test_k_larger_than_rows_and_single_class_are_clear_errors():
    x = np.arange(10.0).reshape(5, 2)
    with pytest.raises(DataError, match="n_clusters=6 is larger than the number of rows \\(5\\)"):
        KMeans(6).fit(x)
    with pytest.raises(DataError, match="at least 2 classes"):
        LogisticRegression().fit(x, np.zeros(5))
    with pytest.raises(DataError, match="more rows than coefficients"):
        LinearRegression().fit(x[:2], [1.0, 2.0])


def test_nan_that_slipped_through_names_row_and_column():
    x = np.ones((6, 2))
    x[4, 1] = np.nan
    with pytest.raises(DataError, match="first at <array> row 4, column 'b'"):
        LinearRegression().fit(pd.DataFrame(x, columns=["a", "b"]), np.arange(6.0))


def test_estimators_follow_the_sklearn_parameter_protocol():
    model = LogisticRegression(C=2.0).set_params(max_iter=7)
    assert model.get_params()["C"] == 2.0 and model.get_params()["max_iter"] == 7
    assert "C=2.0" in repr(model)
    with pytest.raises(NotFittedError, match="not fitted"):
        LogisticRegression().predict(np.ones((2, 2)))
