"""Declared table schemas: typed columns from a config's features/label/types or an R-style formula."""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import combinations
from typing import Any, NamedTuple

import pyarrow as pa

from pipelines.errors import ConfigError, DataError
from pipelines.ingest.config import ColumnType, DatasetConfig

ARROW_TYPES: dict[str, pa.DataType] = {
    "float": pa.float64(),
    "int": pa.int64(),
    "str": pa.string(),
    "category": pa.string(),
    "bool": pa.bool_(),
}

_NAME = r"[A-Za-z_.][A-Za-z0-9_.]*|`[^`]+`"
_TERM = re.compile(rf"^(?:C\(\s*(?P<cat>{_NAME})\s*\)|(?P<name>{_NAME}))$")
_CALL = re.compile(r"^(?P<fn>[A-Za-z_.][A-Za-z0-9_.]*)\((?P<body>.*)\)$", re.S)
# R functions a formula term may apply, and the DuckDB function of each (R's log is the natural logarithm)
R_FUNCTIONS = {"I": "", "log": "ln", "exp": "exp", "sqrt": "sqrt", "abs": "abs", "log2": "log2", "log10": "log10"}


@dataclass(frozen=True)
class Formula:
    """A parsed `y ~ a + C(b) + I(a^2) + log(c) + a:c + . - d` formula.

    terms are R's term names in R's order (main effects, then interactions by order); derive gives, for each term
    computed from columns (I(), log(), ..., a:b), the SQL that computes it, in the order written.
    """

    response: str
    terms: tuple[str, ...]
    categorical: frozenset[str]
    dot: bool
    removed: frozenset[str]
    intercept: bool
    derive: tuple[tuple[str, str], ...] = ()
    polys: tuple[tuple[str, int], ...] = ()  # poly(x, k) terms: name and degree (orthogonal, fitted on train)


def _strip(name: str) -> str:
    return name[1:-1] if name.startswith("`") else name


def _split_top(text: str, seps: str) -> list[tuple[str, str]]:
    """(separator before, piece) for the pieces of text between top-level separators (not inside () or ``)."""
    pieces: list[tuple[str, str]] = []
    depth, quoted, sep = 0, False, ""
    current: list[str] = []
    for ch in text:
        if ch == "`":
            quoted = not quoted
        elif not quoted and ch == "(":
            depth += 1
        elif not quoted and ch == ")":
            depth -= 1
        if ch in seps and depth == 0 and not quoted:
            pieces.append((sep, "".join(current).strip()))
            sep, current = ch, []
            continue
        current.append(ch)
    pieces.append((sep, "".join(current).strip()))
    return pieces


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _r_sql(text: str, body: str) -> str:
    """The DuckDB SQL of an R arithmetic expression (^ as power, log as ln), or a ConfigError naming the formula."""
    import sqlglot
    from sqlglot import exp

    def natural(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Log):
            if node.args.get("expression") is not None:
                raise ConfigError(f"formula {text!r}: log() takes one argument here; write log(x) / log(base)")
            return exp.Ln(this=node.this)
        return node

    try:
        tree = sqlglot.parse_one(body.replace("`", '"'), read="duckdb")
    except sqlglot.errors.ParseError:
        raise ConfigError(f"formula {text!r}: cannot read the expression {body!r}") from None
    return tree.transform(natural).sql(dialect="duckdb")


MAX_POLY_DEGREE = 10


def _poly(text: str, body: str) -> tuple[str, str, int]:
    """poly(x, k): (R's name `poly(x, k)`, the column x, degree k)."""
    args = [piece for _, piece in _split_top(body, ",")]
    column = re.fullmatch(_NAME, args[0]) if args else None
    degree = args[1] if len(args) == 2 else ""
    if column is None or not degree.isdigit() or not 1 <= int(degree) <= MAX_POLY_DEGREE:
        raise ConfigError(
            f"formula {text!r}: poly() takes a column and a degree 1-{MAX_POLY_DEGREE}, as poly(x, 2) "
            "(orthogonal, as R's; for raw powers write I(x^2))"
        )
    name = _strip(args[0])
    return f"poly({args[0]}, {int(degree)})", name, int(degree)


class _Term(NamedTuple):
    """A formula term (or one factor of an interaction) as R names it."""

    name: str
    sql: str | None = None  # the SQL computing it; None for a file column
    categorical: bool = False  # C(name)
    degree: int = 0  # poly(x, degree)

    @property
    def operand(self) -> str:
        """The SQL of this factor inside a product."""
        return f"({self.sql})" if self.sql is not None else _quoted(self.name)


