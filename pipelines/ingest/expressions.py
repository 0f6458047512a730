"""Row filters and derived columns: SQL expressions checked with sqlglot, evaluated by DuckDB over Arrow.

One evaluator serves both engines: each partition function (Spark's Python workers, Dask's workers) runs
the same DuckDB query on the same Arrow rows. Expressions are data, never Python: sqlglot parses them, an
allow-list of node types refuses everything else (subqueries, tables, unknown functions), and DuckDB runs the
SQL sqlglot writes back, with `/`, `//` and `%` by zero rewritten to NULL.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import sqlglot
from sqlglot import exp

from pipelines.errors import ConfigError
from pipelines.ingest.config import ColumnType
from pipelines.ingest.readers import RawChunk
from pipelines.ingest.schema import ARROW_TYPES, Column, TableSchema
from pipelines.ingest.validate import NULLABLE, validate_table
from pipelines.protocol import Problem

FILTERED = -1  # the `_split` code of a row a filter dropped (kept in the validated frame for the counts)

_ALLOWED: tuple[type[exp.Expression], ...] = (
    exp.Column, exp.Identifier, exp.Literal, exp.Null, exp.Boolean, exp.Paren, exp.Neg, exp.Not, exp.And, exp.Or,
    exp.Add, exp.Sub, exp.Mul, exp.Div, exp.IntDiv, exp.Mod, exp.Pow,
    exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE, exp.Is, exp.In, exp.Between, exp.Like, exp.ILike,
    exp.Case, exp.If, exp.Cast, exp.TryCast, exp.DataType, exp.Coalesce, exp.Nullif,
    exp.Ln, exp.Exp, exp.Sqrt, exp.Abs, exp.Floor, exp.Ceil, exp.Round, exp.Sign, exp.Greatest, exp.Least,
    exp.Lower, exp.Upper, exp.Trim, exp.Substring, exp.Length, exp.Concat, exp.DPipe,
)  # fmt: skip
_CAST_TYPES = {
    exp.DataType.Type.DOUBLE, exp.DataType.Type.FLOAT, exp.DataType.Type.INT, exp.DataType.Type.BIGINT,
    exp.DataType.Type.SMALLINT, exp.DataType.Type.BOOLEAN, exp.DataType.Type.VARCHAR, exp.DataType.Type.TEXT,
}  # fmt: skip
DUCKDB_TYPES = {"float": "DOUBLE", "int": "BIGINT", "bool": "BOOLEAN", "str": "VARCHAR", "category": "VARCHAR"}


class ExpressionError(ValueError):
    """An expression that does not parse, uses what the dialect refuses, names an unknown column or mistypes."""


@dataclass(frozen=True)
class Step:
    """One derive or filter: its config key, the derived column's name (None: a filter) and its DuckDB SQL."""

    key: str
    text: str
    sql: str
    columns: frozenset[str]
    name: str | None = None


@dataclass(frozen=True)
class Expressions:
    """The checked steps in evaluation order, the file columns they read and each derived column's type."""

    steps: tuple[Step, ...]
    inputs: tuple[str, ...]
    derived: dict[str, ColumnType] = field(default_factory=dict)

    @property
    def filters(self) -> list[Step]:
        return [s for s in self.steps if s.name is None]


def filter_list(value: str | list[str] | None) -> list[tuple[str, str]]:
    """(key, text) of each filter as the config writes it: `filter` or `filter[i]`."""
    if value is None:
        return []
    if isinstance(value, str):
        return [("filter", value)]
    return [(f"filter[{i}]", text) for i, text in enumerate(value)]


def parse_expression(text: str) -> exp.Expression:
    """Parse one SQL expression and refuse any node outside the allow-list (ExpressionError, one line)."""
    try:
        parsed = sqlglot.parse(text, read="duckdb")
    except sqlglot.errors.SqlglotError as exc:
        raise ExpressionError(f"syntax error: {str(exc).splitlines()[0]}") from None
    tree = parsed[0] if len(parsed) == 1 else None
    if not isinstance(tree, exp.Expression):  # None for an empty text (sqlglot 30 annotates its base class, Expr)
        raise ExpressionError("expected one expression")
    for node in tree.walk():
        if isinstance(node, exp.Log):
            raise ExpressionError("log() has a different base in each SQL dialect: write ln(x) (or ln(x) / ln(10))")
        if isinstance(node, exp.Anonymous):
            raise ExpressionError(f"unknown function {node.name!r}")
        if isinstance(node, (exp.Subquery, exp.Select, exp.Table, exp.Star)):
            raise ExpressionError("subqueries, tables and '*' are not allowed in an expression")
        if not isinstance(node, _ALLOWED):
            raise ExpressionError(f"{node.key.upper()} is not allowed in an expression")
        if isinstance(node, exp.Column) and node.table:
            raise ExpressionError(f"column {node.sql()!r}: name columns without a table")
        if isinstance(node, exp.DataType) and node.this not in _CAST_TYPES:
            raise ExpressionError(f"CAST to {node.sql()} is not supported (use DOUBLE, BIGINT, BOOLEAN or VARCHAR)")
    return tree


