"""Metrics of a fitted model on held-out blocks, with the plots that go with them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from pipelines.classical import plots
from pipelines.classical.base import seed_of
from pipelines.classical.data import Blocks, gather, sample_rows
from pipelines.classical.decomposition import PCA, components_for_variance
from pipelines.classical.kmeans import KMeans
from pipelines.classical.summary import label_text


def _class_names(classes: np.ndarray) -> list[str]:
    return [label_text(c) for c in classes]


def _named(model: Any, x: np.ndarray) -> Any:
    """Sampled rows with the feature names the model was fitted with (no feature-name warning)."""
    names = getattr(model, "feature_names_in_", None)
    return pd.DataFrame(x, columns=list(names)) if names is not None else x


def classification(model: Any, test: Blocks, plot_dir: Path | None) -> dict[str, Any]:
    """Test-split accuracy, log loss, ROC AUC (one-vs-rest for several classes), confusion matrix (`test_*`)."""
    y = gather(test, lambda block: block["y"])
    classes = model.classes_
    if hasattr(model, "predict_proba"):
        proba = model.predict_proba(test)
        pred = classes[np.argmax(proba, axis=1)]
    else:  # no probabilities (a linear SVM): labels from predict, ROC curves from the decision scores
        pred = model.predict(test)
        proba = model.decision_function(test) if hasattr(model, "decision_function") else None
        if proba is not None and proba.ndim == 1:
            proba = np.column_stack([-proba, proba])
    names = _class_names(classes)
    matrix = skm.confusion_matrix(y, pred, labels=classes)
    out: dict[str, Any] = {
        "test_rows": int(len(y)),
        "test_accuracy": float(skm.accuracy_score(y, pred)),
        "test_confusion_matrix": {"labels": names, "counts": matrix.tolist()},
    }
    if hasattr(model, "predict_proba"):
        out["test_log_loss"] = float(skm.log_loss(y, np.clip(proba, 1e-15, 1.0), labels=classes))
    present = np.isin(classes, y)
    curves: dict[str, tuple[np.ndarray, np.ndarray, float]] = {}
    if proba is None or not present.all():
        pass
    elif len(classes) == 2:
        out["test_roc_auc"] = float(skm.roc_auc_score(y == classes[1], proba[:, 1]))
        fpr, tpr, _ = skm.roc_curve(y == classes[1], proba[:, 1])
        curves[names[1]] = (fpr, tpr, out["test_roc_auc"])
    else:
        for i, name in enumerate(names):
            fpr, tpr, _ = skm.roc_curve(y == classes[i], proba[:, i])
            curves[name] = (fpr, tpr, float(skm.auc(fpr, tpr)))
        if hasattr(model, "predict_proba"):
            out["test_roc_auc_ovr"] = float(skm.roc_auc_score(y, proba, multi_class="ovr", labels=classes))
        else:  # decision scores are not probabilities: the one-vs-rest macro average of the per-class AUCs
            out["test_roc_auc_ovr"] = float(np.mean([c[2] for c in curves.values()]))
    if plot_dir is not None:
        out["plots"] = [plots.confusion(plot_dir / "confusion.png", matrix, names)]
        if curves:
            out["plots"].append(plots.roc(plot_dir / "roc.png", curves))
    return out


def regression(model: Any, test: Blocks, plot_dir: Path | None) -> dict[str, Any]:
    """RMSE, MAE and R² on the test split (`test_*`)."""
    y = gather(test, lambda block: block["y"])
    pred = model.predict(test)
    out: dict[str, Any] = {
        "test_rows": int(len(y)),
        "test_rmse": float(np.sqrt(skm.mean_squared_error(y, pred))),
        "test_mae": float(skm.mean_absolute_error(y, pred)),
        "test_r2": float(skm.r2_score(y, pred)),
    }
    if plot_dir is not None:
        keep = np.random.default_rng(0).permutation(len(y))[:5000]
        out["plots"] = [plots.predicted_vs_actual(plot_dir / "predicted_vs_actual.png", y[keep], pred[keep])]
    return out


def clustering(
    model: KMeans, train: Blocks, plot_dir: Path | None, sample: int, elbow_ks: list[int] | None
) -> dict[str, Any]:
    """Inertia, cluster sizes and centres, silhouette on a train sample (`train_*`), an elbow curve over ks."""
    x, y = sample_rows(train, sample, seed=seed_of(model.random_state))
    labels = model.predict(_named(model, x))
    out: dict[str, Any] = {
        "train_inertia": float(model.inertia_),
        "n_iter": int(model.n_iter_),
        "cluster_sizes": model.cluster_sizes_.tolist(),
        "cluster_centers": model.cluster_centers_.tolist(),
        "train_silhouette_sample": float(skm.silhouette_score(x, labels)) if len(set(labels)) > 1 else float("nan"),
        "train_silhouette_rows": int(len(x)),
    }
    if y is not None and len(np.unique(y)) > 1:
        out["train_adjusted_rand_index_sample"] = float(skm.adjusted_rand_score(y, labels))
    plot_list: list[str] = []
    if elbow_ks:
        params = {k: v for k, v in model.get_params().items() if k not in ("n_clusters", "n_init")}
        curve = {k: KMeans(n_clusters=k, n_init=1, **params).fit(train).inertia_ for k in elbow_ks}
        out["elbow"] = {str(k): v for k, v in curve.items()}
        if plot_dir is not None:
            plot_list.append(plots.elbow(plot_dir / "elbow.png", curve))
    if plot_dir is not None and x.shape[1] >= 2:
        scores = PCA(2).fit(x).transform(x)
        plot_list.append(plots.scatter(plot_dir / "clusters_pca.png", scores, labels, "clusters on the first 2 PCs"))
    if plot_list:
        out["plots"] = plot_list
    return out


def decomposition(
    model: Any, train: Blocks, plot_dir: Path | None, sample: int, targets: list[float]
) -> dict[str, Any]:
    """Explained variance (ratio), k for each variance target, scree plot and a labelled 2-D scatter."""
    ratio = model.all_explained_variance_ratio_
    ks = {f"{t:.0%}": components_for_variance(ratio, t) for t in targets}
    out: dict[str, Any] = {
        "n_components": int(model.n_components_),
        "explained_variance_ratio": [float(v) for v in model.explained_variance_ratio_],
        "explained_variance": [float(v) for v in model.explained_variance_],
        "components_for_variance": ks,
    }
    if plot_dir is not None:
        out["plots"] = [plots.scree(plot_dir / "scree.png", ratio[: max(model.n_components_, *ks.values())], ks)]
        if model.n_components_ >= 2:
            x, y = sample_rows(train, sample, seed=0)
            scores = np.asarray(model.transform(_named(model, x)))[:, :2]
            out["plots"].append(plots.scatter(plot_dir / "scatter_2d.png", scores, y, "first 2 PCs"))
    return out


def partition(model: Any, train: Blocks, plot_dir: Path | None, sample: int) -> dict[str, Any]:
    """An imported clusterer or mixture: cluster sizes over train, silhouette and ARI on a train sample."""
    labels_all = model.predict(train)
    values, counts = np.unique(labels_all, return_counts=True)
    x, y = sample_rows(train, sample, seed=0)
    labels = np.asarray(model.predict(_named(model, x)))
    out: dict[str, Any] = {
        "cluster_sizes": dict(zip([label_text(v) for v in values], counts.tolist(), strict=True)),
        "train_silhouette_sample": float(skm.silhouette_score(x, labels)) if len(set(labels)) > 1 else float("nan"),
        "train_silhouette_rows": int(len(x)),
    }
    if y is not None and len(np.unique(y)) > 1:
        out["train_adjusted_rand_index_sample"] = float(skm.adjusted_rand_score(y, labels))
    if plot_dir is not None and x.shape[1] >= 2:
        scores = PCA(2).fit(x).transform(x)
        out["plots"] = [plots.scatter(plot_dir / "clusters_pca.png", scores, labels, "clusters on the first 2 PCs")]
    return out
