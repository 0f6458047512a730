"""Bundled data sets: real files installed with the project, addressed in configs as `bundled:NAME`."""

from __future__ import annotations

import gzip
import os
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pipelines.atomic import atomic_write_bytes
from pipelines.errors import EnvironmentProblem

FASHION_DIR = Path(os.environ.get("PIPELINES_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
FASHION_FILES = {
    "fashion-mnist/train-images": "train-images-idx3-ubyte.gz",
    "fashion-mnist/train-labels": "train-labels-idx1-ubyte.gz",
    "fashion-mnist/test-images": "t10k-images-idx3-ubyte.gz",
    "fashion-mnist/test-labels": "t10k-labels-idx1-ubyte.gz",
}
FASHION_HOW_TO = (
    "Fashion-MNIST comes from Debian's package `dataset-fashion-mnist` (`apt-get install dataset-fashion-mnist`, "
    "needs root; `make setup` does it). Without root, copy the four IDX files into a folder and set "
    "PIPELINES_FASHION_MNIST_DIR, or use the bundled `digits` set (conf/digits.yaml)."
)


def cache_dir() -> Path:
    """Where materialized bundled files live (outside the clone)."""
    return Path(os.environ.get("PIPELINES_CACHE", Path.home() / ".cache" / "pipelines")) / "data"


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode an array as an IDX file (uint8 or float32 elements)."""
    codes = {np.dtype("u1"): 0x08, np.dtype("f4"): 0x0D}
    dtype = np.dtype(array.dtype)
    if dtype not in codes:
        raise ValueError(f"IDX writer supports uint8 and float32, not {dtype}")
    header = bytes([0, 0, codes[dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(dtype.newbyteorder(">")).tobytes()


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.clip(np.round(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return images, digits.target.astype(np.uint8)


def _materialize_digits(name: str) -> Path:
    images, labels = _digits()
    out = cache_dir() / "digits"
    files = {
        "digits/images": (out / "digits-images-idx3-ubyte.gz", lambda: gzip.compress(idx_bytes(images), mtime=0)),
        "digits/labels": (out / "digits-labels-idx1-ubyte.gz", lambda: gzip.compress(idx_bytes(labels), mtime=0)),
        "digits/npz": (out / "digits.npz", lambda: _npz_bytes(x=images, y=labels)),
    }
    path, make = files[name]
    if not path.exists():
        atomic_write_bytes(path, make())
    return path


def _npz_bytes(**arrays: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)  # type: ignore[arg-type]  # numpy stub: ** might hold allow_pickle
    return buf.getvalue()


def _materialize_breast_cancer(name: str) -> Path:
    from sklearn.datasets import load_breast_cancer

    path = cache_dir() / "breast_cancer.csv"
    if not path.exists():
        frame = load_breast_cancer(as_frame=True).frame
        frame.columns = [c.replace(" ", "_") for c in frame.columns]
        atomic_write_bytes(path, frame.to_csv(index=False).encode())
    return path


def _materialize_hmda(name: str) -> Path:
    from pipelines.data import hmda

    layout = name.removeprefix("hmda/")
    path = cache_dir() / f"hmda-{layout}.csv"
    if not path.exists():
        frame = hmda.prepared() if layout == "prepared" else hmda.raw()
        atomic_write_bytes(path, frame.to_csv(index=False).encode())
    return path


def _statsmodels_csv(relative: str) -> Callable[[str], Path]:
    def find(name: str) -> Path:
        import statsmodels.datasets

        path = Path(statsmodels.datasets.__file__).parent / relative
        if not path.exists():
            raise EnvironmentProblem(f"bundled:{name}: {path} is missing from the statsmodels install")
        return path

    return find


def _fashion(name: str) -> Path:
    path = FASHION_DIR / FASHION_FILES[name]
    if not path.exists():
        raise EnvironmentProblem(f"bundled:{name}: {path} not found. " + FASHION_HOW_TO)
    return path


BUNDLED: dict[str, Callable[[str], Path]] = {
    **{name: _fashion for name in FASHION_FILES},
    "digits/images": _materialize_digits,
    "digits/labels": _materialize_digits,
    "digits/npz": _materialize_digits,
    "breast-cancer": _materialize_breast_cancer,
    "hmda/prepared": _materialize_hmda,
    "hmda/raw": _materialize_hmda,
    "fair": _statsmodels_csv("fair/fair.csv"),
    "randhie": _statsmodels_csv("randhie/randhie.csv"),
}


def fashion_mnist_available() -> bool:
    """True when the Fashion-MNIST IDX files are installed."""
    return all((FASHION_DIR / f).exists() for f in FASHION_FILES.values())


def resolve_path(spec: str | list[str] | None) -> str | list[str]:
    """Replace `bundled:NAME` references with local file paths; other paths pass through."""
    if spec is None:
        raise EnvironmentProblem("no path given")
    if isinstance(spec, list):
        return [str(resolve_path(s)) for s in spec]
    if not spec.startswith("bundled:"):
        return spec
    name = spec.removeprefix("bundled:")
    if name not in BUNDLED:
        raise EnvironmentProblem(f"unknown bundled data set {name!r}; known: {sorted(BUNDLED)}")
    return str(BUNDLED[name](name))


# Whether a bundled image set's mirror images keep their class: clothes do, digits do not.
MIRROR_SAFE = {"fashion-mnist": True, "digits": False}


def bundled_flips(spec: str) -> bool:
    """Whether mirrored images of a bundled set keep their class (false for anything not bundled)."""
    name = spec.removeprefix("bundled:").split("/")[0] if spec.startswith("bundled:") else ""
    return MIRROR_SAFE.get(name, False)
