"""The classical estimators pass as scikit-learn's: its own estimator checks, mixins, errors, label types."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone, is_classifier, is_clusterer, is_regressor
from sklearn.exceptions import NotFittedError
from sklearn.utils import estimator_checks as checks
from sklearn.utils._param_validation import InvalidParameterError
from sklearn.utils.estimator_checks import parametrize_with_checks

from pipelines.classical import (
    ESTIMATORS,
    PCA,
    Blocks,
    ElasticNet,
    GammaRegression,
    GBTClassifier,
    GBTRegressor,
    KMeans,
    Lasso,
    LinearRegression,
    LogisticRegression,
    PoissonRegression,
    RandomForestClassifier,
    RandomForestRegressor,
    TruncatedSVD,
    load_model,
    save_model,
)

# scikit-learn checks we expect an estimator to fail, by class name: {check name: reason}. None at present:
# every check passes. (scikit-learn itself skips check_array_api_input unless SCIPY_ARRAY_API=1 is set, and
# the *_polars set_output checks unless polars is installed; neither is a choice of ours.)
EXPECTED_FAILED_CHECKS: dict[str, dict[str, str]] = {}

# small and fast: forests with few trees
CHECKED = [
    LinearRegression(),
    LogisticRegression(),
    KMeans(),
    PCA(),
    TruncatedSVD(),
    RandomForestClassifier(n_estimators=5),
    RandomForestRegressor(n_estimators=5),
    PoissonRegression(),
    GammaRegression(),
    ElasticNet(alpha=0.1),
    Lasso(alpha=0.1),
    GBTClassifier(n_estimators=5),
    GBTRegressor(n_estimators=5),
]


def _expected_failed(estimator: object) -> dict[str, str]:
    return EXPECTED_FAILED_CHECKS.get(type(estimator).__name__, {})


def test_every_registered_estimator_is_checked():
    assert {type(e) for e in CHECKED} == set(ESTIMATORS.values())


@parametrize_with_checks(CHECKED, expected_failed_checks=_expected_failed)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


# checks scikit-learn runs on its own estimators outside parametrize_with_checks (sklearn/tests/test_common.py)
EXTRA_CHECKS = [checks.check_param_validation, checks.check_dataframe_column_names_consistency]
TRANSFORMER_CHECKS = [
    checks.check_get_feature_names_out_error,
    checks.check_transformer_get_feature_names_out,
    checks.check_transformer_get_feature_names_out_pandas,
    checks.check_set_output_transform,
    checks.check_set_output_transform_pandas,
    checks.check_global_output_transform_pandas,
    checks.check_set_output_transform_polars,
    checks.check_global_set_output_transform_polars,
]
EXTRA = [(e, c) for e in CHECKED for c in EXTRA_CHECKS] + [
    (e, c) for e in CHECKED if hasattr(e, "transform") for c in TRANSFORMER_CHECKS
]


@pytest.mark.parametrize(("estimator", "check"), EXTRA, ids=lambda v: getattr(v, "__name__", type(v).__name__))
def test_sklearn_common_checks(estimator, check):
    reason = _expected_failed(estimator).get(check.__name__)
    if reason:
        pytest.xfail(reason)
    check(type(estimator).__name__, clone(estimator))


def test_estimator_kinds():
    assert is_regressor(LinearRegression()) and is_regressor(RandomForestRegressor())
    assert is_classifier(LogisticRegression()) and is_classifier(RandomForestClassifier())
    assert is_clusterer(KMeans())
    for model in (PCA(), TruncatedSVD(), KMeans()):
        assert hasattr(model, "fit_transform") and hasattr(model, "get_feature_names_out")
    assert hasattr(KMeans(), "fit_predict")


@pytest.mark.parametrize(
    ("kind", "params", "message"),
    [
        ("logistic_regression", {"penalty": "l1"}, "The 'penalty' parameter of LogisticRegression must be"),
        ("logistic_regression", {"C": 0}, "The 'C' parameter of LogisticRegression must be"),
        ("kmeans", {"n_clusters": 0}, "The 'n_clusters' parameter of KMeans must be"),
        ("pca", {"n_components": 1.5}, "The 'n_components' parameter of PCA must be"),
        ("truncated_svd", {"n_components": 0}, "The 'n_components' parameter of TruncatedSVD must be"),
        ("random_forest_classifier", {"max_features": "all"}, "The 'max_features' parameter of RandomForest"),
        ("random_forest_regressor", {"sampling": "nearby"}, "The 'sampling' parameter of RandomForestRegressor"),
        ("linear_regression", {"fit_intercept": "yes"}, "The 'fit_intercept' parameter of LinearRegression"),
    ],
)
def test_validate_params_rejects_bad_values_before_fit(kind, params, message):
    model = ESTIMATORS[kind](**params)  # __init__ only stores
    with pytest.raises(InvalidParameterError, match=message):
        model._validate_params()


@pytest.mark.parametrize("kind", sorted(ESTIMATORS))
def test_validate_params_accepts_defaults(kind):
    ESTIMATORS[kind]()._validate_params()


@pytest.mark.parametrize("model", CHECKED, ids=lambda m: type(m).__name__)
def test_unfitted_use_raises_not_fitted(model):
    x = np.ones((3, 2))
    method = next(getattr(model, m) for m in ("predict", "transform") if hasattr(model, m))
    with pytest.raises(NotFittedError):
        method(x)


def _classification_data(labels):
    rng = np.random.default_rng(0)
    y = np.asarray(labels)[rng.integers(0, len(labels), 90)]
    centers = {label: 4.0 * i for i, label in enumerate(labels)}
    x = np.column_stack([[centers[v] for v in y], rng.normal(size=90)]) + rng.normal(scale=0.3, size=(90, 2))
    return x, y


@pytest.mark.parametrize("make", [LogisticRegression, lambda: RandomForestClassifier(n_estimators=10)])
@pytest.mark.parametrize(
    "labels",
    [np.array(["cat", "dog", "emu"]), np.array(["no", "yes"]), np.array([3, 7, 11]), np.array([-1, 1])],
    ids=["str3", "str2", "int3", "int2"],
)
def test_labels_keep_their_type_through_predict(make, labels):
    x, y = _classification_data(labels)
    model = make().fit(x, y)
    assert model.classes_.dtype == y.dtype
    np.testing.assert_array_equal(model.classes_, np.unique(y))
    pred = model.predict(x)
    assert pred.dtype == y.dtype and set(pred) <= set(labels)
    assert model.score(x, y) > 0.95


def test_integer_labels_in_blocks_give_integer_classes():
    x, y = _classification_data(np.array([0, 1, 2]))
    model = LogisticRegression().fit(Blocks.from_arrays(x, y, n_blocks=3))
    assert model.classes_.dtype.kind == "i" and model.predict(x).dtype.kind == "i"
    model = LogisticRegression().fit(Blocks.from_arrays(x, y.astype(float), n_blocks=3))
    assert model.classes_.dtype == np.float64


def test_string_labels_survive_save_and_load(tmp_path):
    x, y = _classification_data(np.array(["cat", "dog", "emu"], dtype=object))
    model = LogisticRegression().fit(x, y)
    save_model(model, tmp_path)
    again = load_model(tmp_path)
    np.testing.assert_array_equal(again.predict(x), model.predict(x))
    assert again.classes_.dtype == object
    assert str(again.summary()) == str(model.summary())


@pytest.mark.parametrize("model", [LinearRegression(), LogisticRegression(penalty=None, solver="newton")])
def test_saved_model_keeps_its_summary(tmp_path, model):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 3))
    y = x @ [1.0, -2.0, 0.5] + rng.normal(size=200)
    model.fit(x, y if is_regressor(model) else (y > 0).astype(int))
    save_model(model, tmp_path)
    again = load_model(tmp_path)
    assert str(again.summary()) == str(model.summary())
    assert again.summary().to_dict() == model.summary().to_dict()


@pytest.mark.parametrize("model", [KMeans(2), PCA(2), TruncatedSVD(2), RandomForestClassifier(5)])
def test_summary_only_where_it_means_something(model):
    assert not hasattr(model, "summary")


def test_summary_before_fit_is_not_fitted():
    with pytest.raises(NotFittedError):
        LinearRegression().summary()


def test_pca_and_svd_share_attribute_names():
    x = np.random.default_rng(2).normal(size=(60, 5)) @ np.diag([5.0, 3.0, 2.0, 1.0, 0.5])
    for model, ref in [(PCA(3), "sklearn.decomposition.PCA"), (TruncatedSVD(3), "sklearn.decomposition.TruncatedSVD")]:
        model.fit(x)
        module, name = ref.rsplit(".", 1)
        theirs = getattr(__import__(module, fromlist=[name]), name)(3).fit(x)
        for attr in ("explained_variance_", "explained_variance_ratio_", "singular_values_"):
            np.testing.assert_allclose(getattr(model, attr), getattr(theirs, attr), rtol=1e-6, err_msg=attr)
        np.testing.assert_allclose(np.abs(model.components_), np.abs(theirs.components_), atol=1e-6)
        assert model.n_components_ == 3 and model.components_for(1.0) <= 5
        np.testing.assert_allclose(model.all_explained_variance_ratio_[:3], model.explained_variance_ratio_)
        assert list(model.get_feature_names_out()) == [f"{type(model).__name__.lower()}{i}" for i in range(3)]


def test_kmeans_fit_predict_on_arrays_and_blocks():
    x = np.vstack([np.zeros((20, 2)), np.full((20, 2), 5.0)]) + np.random.default_rng(3).normal(size=(40, 2)) / 10
    model = KMeans(2, random_state=0)
    labels = model.fit_predict(x)
    np.testing.assert_array_equal(labels, model.labels_)
    np.testing.assert_array_equal(model.fit_predict(Blocks.from_arrays(x, n_blocks=3)), labels)
    assert model.fit_transform(x).shape == (40, 2)


def test_blocks_fit_checks_features_at_predict():
    x = np.random.default_rng(4).normal(size=(30, 2))
    model = PCA(1).fit(Blocks.from_arrays(x, features=["a", "b"]))
    assert list(model.feature_names_in_) == ["a", "b"]
    with pytest.raises(ValueError, match="feature names should match"):
        model.transform(Blocks.from_arrays(x, features=["b", "a"]))
    with pytest.raises(ValueError, match="X has 1 features, but PCA is expecting 2"):
        model.transform(Blocks.from_arrays(x[:, :1], features=["a"]))


def test_clone_keeps_params():
    model = RandomForestClassifier(n_estimators=7, max_depth=3, sampling="local")
    assert clone(model).get_params() == model.get_params()
