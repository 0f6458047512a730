"""R-style formulas and schema resolution against a file's columns."""

from __future__ import annotations

import pytest

from pipelines.errors import ConfigError, DataError
from pipelines.ingest.config import DatasetConfig
from pipelines.ingest.schema import parse_formula, resolve_table_schema


def test_parse_simple_formula():
    f = parse_formula("deny ~ pirat + afam")
    assert (f.response, f.terms, f.intercept, f.dot) == ("deny", ("pirat", "afam"), True, False)


def test_categorical_dot_removal_and_intercept():
    f = parse_formula("y ~ . - id + C(region) - 1")
    assert f.dot and f.removed == {"id"} and f.categorical == {"region"} and not f.intercept
    assert parse_formula("y ~ 0 + x").intercept is False
    assert parse_formula("y ~ `odd name` + x").terms == ("odd name", "x")


@pytest.mark.parametrize(
    "bad", ["y = x", "y ~ x ~ z", "y ~ foo(x)", "y + z ~ x", "y ~ C(g):x", "y ~ ", "y ~ poly(x)", "y ~ poly(x, 2):z"]
)
def test_unsupported_formulas_are_clear_errors(bad):
    with pytest.raises(ConfigError, match="formula"):
        parse_formula(bad)


def _ds(**kw):
    return DatasetConfig(name="d", format="csv", path="x.csv", **kw)


def test_dot_expands_to_other_columns_in_file_order():
    schema = resolve_table_schema(
        _ds(formula="y ~ . - id + C(g)", types={"y": "int"}), ["id", "a", "g", "y", "b"], "f.csv"
    )
    assert [c.name for c in schema.features] == ["g", "a", "b"]
    assert schema.label.kind == "int"
    assert next(c for c in schema.features if c.name == "g").kind == "category"


def test_missing_column_names_file():
    with pytest.raises(DataError, match=r"f\.csv: missing column\(s\) \['z'\]"):
        resolve_table_schema(_ds(features=["a", "z"], label="y"), ["a", "y"], "f.csv")
