"""Score new data with a finished run's saved model on Spark or Dask (`pipelines predict`; docs/PREDICT.md)."""

import sys
import types
from typing import Any

from pipelines.predict.job import predict


class _CallablePredict(types.ModuleType):
    """This package, callable as `pipelines.predict(run, stage, data, out=None)` (pipelines.api.predict).

    The subpackage and the public API's function share the name `pipelines.predict`.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from pipelines.api import predict as api_predict

        return api_predict(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePredict

__all__ = ["predict"]