def _atom(text: str, token: str) -> _Term:
    """One factor of a term: a column, C(column), I(expr) or a function of one, or poly(column, k)."""
    match = _TERM.match(token)
    if match:
        return _Term(_strip(match.group("cat") or match.group("name")), categorical=match.group("cat") is not None)
    call = _CALL.match(token)
    if call and call.group("fn") in R_FUNCTIONS:
        sql = _r_sql(text, call.group("body"))
        fn = R_FUNCTIONS[call.group("fn")]
        return _Term(token, f"{fn}({sql})" if fn else f"({sql})")
    if call and call.group("fn") == "poly":
        name, column, degree = _poly(text, call.group("body"))
        return _Term(name, _quoted(column), degree=degree)
    raise ConfigError(
        f"formula {text!r}: unsupported term {token!r} (use column names, C(name), I(expr), log/exp/sqrt/abs(expr), "
        "a:b, a*b, '.', '- name', '0' or '1')"
    )


def _term(text: str, token: str) -> _Term:
    """A term: one factor, or an interaction a:b (the product of numeric factors)."""
    factors = [_atom(text, piece) for _, piece in _split_top(token, ":")]
    if len(factors) == 1:
        return factors[0]
    if any(f.categorical or f.degree for f in factors):
        raise ConfigError(
            f"formula {text!r}: interactions with a C() or poly() factor ({token!r}) are not supported yet"
        )
    return _Term(":".join(f.name for f in factors), " * ".join(f.operand for f in factors))


@lru_cache(maxsize=64)  # asked again for every file and by predict; a Formula is immutable
def parse_formula(text: str) -> Formula:
    """Parse the R formula subset we support: names, C(name), I(expr), log/exp/sqrt/abs(expr), a:b, a*b, '.',
    '- term', '+ 0'/'- 1'."""
    if text.count("~") != 1:
        raise ConfigError(f"formula {text!r}: expected exactly one '~' (response ~ terms)")
    lhs, rhs = (part.strip() for part in text.split("~"))
    if not re.fullmatch(_NAME, lhs):
        raise ConfigError(f"formula {text!r}: response {lhs!r} must be a single column name")
    terms: list[str] = []
    categorical: set[str] = set()
    removed: set[str] = set()
    derive: dict[str, str] = {}
    polys: dict[str, int] = {}
    dot = False
    intercept = True
    for sign, token in _split_top(rhs, "+-"):
        sign = sign or "+"
        if not token:
            if sign == "-" or not terms:  # a leading '-' (as in '- 1') or an empty formula side
                continue
            raise ConfigError(f"formula {text!r}: an empty term")
        if token in ("0", "1"):
            intercept = (token == "1") == (sign == "+")
            continue
        if token == ".":
            if sign == "-":
                raise ConfigError(f"formula {text!r}: '- .' is not meaningful")
            dot = True
            continue
        factors = [piece for _, piece in _split_top(token, "*")]
        expanded = [":".join(c) for r in range(1, len(factors) + 1) for c in combinations(factors, r)]
        for one in expanded:
            term = _term(text, one)
            if term.degree:
                polys[term.name] = term.degree
            if sign == "-":
                removed.add(term.name)
                continue
            if term.categorical:
                categorical.add(term.name)
            if term.sql is not None:
                derive.setdefault(term.name, term.sql)
            if term.name not in terms:
                terms.append(term.name)
    if not terms and not dot:
        raise ConfigError(f"formula {text!r}: no predictor terms")
    terms.sort(key=lambda name: len(_split_top(name, ":")))  # R's order: main effects, then interactions by order
    kept = tuple((name, sql) for name, sql in derive.items() if name not in removed)
    degrees = tuple((name, k) for name, k in polys.items() if name not in removed)
    return Formula(_strip(lhs), tuple(terms), frozenset(categorical), dot, frozenset(removed), intercept, kept, degrees)


@dataclass(frozen=True)
class Column:
    """One declared column: name and kind."""

    name: str
    kind: ColumnType

    @property
    def arrow_type(self) -> pa.DataType:
        return ARROW_TYPES[self.kind]

    @property
    def numeric(self) -> bool:
        return self.kind in ("float", "int")


