"""Image files: listing a class-per-folder tree or a (path, label) listing, and decoding one file to a fixed shape.

Decoding uses Pillow: a well-kept library whose decoders cover JPEG, PNG, BMP and TIFF and are deterministic
(the same bytes give the same pixels on every worker), which keeps the shards of both engines byte-identical.
Only those four formats are tried (`Image.open(..., formats=...)`), so a GIF or a text file named .jpg is
refused rather than guessed. Mode rule: an image becomes RGB (3 channels) or L (1 channel; ITU-R 601-2 luma)
by Pillow's `convert`; a palette or alpha image is converted (alpha dropped), and images of more than 8 bits
per channel (modes I, I;16, F) are refused, since squeezing them into bytes would lose their range silently.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from pipelines.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
FORMATS = ("JPEG", "PNG", "BMP", "TIFF")
LISTING_SUFFIXES = (".csv", ".parquet", ".pq")
WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
Resize = Literal["stretch", "crop", "pad"]
Filter = Literal["nearest", "box", "bilinear", "hamming", "bicubic", "lanczos"]
UNLABELLED = -1


@dataclass(frozen=True)
class ImageListing:
    """The image files of a data set in a fixed order, each with its row name, label and any listing problem."""

    paths: tuple[str, ...]
    names: tuple[str, ...]  # the row's source name: the path below the listing's root
    labels: tuple[int, ...]  # class index, UNLABELLED (-1) where none
    problems: tuple[str | None, ...]  # known before decoding (a listed file missing, an unknown class)
    class_names: tuple[str, ...] | None
    labelled: bool


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith((".", "_"))


def _walk_images(folder: str) -> list[str]:
    """Image files below a folder (any depth), sorted by their path; hidden files and folders skipped."""
    found = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "_")))
        found += [os.path.join(root, f) for f in files if _is_image_name(f)]
    return sorted(found)


def list_folder(root: str, classes: tuple[str, ...] | None, labels_optional: bool) -> ImageListing:
    """A folder with one subfolder per class (class index: the sorted subfolder names, or `classes` given).

    With `labels_optional` (new data to score) a folder of images without subfolders is read unlabelled;
    a subfolder that is not one of `classes` then has its files rejected. Files beside class folders are
    rejected (no class).
    """
    subdirs = sorted(
        d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith((".", "_"))
    )
    loose = sorted(os.path.join(root, f) for f in os.listdir(root) if _is_image_name(f))
    loose = [p for p in loose if os.path.isfile(p)]
    if not subdirs:
        if not labels_optional:
            raise DataError(f"{root}: no class subfolders; format 'images' reads one subfolder per class")
        if not loose:
            raise DataError(f"{root}: no image files ({' / '.join(IMAGE_SUFFIXES)})")
        names = tuple(os.path.relpath(p, root) for p in loose)
        n = len(loose)
        return ImageListing(tuple(loose), names, (UNLABELLED,) * n, (None,) * n, classes, False)
    index = {name: i for i, name in enumerate(classes if classes is not None else subdirs)}
    paths: list[str] = []
    labels: list[int] = []
    problems: list[str | None] = []
    for path in loose:
        paths.append(path)
        labels.append(UNLABELLED)
        problems.append("image file outside the class subfolders (no class)")
    for sub in subdirs:
        for path in _walk_images(os.path.join(root, sub)):
            paths.append(path)
            labels.append(index.get(sub, UNLABELLED))
            problems.append(None if sub in index else f"class folder {sub!r} is not one of the classes {list(index)}")
    if not paths:
        raise DataError(f"{root}: no image files ({' / '.join(IMAGE_SUFFIXES)}) in its class subfolders")
    names = tuple(os.path.relpath(p, root) for p in paths)
    return ImageListing(tuple(paths), names, tuple(labels), tuple(problems), tuple(index), True)


def list_table(path: str, classes: tuple[str, ...] | None, labels_optional: bool) -> ImageListing:
    """A CSV or Parquet listing with a `path` column (relative to the listing's folder) and a `label` column.

    Text labels are class names (index: their sorted order, or `classes` given); integer labels are class
    indices. A listed file that does not exist is rejected by its path.
    """
    try:
        frame = pd.read_csv(path, dtype={"path": str}) if path.endswith(".csv") else pd.read_parquet(path)
    except Exception as exc:  # pandas raises many types for an unreadable listing
        raise DataError(f"{path}: not a readable image listing ({exc})") from exc
    if "path" not in frame:
        raise DataError(f"{path}: an image listing needs a 'path' column; it has {list(frame.columns)}")
    if "label" not in frame and not labels_optional:
        raise DataError(f"{path}: an image listing needs a 'label' column; it has {list(frame.columns)}")
    base = os.path.dirname(os.path.abspath(path))
    rel = [str(p) for p in frame["path"]]
    paths = [p if os.path.isabs(p) else os.path.join(base, p) for p in rel]
    problems: list[str | None] = [None if os.path.isfile(p) else "file not found" for p in paths]
    n = len(paths)
    if "label" not in frame:
        return ImageListing(tuple(paths), tuple(rel), (UNLABELLED,) * n, tuple(problems), classes, False)
    raw = frame["label"]
    labels = [UNLABELLED] * n
    if pd.api.types.is_integer_dtype(raw.dtype):
        labels = [int(v) for v in raw]
        for i, v in enumerate(labels):
            if v < 0 or (classes is not None and v >= len(classes)):
                problems[i] = problems[i] or f"label {v} outside 0..{len(classes or ()) - 1}"
        names = classes
    else:
        text = ["" if pd.isna(v) else str(v) for v in raw]
        names = classes if classes is not None else tuple(sorted({t for t in text if t}))
        index = {name: i for i, name in enumerate(names)}
        for i, t in enumerate(text):
            if t in index:
                labels[i] = index[t]
            else:
                problems[i] = problems[i] or ("missing label" if not t else f"class {t!r} is not one of {list(index)}")
    return ImageListing(tuple(paths), tuple(rel), tuple(labels), tuple(problems), names, True)


def list_images(path: str, classes: tuple[str, ...] | None = None, labels_optional: bool = False) -> ImageListing:
    """The images named by a folder (one subfolder per class) or a listing file (.csv / .parquet)."""
    if os.path.isdir(path):
        return list_folder(path, classes, labels_optional)
    if os.path.isfile(path) and path.lower().endswith(LISTING_SUFFIXES):
        return list_table(path, classes, labels_optional)
    if os.path.isfile(path):
        raise DataError(f"{path}: format 'images' takes a folder or a .csv / .parquet listing of (path, label)")
    raise DataError(f"{path}: no such folder or listing")


def _pil_filter(name: str) -> int:
    from PIL import Image

    return int(getattr(Image.Resampling, name.upper()))


def fit_image(image: object, shape: tuple[int, int], resize: str, filter_name: str) -> object:
    """A Pillow image brought to (height, width): stretched, centre-cropped to the aspect then scaled, or
    scaled to fit then padded with zeros around the centre."""
    from PIL import Image

    height, width = shape
    w, h = image.size  # type: ignore[attr-defined]
    resample = _pil_filter(filter_name)
    if (w, h) == (width, height):
        return image
    if resize == "crop":
        scale = min(w / width, h / height)
        cw, ch = max(1, round(width * scale)), max(1, round(height * scale))
        left, top = (w - cw) // 2, (h - ch) // 2
        cropped = image.crop((left, top, left + cw, top + ch))  # type: ignore[attr-defined]
        return cropped.resize((width, height), resample)
    if resize == "pad":
        scale = min(width / w, height / h)
        nw, nh = max(1, min(width, round(w * scale))), max(1, min(height, round(h * scale)))
        inner = image.resize((nw, nh), resample)  # type: ignore[attr-defined]
        canvas = Image.new(image.mode, (width, height))  # type: ignore[attr-defined]
        canvas.paste(inner, ((width - nw) // 2, (height - nh) // 2))
        return canvas
    return image.resize((width, height), resample)  # type: ignore[attr-defined]


def decode_image(
    path: str, shape: tuple[int, ...], resize: str = "stretch", filter_name: str = "bilinear"
) -> np.ndarray:
    """One image file as uint8 pixels of `shape` (H, W, C with C 1 or 3; or H, W: one channel).

    Raises ValueError with the reason when the file is not a readable JPEG/PNG/BMP/TIFF or has a refused mode.
    """
    from PIL import Image

    channels = shape[2] if len(shape) == 3 else 1
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=FORMATS) as image:
                image.load()  # decode now: a truncated or corrupt file fails here
                if image.mode in WIDE_MODES:
                    raise ValueError(f"mode {image.mode} ({image.format}) has more than 8 bits per channel")
                fitted = fit_image(
                    image.convert("RGB" if channels == 3 else "L"), (shape[0], shape[1]), resize, filter_name
                )
                pixels = np.asarray(fitted, dtype=np.uint8)
    except ValueError:
        raise
    except Image.UnidentifiedImageError:
        size = os.path.getsize(path) if os.path.exists(path) else 0
        what = "empty file" if size == 0 else f"cannot identify image (not {', '.join(FORMATS)}, or a damaged header)"
        raise ValueError(what) from None
    except Exception as exc:  # Pillow raises OSError, SyntaxError, struct.error ... for damaged files
        raise ValueError(f"cannot decode ({type(exc).__name__}: {exc})") from None
    return pixels.reshape(shape)


def decode_many(
    paths: list[str], shape: tuple[int, ...], resize: str, filter_name: str
) -> tuple[list[bytes | None], list[str | None]]:
    """Pixel bytes (None where refused) and the reason (None where decoded) of each file."""
    blobs: list[bytes | None] = []
    reasons: list[str | None] = []
    for path in paths:
        try:
            blobs.append(decode_image(path, shape, resize, filter_name).tobytes())
            reasons.append(None)
        except ValueError as exc:
            blobs.append(None)
            reasons.append(str(exc))
    return blobs, reasons


def problem_column(reason: str) -> str:
    """The quarantine column of a listing problem: the image for a missing file, else the label."""
    return "image" if reason == "file not found" else "label"


def image_file_rows(
    listing: ImageListing,
    start: int,
    stop: int,
    shape: tuple[int, ...],
    resize: str,
    filter_name: str,
    labelled: bool,
) -> pd.DataFrame:
    """Validated rows of files [start, stop) of a listing: decoded pixel bytes and label, or the reason refused.

    A row is named by its file (`_source`: the path below the listing's root; `_row`: 0), so the seeded
    split of a file depends on its path alone and the quarantine names it.
    """
    idx = range(start, stop)
    reason: list[str | None] = [listing.problems[i] for i in idx]
    column: list[str | None] = [problem_column(r) if r else None for r in reason]
    todo = [k for k, r in enumerate(reason) if r is None]
    blobs: list[bytes | None] = [None] * len(reason)
    decoded, why = decode_many([listing.paths[start + k] for k in todo], shape, resize, filter_name)
    for k, blob, r in zip(todo, decoded, why, strict=True):
        blobs[k], reason[k], column[k] = blob, r, ("image" if r else None)
    labels = np.array([listing.labels[i] for i in idx], dtype=np.int64)
    if labelled:
        for k in np.flatnonzero(labels == UNLABELLED).tolist():
            if reason[k] is None:
                reason[k], column[k] = "missing label", "label"
    accepted = np.array([r is None for r in reason], dtype=bool)
    return pd.DataFrame(
        {
            "_source": [listing.names[i] for i in idx],
            "_row": np.zeros(len(reason), dtype=np.int64),
            "_reason": pd.Series(reason, dtype=object),
            "_column": pd.Series(column, dtype=object),
            "_raw": None,
            "_split": np.int8(0),
            "image": pd.Series([b if ok else None for b, ok in zip(blobs, accepted, strict=True)], dtype=object),
            "label": pd.Series(labels, dtype="Int64").where(accepted, pd.NA),
        }
    )


def renamed(listing: ImageListing, top: str) -> ImageListing:
    """The listing with its rows named by their paths below `top`."""
    names = tuple(os.path.relpath(os.path.abspath(p), top) for p in listing.paths)
    return dataclasses.replace(listing, names=names)


def concat(listings: list[ImageListing]) -> ImageListing:
    """One listing of several (the first one's classes and labelling); file names must differ."""
    first = listings[0]
    names = tuple(n for g in listings for n in g.names)
    if len(set(names)) != len(names):
        raise DataError(f"{first.paths[0] if first.paths else '?'}: the same image file is listed twice")
    return ImageListing(
        tuple(p for g in listings for p in g.paths),
        names,
        tuple(v for g in listings for v in g.labels),
        tuple(v for g in listings for v in g.problems),
        first.class_names,
        first.labelled,
    )