def expression_columns(text: str) -> set[str]:
    """Names of the columns an expression reads."""
    return {c.name for c in parse_expression(text).find_all(exp.Column)}


def _null_if_zero(node: exp.Expression) -> exp.Expression:
    """`a / b`, `a // b`, `a % b`: b = 0 gives NULL (DuckDB would give inf or raise)."""
    if isinstance(node, (exp.Div, exp.IntDiv, exp.Mod)):
        divisor = node.expression
        node.set("expression", exp.Nullif(this=divisor.copy(), expression=exp.Literal.number(0)))
    return node


def _duckdb_sql(tree: exp.Expression) -> str:
    return tree.copy().transform(_null_if_zero).sql(dialect="duckdb")


def expression_problems(filters: str | list[str] | None, derive: Mapping[str, str]) -> list[Problem]:
    """Syntax and allow-list problems of a stage's expressions, each under its key (`derive.x`, `filter[0]`)."""
    problems = []
    for name, text in derive.items():
        key = f"derive.{name}"
        if not name or name.startswith("_"):
            problems.append(Problem(key, "a derived column's name must not be empty or start with '_'"))
        try:
            parse_expression(text)
        except ExpressionError as exc:
            problems.append(Problem(key, str(exc)))
    for key, text in filter_list(filters):
        try:
            parse_expression(text)
        except ExpressionError as exc:
            problems.append(Problem(key, str(exc)))
    return problems


def _kind(dtype: pa.DataType, key: str) -> ColumnType:
    """The project's column type for a DuckDB result's Arrow type."""
    if pa.types.is_boolean(dtype):
        return "bool"
    if pa.types.is_integer(dtype):
        return "int"
    if pa.types.is_floating(dtype) or pa.types.is_decimal(dtype):
        return "float"
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype):
        return "category"
    raise ExpressionError(f"gives {dtype}, not a number, boolean or text (add a CAST)")


def _connect() -> Any:
    import duckdb

    con = duckdb.connect(":memory:")
    con.execute("SET threads = 1")
    return con


def _query(con: Any, sql: str, table: pa.Table) -> pa.Array:
    """One expression over a table: its values in row order."""
    con.register("t", table)
    try:
        relation = con.sql(f"SELECT {sql} AS v FROM t")
        fetch = getattr(relation, "to_arrow_table", None) or relation.arrow  # DuckDB 2 renamed it
        result = fetch()
    finally:
        con.unregister("t")
    return result.column(0).combine_chunks() if result.num_rows else pa.array([], result.schema.field(0).type)


def _one_line(exc: Exception) -> str:
    return str(exc).splitlines()[0].strip()


def compile_expressions(
    filters: str | list[str] | None,
    derive: Mapping[str, str],
    columns: Mapping[str, ColumnType],
    types: Mapping[str, ColumnType] | None = None,
) -> Expressions:
    """Check expressions against the file's columns (name -> type) and order them into steps.

    Derived columns run in the order written; each filter runs as early as the columns it names allow, so a
    row it drops reaches no later derive. A `types:` entry for a derived column casts its value.
    Raises ConfigError naming the key (`derive.x: unknown column 's99'`).
    """
    import duckdb

    types = dict(types or {})
    known: dict[str, ColumnType] = dict(columns)
    derived: dict[str, ColumnType] = {}
    steps: list[Step] = []
    pending = [(key, text, None) for key, text in filter_list(filters)]
    plan = [(f"derive.{name}", text, name) for name, text in derive.items()]
    inputs: list[str] = []
    con = _connect()
    try:
        for key, text, name in plan + pending:
            try:
                tree = parse_expression(text)
                used = [c.name for c in tree.find_all(exp.Column)]
                later = set(derive) - set(derived)
                for col in used:
                    if col in later and col != name:
                        raise ExpressionError(f"column {col!r} is derived later; order derive so it comes first")
                    if col not in known:
                        raise ExpressionError(f"unknown column {col!r}")
                sql = _duckdb_sql(tree)
                if name is not None and name in types:
                    sql = f"CAST({sql} AS {DUCKDB_TYPES[types[name]]})"
                empty = pa.table({c: pa.array([], _arrow(known[c])) for c in known})
                try:
                    dtype = _query(con, sql, empty).type
                except duckdb.Error as exc:
                    raise ExpressionError(f"type error: {_one_line(exc)}") from None
                if name is None and not (pa.types.is_boolean(dtype) or pa.types.is_null(dtype)):
                    raise ExpressionError(f"a filter must be true or false, this one gives {dtype}")
                kind = _kind(dtype, key) if name is not None else "bool"
            except ExpressionError as exc:
                raise ConfigError(f"{key}: {exc}") from None
            inputs += [c for c in used if c in columns and c not in derived and c not in inputs]
            step = Step(key, text, sql, frozenset(used), name)
            if name is None:
                steps.append(step)
                continue
            if name in columns:
                raise ConfigError(f"{key}: {name!r} is a column of the file; choose another name")
            derived[name] = types.get(name, kind)
            known[name] = derived[name]
            steps.append(step)
    finally:
        con.close()
    return Expressions(_early_filters(steps), tuple(inputs), derived)