@dataclass(frozen=True)
class TableSchema:
    """The columns a tabular data set must have, in order: features then the label."""

    features: tuple[Column, ...]
    label: Column | None
    intercept: bool = True
    categories: dict[str, tuple[str, ...]] = field(default_factory=dict)
    declared: frozenset[str] = frozenset()
    missing: dict[str, Any] = field(default_factory=dict)
    derived: frozenset[str] = frozenset()
    polys: dict[str, int] = field(default_factory=dict)  # poly(x, k) features: orthogonal polynomials of degree k

    def policy(self, name: str) -> Any:
        """The missing-value policy of a column: 'quarantine', 'drop' or an Impute."""
        return self.missing.get(name, "quarantine")

    @property
    def columns(self) -> tuple[Column, ...]:
        return self.features + ((self.label,) if self.label else ())

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def undeclared(self) -> list[str]:
        """Columns whose type no `types:`, `categories:` or `C()` gives: their type comes from the data."""
        return [n for n in self.names if n not in self.declared and n not in self.derived]

    def column_types(self) -> dict[str, dict[str, str]]:
        """Each column's type and where it comes from (for the manifest): declared, derived or inferred."""
        return {c.name: {"type": c.kind, "origin": self.origin(c.name)} for c in self.columns}

    def origin(self, name: str) -> str:
        """Where a column's type comes from: `declared` (types/categories/C()), `derived` or `inferred`."""
        if name in self.derived:
            return "derived"
        return "declared" if name in self.declared else "inferred"


def resolve_table_schema(
    dataset: DatasetConfig,
    file_columns: list[str],
    source: str,
    derived: Mapping[str, ColumnType] | None = None,
    inputs: Collection[str] = (),
    inferred: Mapping[str, ColumnType] | None = None,
) -> TableSchema:
    """Resolve the declared schema against the columns a file actually has; missing ones are errors.

    `derived` (the ingest stage's derived columns and their types) are columns too; `inputs` (file columns
    the expressions read) may have `types:` entries without being in the schema. A file column no
    `types:`/`categories:`/`C()` declares takes its type from `inferred` (float until inferred).
    """
    derived = dict(derived or {})
    file_columns = list(file_columns) + [n for n in derived if n not in file_columns]
    types = {**dataset.types, **derived}
    intercept = True
    polys: dict[str, int] = {}
    if dataset.formula:
        formula = parse_formula(dataset.formula)
        polys = dict(formula.polys)
        label_name: str | None = formula.response
        names = list(formula.terms)
        if formula.dot:
            names += [c for c in file_columns if c not in names and c != label_name]
        names = [n for n in names if n not in formula.removed]
        for name in formula.categorical:
            types[name] = "category"
        intercept = formula.intercept
    else:
        label_name = dataset.label
        names = list(dataset.features or [])
    for name in dataset.categories:
        types.setdefault(name, "category")
    wanted = names + ([label_name] if label_name else [])
    missing = [n for n in wanted if n not in file_columns]
    if missing:
        raise DataError(f"{source}: missing column(s) {missing}; the file has {file_columns}")
    if label_name in names:
        raise ConfigError(f"dataset {dataset.name!r}: label {label_name!r} is also listed as a feature")
    unknown_types = set(types) - set(wanted) - set(inputs) - set(derived)
    if unknown_types:
        raise ConfigError(f"dataset {dataset.name!r}: 'types' names columns not in the schema: {sorted(unknown_types)}")
    declared = frozenset(types) - set(derived)
    types = {**(inferred or {}), **types}
    features = tuple(Column(n, types.get(n, "float")) for n in names)
    label = Column(label_name, types.get(label_name, "float")) if label_name else None
    categories = {k: tuple(v) for k, v in dataset.categories.items()}
    _check_missing(dataset, features, label)
    polys = {name: k for name, k in polys.items() if name in names}
    missing_policies = dict(dataset.missing)
    return TableSchema(features, label, intercept, categories, declared, missing_policies, frozenset(derived), polys)


def _check_missing(dataset: DatasetConfig, features: tuple[Column, ...], label: Column | None) -> None:
    """Each missing-value policy names a schema column and fits its type (mean/median: numbers; the label: no
    imputing)."""
    kinds = {c.name: c.kind for c in features + ((label,) if label else ())}
    for name, policy in dataset.missing.items():
        key = f"dataset.missing.{name}"
        if name not in kinds:
            raise ConfigError(f"{key}: {name!r} is not a column of the schema {sorted(kinds)}")
        if isinstance(policy, str):
            continue
        if label is not None and name == label.name:
            raise ConfigError(f"{key}: the label is not imputed; use drop or quarantine")
        if policy.impute in ("mean", "median") and kinds[name] not in ("float", "int"):
            raise ConfigError(f"{key}: impute {policy.impute} needs a number column; {name!r} is {kinds[name]}")
