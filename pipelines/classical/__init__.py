"""Classical models on row blocks, one implementation for both engines, scikit-learn-shaped."""

from pipelines.classical.data import Blocks, ModelInputError
from pipelines.classical.decomposition import PCA, TruncatedSVD
from pipelines.classical.elastic_net import ElasticNet, Lasso
from pipelines.classical.forest import RandomForestClassifier, RandomForestRegressor
from pipelines.classical.gbt import GBTClassifier, GBTRegressor
from pipelines.classical.glm import GammaRegression, PoissonRegression
from pipelines.classical.kmeans import KMeans, elbow
from pipelines.classical.linear import LinearRegression
from pipelines.classical.logistic import LogisticRegression
from pipelines.classical.persist import load_model, save_model

ESTIMATORS: dict[str, type] = {
    "linear_regression": LinearRegression,
    "logistic_regression": LogisticRegression,
    "kmeans": KMeans,
    "pca": PCA,
    "truncated_svd": TruncatedSVD,
    "random_forest_classifier": RandomForestClassifier,
    "random_forest_regressor": RandomForestRegressor,
    "poisson_regression": PoissonRegression,
    "gamma_regression": GammaRegression,
    "elastic_net": ElasticNet,
    "lasso": Lasso,
    "gbt_classifier": GBTClassifier,
    "gbt_regressor": GBTRegressor,
}

__all__ = [
    "ESTIMATORS",
    "PCA",
    "Blocks",
    "ElasticNet",
    "GBTClassifier",
    "GBTRegressor",
    "GammaRegression",
    "KMeans",
    "Lasso",
    "LinearRegression",
    "LogisticRegression",
    "ModelInputError",
    "PoissonRegression",
    "RandomForestClassifier",
    "RandomForestRegressor",
    "TruncatedSVD",
    "elbow",
    "load_model",
    "save_model",
]