def _early_filters(steps: list[Step]) -> tuple[Step, ...]:
    """Each filter moved right after the last derive it reads (filters keep their order among themselves)."""
    derives = [s for s in steps if s.name is not None]
    out: list[Step] = []
    filters = [s for s in steps if s.name is None]
    made: set[str] = set()
    for d in [None, *derives]:
        if d is not None and d.name is not None:  # derives have names
            out.append(d)
            made.add(d.name)
        needs = {s.name for s in derives}
        ready = [f for f in filters if not (f.columns & (needs - made))]
        out += ready
        filters = [f for f in filters if f not in ready]
    return tuple(out)


def _arrow(kind: ColumnType) -> pa.DataType:
    return ARROW_TYPES[kind]


@dataclass
class Outcome:
    """What the steps did to a table's rows: the table with derived columns, who was dropped and why."""

    table: pa.Table  # the rows no step dropped, with the derived columns
    filtered_by: np.ndarray  # per row: the key of the filter that dropped it, else None
    error_column: np.ndarray  # per row: the derived column whose expression failed, else None
    error_reason: np.ndarray  # per row: that failure's message, else None


def apply_steps(table: pa.Table, expressions: Expressions) -> Outcome:
    """Run the steps on a partition's typed rows; a row a filter keeps not (false or NULL) is dropped there."""
    import duckdb

    n = table.num_rows
    filtered_by = np.full(n, None, dtype=object)
    error_column = np.full(n, None, dtype=object)
    error_reason = np.full(n, None, dtype=object)
    alive = np.arange(n)
    current = table
    con = _connect()
    try:
        for step in expressions.steps:
            try:
                values = _query(con, step.sql, current)
            except duckdb.Error:
                bad = _failing_rows(con, step.sql, current, np.arange(current.num_rows))
                for i, message in bad.items():
                    error_column[alive[i]] = step.name or step.key
                    error_reason[alive[i]] = message
                keep = np.ones(current.num_rows, bool)
                keep[list(bad)] = False
                alive, current = alive[keep], current.filter(pa.array(keep))
                values = _query(con, step.sql, current)
            if step.name is None:
                keep = np.asarray(values.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)
                filtered_by[alive[~keep]] = step.key
                alive, current = alive[keep], current.filter(pa.array(keep))
                continue
            values = values.cast(_arrow(expressions.derived[step.name]))
            current = current.append_column(step.name, values)
    finally:
        con.close()
    return Outcome(current, filtered_by, error_column, error_reason)


def _failing_rows(con: Any, sql: str, table: pa.Table, rows: np.ndarray) -> dict[int, str]:
    """Rows (indices into table) on which the expression raises, with the message: found by bisection."""
    import duckdb

    try:
        _query(con, sql, table.take(pa.array(rows)))
        return {}
    except duckdb.Error as exc:
        if len(rows) == 1:
            return {int(rows[0]): _one_line(exc)}
    mid = len(rows) // 2
    return {**_failing_rows(con, sql, table, rows[:mid]), **_failing_rows(con, sql, table, rows[mid:])}


def step_counts(frame: pd.DataFrame) -> dict[str, int]:
    """Rows each filter dropped in one validated partition (its `_column` names the filter)."""
    dropped = frame.loc[frame["_split"].to_numpy() == FILTERED, "_column"]
    return {str(k): int(v) for k, v in dropped.value_counts().items()}


