"""Row validation: typed columns plus, for every rejected row, the column and the reason.

The validated frame keeps every record read (accepted and rejected), so counts always reconcile:
`_reason` is null for accepted rows. Stages then filter; nothing is dropped silently.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.ingest.readers import RawChunk
from pipelines.ingest.schema import Column, TableSchema

META_FIELDS = [
    pa.field("_source", pa.string()),
    pa.field("_row", pa.int64()),
    pa.field("_reason", pa.string()),
    pa.field("_column", pa.string()),
    pa.field("_raw", pa.string()),
    pa.field("_split", pa.int8()),
]
DROPPED = -2  # the `_split` of an accepted row its missing-value policy drops: in no split, counted apart
# (-1 is a filter's drop: pipelines.ingest.expressions.FILTERED)
NAN_TEXT = {"nan", "-nan", "+nan"}
TRUE_TEXT = {"true", "t", "yes", "y", "1"}
FALSE_TEXT = {"false", "f", "no", "n", "0"}
NULLABLE = {"float": "float64", "int": "Int64", "bool": "boolean", "str": object, "category": object}


def table_arrow_schema(schema: TableSchema) -> pa.Schema:
    """Arrow schema of a validated tabular frame."""
    return pa.schema(META_FIELDS + [pa.field(c.name, c.arrow_type) for c in schema.columns])


def image_arrow_schema() -> pa.Schema:
    """Arrow schema of a validated image frame: raw record bytes and an integer label."""
    return pa.schema(META_FIELDS + [pa.field("image", pa.binary()), pa.field("label", pa.int64())])


def _reasons(
    mask: np.ndarray, message: str, values: pd.Series | np.ndarray | None = None, hint: str = ""
) -> pd.Series | None:
    """Per-row reason: message where mask is set (then repr of the value when values are given, then the hint);
    None if none."""
    if not mask.any():
        return None
    out = pd.Series(None, index=range(len(mask)), dtype=object)
    if values is None:
        out[mask] = message
    else:
        picked = np.asarray(values, dtype=object)[mask]
        out[mask] = [f"{message}{v!r}{hint}" for v in picked]
    return out


def _accepts(col: Column, kind: str) -> str:
    """The `types:` entry that would accept a value breaking the column's type."""
    return f" in column {col.name!r}; `types: {{{col.name}: {kind}}}` would accept it"


def _first(current: pd.Series | None, new: pd.Series | None) -> pd.Series | None:
    """Keep the earlier reason of each row; fill rows without one from new."""
    if current is None:
        return new
    if new is None:
        return current
    return current.where(current.notna(), new)


def _text(arr: pa.ChunkedArray) -> pd.Series:
    """A column as stripped text (nulls as empty strings), object dtype."""
    stripped = pc.utf8_trim_whitespace(arr.cast(pa.string()).fill_null(""))
    return pd.Series(stripped.to_numpy(zero_copy_only=False), dtype=object)


def _column(
    arr: pa.ChunkedArray,
    col: Column,
    is_label: bool,
    levels: tuple[str, ...] | None,
    nullable: bool = False,
    reject_missing: bool = True,
) -> tuple[pd.Series, pd.Series | None, np.ndarray]:
    """Typed values of one column, per row why it is rejected (None when it is fine), and which cells are missing.

    `nullable`: only values of the wrong type are rejected; missing values stay null, NaN and inf stay.
    `reject_missing` False (the column's missing-value policy is drop or impute): a missing cell is no rejection.
    """
    missing_msg = "missing label" if is_label else "missing value"
    reasons, values, missing = _checked(arr, col, missing_msg, levels, nullable)
    if not reject_missing and reasons is not None:
        reasons = reasons.where(~(missing & (reasons == missing_msg).to_numpy()), None)
        reasons = reasons if reasons.notna().any() else None
    return values, reasons, missing


