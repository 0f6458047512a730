"""pipelines: Spark and Dask stages that load, validate and partition data for classical and deep models.

The Python API (`pipelines.run`, `pipelines.load_config`, ...; docs/NOTEBOOKS.md) is imported on first use,
so `import pipelines` stays light (no Spark, Dask or TensorFlow).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

API = ("Run", "engine", "load_config", "open_run", "predict", "run", "runs", "train")


def __getattr__(name: str) -> Any:
    """The public API, imported lazily (PEP 562)."""
    if name in API:
        from pipelines import api

        found = globals().get(name)  # `runs`: the subpackage, callable as the API's run table
        return found if found is not None else getattr(api, name)
    raise AttributeError(f"module 'pipelines' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *API])


__all__ = ["__version__", *API]
