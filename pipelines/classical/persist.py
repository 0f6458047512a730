"""Save and load fitted models as JSON plus an .npz of arrays: no pickle, so a model file cannot run code.

An estimator given by import path (External) is saved with skops' safe format (estimator.skops beside
model.json) and loaded only with types on an allow-list: NumPy, SciPy, scikit-learn and the estimator's own
top-level package (pipelines.classical.external.External is the wrapper).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.tree._tree import Tree

from pipelines.atomic import atomic_write_bytes, atomic_write_text
from pipelines.classical.summary import ModelSummary
from pipelines.errors import DataError

FORMAT = "pipelines-model/1"
SKOPS_FORMAT = "pipelines-skops/1"


def _registry() -> dict[str, type]:
    from pipelines.classical import ESTIMATORS

    return {cls.__name__: cls for cls in ESTIMATORS.values()}


def _tree_arrays(index: int, tree: Tree) -> dict[str, np.ndarray]:
    state = tree.__getstate__()
    return {
        f"tree{index}.nodes": state["nodes"],
        f"tree{index}.values": state["values"],
        f"tree{index}.shape": np.array([tree.n_features, int(tree.n_classes[0]), tree.n_outputs, state["max_depth"]]),
    }


def _tree_from(arrays: Any, index: int) -> Tree:
    n_features, n_classes, n_outputs, max_depth = (int(v) for v in arrays[f"tree{index}.shape"])
    tree = Tree(n_features, np.array([n_classes], dtype=np.intp), n_outputs)
    nodes = arrays[f"tree{index}.nodes"]
    tree.__setstate__(
        {"max_depth": max_depth, "node_count": len(nodes), "nodes": nodes, "values": arrays[f"tree{index}.values"]}
    )
    return tree


def save_model(model: Any, directory: str | Path) -> None:
    """Write model.json (class, parameters, scalar attributes, summary) and arrays.npz into an existing directory."""
    directory = Path(directory)
    from pipelines.classical.external import External, dumps

    if isinstance(model, External):
        atomic_write_bytes(directory / "estimator.skops", dumps(model))
        params = {k: v for k, v in model.get_params(deep=False).items() if k != "estimator"}
        meta: dict[str, Any] = {"format": SKOPS_FORMAT, "class": model.model, "code": model.code, "params": params}
        atomic_write_text(directory / "model.json", json.dumps(meta, indent=2, default=str))
        return
    meta = {"format": FORMAT, "class": type(model).__name__, "params": model.get_params()}
    arrays: dict[str, np.ndarray] = {}
    scalars: dict[str, Any] = {}
    objects: list[str] = []  # object arrays (feature names, string labels) are stored as text, restored as object
    for name, value in vars(model).items():
        if not name.endswith("_") or name.startswith("_") or name == "summary_":
            continue
        if name == "trees_":
            for i, tree in enumerate(value):
                arrays.update(_tree_arrays(i, tree))
            scalars["n_trees"] = len(value)
        elif name == "tree_columns_":
            for i, cols in enumerate(value):
                arrays[f"tree{i}.columns"] = np.asarray(cols)
        elif isinstance(value, np.ndarray):
            if value.dtype == object:
                objects.append(name)
            arrays[name] = value.astype(str) if value.dtype == object else value
        elif isinstance(value, (int, float, str, bool, np.integer, np.floating)):
            scalars[name] = value.item() if isinstance(value, np.generic) else value
    meta["attributes"] = scalars
    meta["object_arrays"] = objects
    if hasattr(model, "save_native"):  # a library's own model file (XGBoost's JSON), beside ours
        model.save_native(directory)
    if getattr(model, "summary_", None) is not None:
        meta["summary"] = model.summary_.to_state()
        atomic_write_text(directory / "summary.txt", str(model.summary_) + "\n")
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)  # type: ignore[arg-type]  # numpy stub: ** might hold allow_pickle
    atomic_write_bytes(directory / "arrays.npz", buf.getvalue())
    atomic_write_text(directory / "model.json", json.dumps(meta, indent=2, default=float))


def load_model(directory: str | Path) -> Any:
    """Rebuild a saved model (arrays are read with allow_pickle=False)."""
    directory = Path(directory)
    try:
        meta = json.loads((directory / "model.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{directory / 'model.json'}: cannot read model: {exc}") from exc
    if meta.get("format") == SKOPS_FORMAT:
        from pipelines.classical.external import loads

        return loads((directory / "estimator.skops").read_bytes(), meta["class"], meta.get("code"))
    if meta.get("format") != FORMAT:
        raise DataError(f"{directory}: not a {FORMAT} model (format {meta.get('format')!r})")
    cls = _registry().get(meta["class"])
    if cls is None:
        raise DataError(f"{directory}: unknown model class {meta['class']!r}")
    model = cls(**meta["params"])
    with np.load(directory / "arrays.npz", allow_pickle=False) as arrays:
        n_trees = meta["attributes"].pop("n_trees", None)
        for name, value in meta["attributes"].items():
            setattr(model, name, value)
        objects = set(meta.get("object_arrays", ["feature_names_in_"]))
        for name in arrays.files:
            if not name.startswith("tree"):
                setattr(model, name, arrays[name].astype(object) if name in objects else arrays[name])
        if n_trees is not None:
            model.trees_ = [_tree_from(arrays, i) for i in range(n_trees)]
            model.tree_columns_ = [arrays[f"tree{i}.columns"] for i in range(n_trees) if f"tree{i}.columns" in arrays]
    if hasattr(model, "load_native"):
        model.load_native(directory)
    if "title" in meta.get("summary", {}):  # files from before summaries were kept whole have no title
        model.summary_ = ModelSummary.from_state(meta["summary"])
    return model