def declared_kinds(dataset: Any) -> dict[str, ColumnType]:
    """Types the dataset gives its file columns: `types:`, `categories:` and the formula's C(name) terms."""
    from pipelines.ingest.schema import parse_formula

    kinds: dict[str, ColumnType] = {name: "category" for name in dataset.categories}
    if dataset.formula:
        kinds.update({name: "category" for name in parse_formula(dataset.formula).categorical})
    kinds.update(dataset.types)
    return kinds


def read_schema(table: TableSchema, expressions: Expressions, types: Mapping[str, ColumnType]) -> TableSchema:
    """The file columns a partition reads: the schema's own (less derived ones) and the expressions' inputs."""
    own = [c for c in table.columns if c.name not in expressions.derived]
    extra = [Column(n, types.get(n, "float")) for n in expressions.inputs if n not in {c.name for c in own}]
    return TableSchema(tuple(own + extra), None)


def validate_with_steps(
    chunk: RawChunk, reading: TableSchema, table: TableSchema, expressions: Expressions
) -> pd.DataFrame:
    """Validated frame of one chunk with derive and filter applied.

    The file's values are parsed first (missing values are SQL NULLs here; a value of the wrong type is
    rejected), the steps run on the parsed rows, and the schema's columns are then checked as always.
    A row a step fails on is rejected (column: the derived column); a row a filter drops stays as a marker
    (`_split` FILTERED, `_column` the filter's key) so that counts reconcile.
    """
    parsed = validate_table(chunk, reading, nullable=True)
    ok = parsed["_reason"].isna().to_numpy()
    arrow = pa.schema([pa.field(c.name, c.arrow_type) for c in reading.columns])
    typed = pa.Table.from_pandas(parsed.loc[ok, reading.names], schema=arrow, preserve_index=False)
    outcome = apply_steps(typed, expressions)
    rows = parsed["_row"].to_numpy()[ok]
    errored = outcome.error_column != None  # noqa: E711 - elementwise on an object array
    dropped = outcome.filtered_by != None  # noqa: E711
    live = ~errored & ~dropped
    values = outcome.table.select(table.names)  # exactly the live rows, in order
    inner = RawChunk(chunk.source, values, rows[live], True, [], chunk.body, chunk.starts, chunk.first_line,
                     chunk.encoding)  # fmt: skip
    checked = validate_table(inner, table)
    # One frame in the parsed rows' (file) order, each row at its place: no marker frames, concat or sort.
    at = np.flatnonzero(ok)
    at_live, at_err, at_drop = at[live], at[errored], at[dropped]
    take = np.full(len(parsed), -1, dtype=np.int64)
    take[at_live] = np.arange(len(at_live))
    reason = parsed["_reason"].to_numpy(dtype=object, copy=True)
    column = parsed["_column"].to_numpy(dtype=object, copy=True)
    raw = parsed["_raw"].to_numpy(dtype=object, copy=True)
    split = parsed["_split"].to_numpy(dtype=np.int8, copy=True)  # a parse-rejected row keeps its own
    split[at] = 0
    for target, own in ((reason, "_reason"), (column, "_column"), (raw, "_raw"), (split, "_split")):
        target[at_live] = checked[own].to_numpy()
    if errored.any():
        reason[at_err] = outcome.error_reason[errored]
        column[at_err] = outcome.error_column[errored]
        raw[at_err] = chunk.raw_lines(np.isin(chunk.rows, rows[errored]))
    column[at_drop] = outcome.filtered_by[dropped]
    split[at_drop] = FILTERED
    meta = {
        "_source": chunk.source,
        "_row": parsed["_row"].to_numpy(),
        **{k: pd.Series(v, dtype=object) for k, v in (("_reason", reason), ("_column", column), ("_raw", raw))},
        "_split": split,
    }  # object columns stay object (pandas would infer its string dtype, slowly)
    if len(at_live) == len(parsed):
        data = {c.name: checked[c.name].array for c in table.columns}
    else:  # the other rows' values are null, in the nullable dtypes (as concat with null rows gave)
        data = {c.name: _spread(checked[c.name].astype(NULLABLE[c.kind]), take) for c in table.columns}
    return pd.DataFrame({**meta, **data})


def _spread(values: pd.Series, take: np.ndarray) -> Any:
    """values placed at the rows `take` names (-1: a null row); text columns' nulls are None, as elsewhere."""
    spread = pd.api.extensions.take(values.array, take, allow_fill=True)
    if spread.dtype == object:
        spread[take < 0] = None  # take fills object arrays with NaN
    return spread
