"""Forest trees grown on LightGBM's feature histograms, kept as scikit-learn `Tree`s.

Each tree is one LightGBM round (squared-error gain on the 0/1 or numeric target, which for two classes
is the Gini gain scikit-learn uses) on the rows weighted by a bootstrap draw's multiplicities, with a random
share of features at each node: scikit-learn's forest, but splits found on 255-bin histograms of a dataset
binned once, several times faster than the exact search. Only the structure is taken: each tree becomes a
scikit-learn `Tree` whose leaves hold the in-bag class proportions (or mean target), so prediction,
importances and saved models are the same code as for scikit-learn's trees. Regression and two classes only.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from sklearn.tree._tree import NODE_DTYPE, Tree

MAX_LEAVES = 131072  # LightGBM's limit on num_leaves


def lightgbm_params(
    max_depth: int | None,
    min_samples_leaf: int | float,
    max_features: str | float | int | None,
    n_rows: int,
    n_features: int,
) -> dict[str, Any]:
    """One LightGBM round that grows one of a scikit-learn forest's trees (its depth, leaf size and features)."""
    if max_features == "sqrt":
        share = math.sqrt(n_features) / n_features
    elif max_features == "log2":
        share = max(1.0, math.log2(n_features)) / n_features
    elif max_features is None:
        share = 1.0
    elif isinstance(max_features, int | np.integer):
        share = min(1.0, int(max_features) / n_features)
    else:
        share = float(max_features)
    leaf = min_samples_leaf if isinstance(min_samples_leaf, int | np.integer) else math.ceil(min_samples_leaf * n_rows)
    return {
        "boosting": "gbdt",
        "objective": "regression",
        "learning_rate": 1.0,
        "feature_fraction_bynode": share,
        "max_depth": max_depth or -1,
        "num_leaves": min(MAX_LEAVES, max(2, 2**max_depth if max_depth else n_rows)),
        "min_data_in_leaf": int(leaf),
        "min_sum_hessian_in_leaf": 1e-3,  # a leaf holds at least one in-bag row (weights are whole multiplicities)
        "min_gain_to_split": 0.0,
        "lambda_l2": 0.0,
        "num_threads": 1,
        "deterministic": True,
        "force_row_wise": True,
        "verbose": -1,
    }


def grow_histogram_trees(
    x: np.ndarray, y: np.ndarray, n_trees: int, params: dict[str, Any], bootstrap: bool, seed: int, classifier: bool
) -> tuple[list[Tree], np.ndarray | None]:
    """Grow n_trees on (x, y); the trees as scikit-learn Trees and, for a classifier, the classes seen."""
    import lightgbm as lgb

    classes = np.unique(y) if classifier else None
    if classes is not None and len(classes) > 2:
        raise ValueError(f"histogram trees take two classes at most, found {len(classes)}")
    target = np.searchsorted(classes, y) if classes is not None else np.asarray(y, dtype=float)
    k = len(classes) if classes is not None else 1
    x32, rng, n = np.ascontiguousarray(x, dtype=np.float32), np.random.default_rng(seed), len(x)
    if k == 1 and classes is not None:  # one class: single leaves holding it, nothing to split or bin
        return [_tree({"leaf_value": 0.0}, x32, target, np.ones(n), k, classifier) for _ in range(n_trees)], classes
    data = lgb.Dataset(x, target.astype(float), params={"max_bin": 255, "feature_pre_filter": False, "verbose": -1})
    data.construct()  # binned once; each tree only changes the row weights
    trees = []
    for _ in range(n_trees):
        weight = np.bincount(rng.integers(n, size=n), minlength=n).astype(float) if bootstrap else np.ones(n)
        data.set_weight(weight)
        booster = lgb.train({**params, "seed": int(rng.integers(2**31 - 1))}, data, num_boost_round=1)
        trees.append(_tree(booster.dump_model()["tree_info"][0]["tree_structure"], x32, target, weight, k, classifier))
    return trees, classes


def _flatten(root: dict[str, Any]) -> list[dict[str, Any]]:
    """The nodes in pre-order (a parent before its children), each with the list positions of its children."""
    nodes: list[dict[str, Any]] = []
    stack = [root]
    while stack:
        node = stack.pop()
        nodes.append(node)
        if "left_child" in node:
            stack.append(node["right_child"])
            stack.append(node["left_child"])
    position = {id(node): i for i, node in enumerate(nodes)}
    for node in nodes:
        if "left_child" in node:
            node["_left"], node["_right"] = position[id(node["left_child"])], position[id(node["right_child"])]
    return nodes


def _depth(nodes: list[dict[str, Any]]) -> int:
    depth = [0] * len(nodes)
    for i, node in enumerate(nodes):
        if "_left" in node:
            depth[node["_left"]] = depth[node["_right"]] = depth[i] + 1
    return max(depth)


def _tree(
    root: dict[str, Any], x32: np.ndarray, target: np.ndarray, weight: np.ndarray, k: int, classifier: bool
) -> Tree:
    """A scikit-learn Tree with LightGBM's splits; leaf values and impurities from the in-bag rows (weights)."""
    nodes = _flatten(root)
    table = np.zeros(len(nodes), dtype=NODE_DTYPE)
    for i, node in enumerate(nodes):
        if "_left" in node:
            table[i] = (node["_left"], node["_right"], node["split_feature"], node["threshold"], 0.0, 0, 0.0, 1)
        else:
            table[i] = (-1, -1, -2, -2.0, 0.0, 0, 0.0, 0)
    width = k if classifier else 1
    tree = Tree(x32.shape[1], np.array([width], dtype=np.intp), 1)
    state = {"max_depth": _depth(nodes), "node_count": len(nodes), "nodes": table}
    tree.__setstate__({**state, "values": np.zeros((len(nodes), 1, width))})
    leaves = tree.apply(x32)
    if not classifier:  # per node count, sum and sum of squares of the target
        stats = np.stack(
            [
                np.bincount(leaves, weights=w, minlength=len(nodes))
                for w in (weight, weight * target, weight * target**2)
            ],
            axis=1,
        )
    else:
        stats = np.bincount(leaves * k + target, weights=weight, minlength=len(nodes) * k).reshape(len(nodes), k)
    for i in range(len(nodes) - 1, -1, -1):  # children come after their parent: sum them up the tree
        if table[i]["left_child"] >= 0:
            stats[i] = stats[table[i]["left_child"]] + stats[table[i]["right_child"]]
    count = stats.sum(axis=1) if classifier else stats[:, 0]
    safe = np.maximum(count, 1)
    if not classifier:
        mean = stats[:, 1] / safe
        values, impurity = mean[:, None, None], np.maximum(stats[:, 2] / safe - mean**2, 0.0)
    else:
        share = stats / safe[:, None]
        values, impurity = share[:, None, :], 1.0 - (share**2).sum(axis=1)
    table["impurity"], table["n_node_samples"], table["weighted_n_node_samples"] = impurity, count, count
    tree.__setstate__({**state, "nodes": table, "values": np.ascontiguousarray(values)})
    return tree