def _checked(
    arr: pa.ChunkedArray, col: Column, missing_msg: str, levels: tuple[str, ...] | None, nullable: bool
) -> tuple[pd.Series | None, pd.Series, np.ndarray]:
    """Reasons, typed values and missing mask of one column."""
    reasons: pd.Series | None = None
    if col.kind in ("float", "int"):
        if pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type):
            missing = arr.is_null().to_numpy(zero_copy_only=False)
            num = arr.cast(pa.float64()).fill_null(np.nan).to_numpy()
        else:
            text = _text(arr)
            missing = (text == "").to_numpy() | arr.is_null().to_numpy(zero_copy_only=False)
            num = pd.to_numeric(text.where(~missing, None), errors="coerce").astype("float64").to_numpy()
            unparsed = np.isnan(num) & ~missing & ~text.str.lower().isin(NAN_TEXT).to_numpy()
            reasons = _reasons(unparsed, "not a number: ", text, _accepts(col, "category"))
            num = np.where(unparsed, np.nan, num)
        if not nullable:
            reasons = _first(reasons, _reasons(missing, missing_msg))
            reasons = _first(reasons, _reasons(np.isnan(num) & ~missing, "NaN value"))
            reasons = _first(reasons, _reasons(np.isinf(num), "infinite value"))
        if col.kind == "int":
            frac = np.isfinite(num) & ((num != np.round(num)) | (np.abs(num) > 2**53))
            reasons = _first(reasons, _reasons(frac, "not an integer: ", num, _accepts(col, "float")))
            values = pd.Series(np.where(np.isfinite(num) & ~frac, num, np.nan)).astype("Int64")
        elif nullable:  # missing stays NA, NaN stays NaN (SQL NULL and NaN differ)
            values = pd.Series(pd.arrays.FloatingArray(num, missing.astype(bool)))
        else:
            values = pd.Series(num)
        return reasons, values, missing
    if col.kind == "bool" and pa.types.is_boolean(arr.type):
        missing = arr.is_null().to_numpy(zero_copy_only=False)
        values = pd.Series(arr.to_pandas(), dtype="boolean")
        return None if nullable else _reasons(missing, missing_msg), values, missing
    text = _text(arr)
    missing = (text == "").to_numpy()
    reasons = None if nullable else _reasons(missing, missing_msg)
    reasons = _first(reasons, _reasons(text.str.contains("\x00", regex=False).to_numpy(dtype=bool), "NUL byte in text"))
    if col.kind == "bool":
        lower = text.str.lower()
        truthy, falsy = lower.isin(TRUE_TEXT).to_numpy(), lower.isin(FALSE_TEXT).to_numpy()
        reasons = _first(
            reasons, _reasons(~missing & ~(truthy | falsy), "not a boolean: ", text, _accepts(col, "category"))
        )
        values = pd.Series(pd.array(truthy, dtype="boolean"))
        values[~(truthy | falsy)] = pd.NA
        return reasons, values, missing
    if levels is not None:
        unknown = ~missing & ~text.isin(levels).to_numpy()
        reasons = _first(reasons, _reasons(unknown, "unknown category: ", text))
    return reasons, text.where(~missing, None), missing


def validate_table(chunk: RawChunk, schema: TableSchema, nullable: bool = False) -> pd.DataFrame:
    """Typed, checked frame for one tabular chunk, malformed records included as rejected rows.

    `nullable` (the columns expressions read): a missing value is null, not a rejection (see `_column`).
    """
    n = chunk.values.num_rows
    reason = pd.Series(None, index=range(n), dtype=object)
    column = pd.Series(None, index=range(n), dtype=object)
    out: dict[str, pd.Series] = {}
    dropped = np.zeros(n, bool)
    for col in schema.columns:
        is_label = schema.label is not None and col.name == schema.label.name
        policy = schema.policy(col.name)
        arr = chunk.values.column(col.name)
        levels = schema.categories.get(col.name)
        values, why, missing = _column(arr, col, is_label, levels, nullable, policy == "quarantine")
        if policy == "drop":
            dropped |= missing
        out[col.name] = values
        if why is None:
            continue
        fresh = (reason.isna() & why.notna()).to_numpy()
        reason = reason.where(~fresh, why)
        column = column.where(~fresh, col.name)
    empty_line = chunk.empty_lines()
    if empty_line.any():
        reason = reason.where(~empty_line, "empty line")
        column = column.where(~empty_line, None)
    rejected = reason.notna().to_numpy()
    raw = pd.Series(None, index=range(n), dtype=object)
    if rejected.any():
        raw[rejected] = chunk.raw_lines(rejected)
    frame = pd.DataFrame(
        {
            "_source": chunk.source,
            "_row": chunk.rows,
            "_reason": reason,
            "_column": column,
            "_raw": raw,
            "_split": np.where(dropped & reason.isna().to_numpy(), DROPPED, 0).astype(np.int8),
            **out,
        }
    )
    if chunk.malformed:
        extra = pd.DataFrame(
            {
                "_source": chunk.source,
                "_row": [m.row for m in chunk.malformed],
                "_reason": [m.reason for m in chunk.malformed],
                "_column": [m.column for m in chunk.malformed],
                "_raw": [m.raw for m in chunk.malformed],
                "_split": np.int8(0),
                **{c.name: pd.Series([None] * len(chunk.malformed), dtype=NULLABLE[c.kind]) for c in schema.columns},
            }
        )
        frame = pd.concat([frame, extra], ignore_index=True).sort_values("_row", kind="stable", ignore_index=True)
    return frame


