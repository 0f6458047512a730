"""Statistics fitted on the training split (moments, category levels) and the per-partition transform."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from pipelines.errors import DataError
from pipelines.ingest.expressions import step_counts
from pipelines.ingest.infer import r_level_order
from pipelines.ingest.schema import TableSchema
from pipelines.ingest.split import SPLIT_NAMES, TRAIN
from pipelines.ingest.validate import DROPPED

KEEP_META = [pa.field("_source", pa.string()), pa.field("_row", pa.int64())]


def partition_stats(pdf: pd.DataFrame, schema: TableSchema | None) -> dict[str, Any]:
    """Counts per split (accepted; rejected by the split their record was assigned), training-split moments of
    numeric features and category levels for one partition."""
    ok = pdf["_reason"].isna().to_numpy()
    split = pdf["_split"].to_numpy()
    out: dict[str, Any] = {
        "read": int(len(pdf)),
        "rejected": int((~ok).sum()),
        "splits": {name: int((ok & (split == code)).sum()) for code, name in SPLIT_NAMES.items()},
        "split_rejected": {name: int((~ok & (split == code)).sum()) for code, name in SPLIT_NAMES.items()},
        "filtered": step_counts(pdf),
        "dropped": int((ok & (split == DROPPED)).sum()),
        "moments": {},
        "levels": {},
        "missing": {},
        "counts": {},
        "poly": {},
    }
    if schema is None:
        return out
    train = pdf[ok & (split == TRAIN)]
    kept = pdf[ok & (split >= 0)]  # neither filtered nor dropped
    for col in schema.features:
        policy = schema.policy(col.name)
        if not isinstance(policy, str):
            out["missing"][col.name] = [int(train[col.name].isna().sum()), int(kept[col.name].isna().sum())]
            if policy.impute in ("median", "most_frequent"):  # exact: the train split's distinct values, counted
                counts = train[col.name].dropna().value_counts(sort=False)
                out["counts"][col.name] = [[_plain(v), int(c)] for v, c in counts.items()]
        if col.numeric:
            x = train[col.name].to_numpy(dtype="float64", na_value=np.nan)
            x = x[~np.isnan(x)]  # accepted rows hold NaN only where a cell is missing and imputed
            n = len(x)
            mean = float(x.mean()) if n else 0.0
            out["moments"][col.name] = [n, mean, float(((x - mean) ** 2).sum()) if n else 0.0]
    for name, degree in schema.polys.items():
        x = train[name].to_numpy(dtype="float64", na_value=np.nan)
        x = x[~np.isnan(x)]
        mean = float(x.mean()) if len(x) else 0.0
        out["poly"][name] = [len(x), mean, [float(((x - mean) ** j).sum()) for j in range(2 * degree + 1)]]
    for col in schema.columns:
        if col.kind == "category":
            out["levels"][col.name] = sorted(set(kept[col.name].dropna().astype(str)))
    return out


def poly_basis(parts: list[list[Any]], degree: int, name: str) -> tuple[float, list[list[float]]]:
    """R's poly(x, degree) fitted on the train split: its mean and the (degree+1)^2 matrix B such that
    [1, u, .., u^degree] @ B (u = x - mean) has orthonormal columns, the first constant; from each partition's
    central power sums (shifted to the overall mean, so no large powers cancel)."""
    from math import comb

    n = sum(int(p[0]) for p in parts)
    if n <= degree:
        raise DataError(f"{name}: the train split has {n} value(s); poly of degree {degree} needs more than {degree}")
    mean = sum(p[0] * p[1] for p in parts) / n
    sums = np.zeros(2 * degree + 1)
    for count, part_mean, central in parts:
        if count == 0:
            continue
        delta = part_mean - mean  # sum((x - mean)^m) = sum_j C(m, j) delta^(m - j) sum((x - part_mean)^j)
        sums += [sum(comb(m, j) * delta ** (m - j) * central[j] for j in range(m + 1)) for m in range(2 * degree + 1)]
    gram = np.array([[sums[i + j] for j in range(degree + 1)] for i in range(degree + 1)])
    try:
        lower = np.linalg.cholesky(gram)
    except np.linalg.LinAlgError:
        raise DataError(
            f"{name}: the train split's values take fewer than {degree + 1} distinct values; lower the degree"
        ) from None
    basis = np.linalg.inv(lower).T  # upper triangular, positive diagonal: each polynomial leads with +u^i, as R's
    return float(mean), basis.tolist()


def poly_names(name: str, fit: tuple[float, list[list[float]]]) -> list[str]:
    """The output columns of a poly(x, k) term, named as R names them: poly(x, 2)1, poly(x, 2)2."""
    return [f"{name}{i}" for i in range(1, len(fit[1]))]


def poly_columns(values: pd.Series, fit: tuple[float, list[list[float]]]) -> np.ndarray:
    """The orthogonal polynomial columns 1..degree of x under a train-split fit (rows x degree)."""
    mean, basis = fit
    matrix = np.asarray(basis)
    u = values.to_numpy(dtype="float64", na_value=np.nan) - mean
    powers = np.vander(u, len(matrix), increasing=True)
    return (powers @ matrix)[:, 1:]


def _plain(value: Any) -> Any:
    """A NumPy/pandas scalar as a plain Python value (for stats that travel and for the manifest)."""
    return value.item() if hasattr(value, "item") else value


def fitted_fill(policy: Any, moments: tuple[int, float, float], counts: list[list[Any]]) -> Any:
    """The value a policy fills missing cells with, as scikit-learn's SimpleImputer fits it on the train split."""
    if policy.impute == "constant":
        return policy.value
    if policy.impute == "mean":
        return moments[1]
    merged: dict[Any, int] = {}
    for value, count in counts:
        merged[value] = merged.get(value, 0) + count
    if not merged:
        return None
    if policy.impute == "most_frequent":  # ties: the smallest value, as SimpleImputer picks
        top = max(merged.values())
        return min(v for v, c in merged.items() if c == top)
    values = np.array(sorted(merged))
    cumulative = np.cumsum([merged[v] for v in values])
    total = int(cumulative[-1])
    lo = values[np.searchsorted(cumulative, (total - 1) // 2 + 1)]
    hi = values[np.searchsorted(cumulative, total // 2 + 1)]
    return float((lo + hi) / 2)


def combine_moments(parts: list[list[float]]) -> tuple[int, float, float]:
    """Chan et al. parallel combination of (n, mean, M2); returns (n, mean, population std)."""
    n, mean, m2 = 0, 0.0, 0.0
    for nb, mb, m2b in parts:
        if nb == 0:
            continue
        delta = mb - mean
        total = n + int(nb)  # a count (written as an int)
        mean += delta * nb / total
        m2 += m2b + delta * delta * n * nb / total
        n = total
    return n, mean, (m2 / n) ** 0.5 if n else 0.0


@dataclass
class Fitted:
    """What the training split determined: scaler parameters and category levels."""

    scale: dict[str, tuple[float, float]] = field(default_factory=dict)
    levels: dict[str, list[str]] = field(default_factory=dict)
    constant: list[str] = field(default_factory=list)
    impute: dict[str, Any] = field(default_factory=dict)
    imputed: dict[str, int] = field(default_factory=dict)
    poly: dict[str, tuple[float, list[list[float]]]] = field(default_factory=dict)

    @classmethod
    def from_stats(cls, stats: list[dict[str, Any]], schema: TableSchema | None, standardize: bool) -> Fitted:
        fitted = cls()
        if schema is None:
            return fitted
        train_missing: dict[str, int] = {}
        for name, policy in schema.missing.items():
            if isinstance(policy, str) or name not in [c.name for c in schema.features]:
                continue
            moments = combine_moments([s["moments"][name] for s in stats]) if name in stats[0]["moments"] else None
            counts = [pair for s in stats for pair in s["counts"].get(name, [])]
            fitted.impute[name] = fitted_fill(policy, moments or (0, 0.0, 0.0), counts)
            train_missing[name] = sum(s["missing"][name][0] for s in stats)
            fitted.imputed[name] = sum(s["missing"][name][1] for s in stats)
        for col in schema.columns:
            if col.kind == "category":
                declared = schema.categories.get(col.name)
                seen = r_level_order({v for s in stats for v in s["levels"].get(col.name, [])})
                fill = fitted.impute.get(col.name)
                if fill is not None and str(fill) not in seen:
                    seen = r_level_order([*seen, str(fill)])
                fitted.levels[col.name] = list(declared) if declared else seen
        for name, degree in schema.polys.items():
            fitted.poly[name] = poly_basis([s["poly"][name] for s in stats], degree, name)
        if standardize:
            for col in schema.features:
                if col.numeric and col.name not in fitted.poly:  # orthonormal already
                    parts = [s["moments"][col.name] for s in stats]
                    if train_missing.get(col.name) and fitted.impute.get(col.name) is not None:  # scaled after filling
                        parts.append([train_missing[col.name], float(fitted.impute[col.name]), 0.0])
                    _, mean, std = combine_moments(parts)
                    if std == 0.0:
                        fitted.constant.append(col.name)
                        std = 1.0
                    fitted.scale[col.name] = (mean, std)
        return fitted


def _safe(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z_]+", "_", name).strip("_") or "x"


def encoded_columns(schema: TableSchema, fitted: Fitted, encode: str) -> list[tuple[str, pa.DataType, str, str | None]]:
    """Output feature columns: (name, type, source column, level or None)."""
    out: list[tuple[str, pa.DataType, str, str | None]] = []
    for col in schema.features:
        if col.kind == "category" and encode in ("onehot", "dummy"):
            levels = fitted.levels[col.name][1:] if encode == "dummy" else fitted.levels[col.name]
            out += [(f"{_safe(col.name)}_{_safe(level)}", pa.float64(), col.name, level) for level in levels]
        elif col.kind == "category":
            out.append((col.name, pa.int64(), col.name, None))
        elif col.name in fitted.poly:
            out += [(name, pa.float64(), col.name, None) for name in poly_names(col.name, fitted.poly[col.name])]
        elif col.numeric or col.kind == "bool":
            out.append((col.name, pa.float64(), col.name, None))
        else:
            out.append((col.name, pa.string(), col.name, None))
    return out


def output_schema(schema: TableSchema, fitted: Fitted, encode: str) -> pa.Schema:
    """Arrow schema of a written tabular split."""
    fields = KEEP_META + [pa.field(name, t) for name, t, _, _ in encoded_columns(schema, fitted, encode)]
    if schema.label is not None:
        label_type = pa.int64() if schema.label.kind in ("category", "int", "bool") else pa.float64()
        fields.append(pa.field(schema.label.name, label_type))
    return pa.schema(fields)


def _filled(values: pd.Series, fill: Any) -> pd.Series:
    """A column's missing cells filled with its fitted value (numbers as float64, so a mean fills an int column)."""
    if isinstance(fill, bool) or not isinstance(fill, (int, float)):
        return values.astype(object).where(values.notna(), fill)
    return values.astype("float64").fillna(float(fill))


def transform_table(pdf: pd.DataFrame, split: int, schema: TableSchema, fitted: Fitted, encode: str) -> pd.DataFrame:
    """Accepted rows of one split, encoded and standardized with the training-split fit."""
    keep = pdf[pdf["_reason"].isna() & (pdf["_split"] == split)]
    out: dict[str, Any] = {"_source": keep["_source"].to_numpy(), "_row": keep["_row"].to_numpy()}
    keep = keep.assign(**{k: _filled(keep[k], v) for k, v in fitted.impute.items() if k in keep and v is not None})
    polys = {
        name: column
        for source, fit in fitted.poly.items()
        if source in keep
        for name, column in zip(poly_names(source, fit), poly_columns(keep[source], fit).T, strict=True)
    }
    for name, dtype, source, level in encoded_columns(schema, fitted, encode):
        values = keep[source]
        if name in polys:
            out[name] = polys[name]
        elif level is not None:
            out[name] = (values.astype(str) == level).to_numpy(dtype="float64")
        elif source in fitted.levels:
            out[name] = pd.Categorical(values, categories=fitted.levels[source]).codes.astype("int64")
        elif source in fitted.scale:
            mean, std = fitted.scale[source]
            out[name] = (values.to_numpy(dtype="float64") - mean) / std
        elif pa.types.is_string(dtype):
            out[name] = values.to_numpy()
        else:
            out[name] = values.to_numpy(dtype="float64", na_value=np.nan)
    if schema.label is not None:
        label = keep[schema.label.name]
        if schema.label.name in fitted.levels:
            out[schema.label.name] = pd.Categorical(label, categories=fitted.levels[schema.label.name]).codes.astype(
                "int64"
            )
        elif schema.label.kind in ("int", "bool"):
            out[schema.label.name] = label.to_numpy(dtype="int64")
        else:
            out[schema.label.name] = label.to_numpy(dtype="float64")
    return pd.DataFrame(out)


def image_output_schema() -> pa.Schema:
    """Arrow schema of a written image split."""
    return pa.schema(KEEP_META + [pa.field("image", pa.binary()), pa.field("label", pa.int64())])


def image_pixels(blobs: np.ndarray, dtype: str | np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """The images of a written split's `image` column as one array of `shape` per row (no copy of the pixels)."""
    raw = b"".join(blobs) if len(blobs) else b""
    return np.frombuffer(raw, dtype=np.dtype(dtype)).reshape((len(blobs), *shape))


def stored_image_dtype(dtype: str, scale: str) -> str:
    """NumPy dtype of the pixel bytes transform_images writes: float32 when unit-scaled, else the file's own."""
    return "float32" if scale == "unit" else np.dtype(dtype).str


def transform_images(pdf: pd.DataFrame, split: int, dtype: str, scale: str) -> pd.DataFrame:
    """Accepted image rows of one split; 'unit' scaling stores float32 pixels in [0, 1]."""
    keep = pdf[pdf["_reason"].isna() & (pdf["_split"] == split)]
    images = keep["image"].to_numpy()
    if scale == "unit" and len(images):
        dt = np.dtype(dtype).newbyteorder("=")
        divisor = float(np.iinfo(dt).max) if np.issubdtype(dt, np.integer) else 1.0
        pixels = image_pixels(images, dt, (-1,))
        scaled = pixels.astype(np.float32) / np.float32(divisor)
        images = np.array([row.tobytes() for row in scaled], dtype=object)
    return pd.DataFrame(
        {
            "_source": keep["_source"].to_numpy(),
            "_row": keep["_row"].to_numpy(),
            "image": images,
            "label": keep["label"].to_numpy(dtype="int64"),
        }
    )
