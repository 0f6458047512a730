"""Search spaces: a grid or random draws of values for dotted keys of a stage config (`params.max_depth`)."""

from __future__ import annotations

import copy
import itertools
import math
from typing import Any, get_args, get_origin

import numpy as np
from pydantic import BaseModel, Field, PositiveInt, model_validator

from pipelines.settings import StrictModel

Values = dict[str, Any]


class Range(StrictModel):
    """A continuous (or integer) range to draw from: uniform, or log-uniform when `log`."""

    low: float
    high: float
    log: bool = False
    integer: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        return self

    def draw(self, rng: np.random.Generator) -> float | int:
        """One value from the range."""
        if self.log:
            value = math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        else:
            value = rng.uniform(self.low, self.high)
        return int(round(value)) if self.integer else float(value)


class RandomSearch(StrictModel):
    """`trials` draws (seeded) from a space of choice lists and ranges."""

    trials: PositiveInt
    seed: int = 0
    space: dict[str, list[Any] | Range] = Field(min_length=1)


def grid_values(grid: dict[str, list[Any]]) -> list[Values]:
    """Every combination of the grid's values, the last key varying fastest."""
    keys = list(grid)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(grid[k] for k in keys))]


def random_values(search: RandomSearch) -> list[Values]:
    """`search.trials` draws, the same for the same seed."""
    rng = np.random.default_rng(search.seed)
    out = []
    for _ in range(search.trials):
        values: Values = {}
        for key, choice in search.space.items():
            values[key] = choice.draw(rng) if isinstance(choice, Range) else choice[int(rng.integers(len(choice)))]
        out.append(values)
    return out


def with_values(config: dict[str, Any], values: Values) -> dict[str, Any]:
    """A copy of a config dict with each dotted key set to its value (missing mappings are created)."""
    out = copy.deepcopy(config)
    for key, value in values.items():
        *parents, last = key.split(".")
        node = out
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[last] = value
    return out


def key_problem(model: type[BaseModel], key: str) -> str | None:
    """Why a dotted key names no field of a config model (None when it does; keys inside a dict field are free)."""
    parts = key.split(".")
    current: Any = model
    for depth, part in enumerate(parts):
        fields = current.model_fields
        if part not in fields:
            where = ".".join(parts[:depth]) or model.__name__
            return f"{part!r} is not a key of {where} (have {sorted(fields)})"
        annotation = fields[part].annotation
        nested = [a for a in (annotation, *get_args(annotation)) if isinstance(a, type) and issubclass(a, BaseModel)]
        if depth == len(parts) - 1:
            return None
        if nested:
            current = nested[0]
        elif annotation is dict or get_origin(annotation) is dict:
            return None
        else:
            return f"{'.'.join(parts[: depth + 1])!r} holds a single value, not keys"
    return None