def validate_images(
    source: str,
    rows: np.ndarray,
    images: np.ndarray,
    labels: np.ndarray | None,
    shape: tuple[int, ...],
    classes: int | None,
    file_problem: str | None = None,
    labelled: bool = True,
) -> pd.DataFrame:
    """Checked frame for image records: shape, missing image or label, NaN/inf pixels, label range.

    Unlabelled records (`labelled` False: new data to score) are not rejected for a missing label; theirs is -1.
    """
    n = len(rows)
    reason = np.full(n, None, dtype=object)
    column = np.full(n, None, dtype=object)

    def reject(mask: np.ndarray, col: str, msg: str | np.ndarray) -> None:
        fresh = mask & (reason == None)  # noqa: E711 - elementwise on an object array
        reason[fresh] = msg[fresh] if isinstance(msg, np.ndarray) else msg
        column[fresh] = col

    n_img = len(images)
    n_lbl = 0 if labels is None else len(labels)
    reject(np.arange(n) >= n_img, "image", "missing image")
    if file_problem:
        reject(np.ones(n, bool), "image", file_problem)
    blobs = np.full(n, None, dtype=object)
    if n_img and not file_problem:
        flat = images.reshape(n_img, -1)
        if np.issubdtype(flat.dtype, np.floating):
            nan_rows = np.zeros(n, bool)
            nan_rows[:n_img] = np.isnan(flat).any(axis=1)
            inf_rows = np.zeros(n, bool)
            inf_rows[:n_img] = np.isinf(flat).any(axis=1)
            reject(nan_rows, "image", "NaN pixel value")
            reject(inf_rows, "image", "infinite pixel value")
        contiguous = np.ascontiguousarray(images.reshape((n_img, *shape)))
        blobs[:n_img] = [rec.tobytes() for rec in contiguous]
    label_values = np.full(n, -1, dtype=np.int64)
    if labelled:
        reject(np.arange(n) >= n_lbl, "label", "missing label")
    if labels is not None and n_lbl:
        lab = labels.reshape(n_lbl, -1)
        if lab.shape[1] != 1:
            reject(np.ones(n, bool), "label", f"label record has shape {labels.shape[1:]}, expected a scalar")
        else:
            vals = lab[:, 0]
            as_float = vals.astype(np.float64)
            bad = np.zeros(n, bool)
            bad[:n_lbl] = ~np.isfinite(as_float) | (as_float != np.round(as_float)) | (as_float < 0)
            if classes is not None:
                bad[:n_lbl] |= np.isfinite(as_float) & (as_float >= classes)
            msg = np.array(
                [f"label {v!r} outside 0..{(classes or 1) - 1}" for v in as_float.tolist()] + [""] * (n - n_lbl),
                dtype=object,
            )
            reject(bad, "label", msg)
            ok = np.isfinite(as_float)
            label_values[:n_lbl][ok] = as_float[ok].astype(np.int64)
    accepted = reason == None  # noqa: E711
    return pd.DataFrame(
        {
            "_source": source,
            "_row": rows.astype(np.int64),
            "_reason": reason,
            "_column": column,
            "_raw": None,
            "_split": np.int8(0),
            "image": np.where(accepted, blobs, None),  # type: ignore[call-overload]  # numpy stub: None is an object
            "label": pd.Series(label_values, dtype="Int64").where(accepted, pd.NA),
        }
    )
