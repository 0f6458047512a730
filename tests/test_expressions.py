"""`filter:` and `derive:` in the ingest stage: one SQL dialect (sqlglot-checked, DuckDB-evaluated) on both engines.

The battery runs each expression through the real ingest (plan_ingest, read_part in the engine's tasks) on Spark
and on Dask over the same rows, and compares both with an outside reference: plain Python/NumPy computing the
documented rules (docs/DATA.md): SQL three-valued logic, x / 0 is NULL, `/` is float division, `//` truncates,
NaN equals NaN and sorts above every number, text is stripped and empty text is NULL when it enters the table.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from pipelines.classical.persist import load_model
from pipelines.config import dump_config, parse_config
from pipelines.errors import ConfigError
from pipelines.ingest.config import DatasetConfig, SplitConfig
from pipelines.ingest.stage import IngestStage, plan_ingest, read_part, run_ingest
from pipelines.ingest.transform import partition_stats
from pipelines.ingest.validate import table_arrow_schema
from pipelines.pipeline import run_pipeline
from pipelines.plan import check_plan
from pipelines.predict import predict
from pipelines.runs import Run

NAN = float("nan")
ROWS = {
    "x": [1.5, -2.0, 0.0, None, NAN, 3.0, 10.0, -0.5],
    "y": [2.0, 0.0, 0.0, 1.0, 4.0, None, -3.0, 0.5],
    "i": [7, -7, 0, 3, None, 2, 5, 1],
    "s": ["héllo", "ÉCOLE", "straße", None, "abc", "日本語", "a%b", "x"],
    "b": [True, False, None, True, False, True, False, True],
}
TYPES = {"x": "float", "y": "float", "i": "int", "s": "str", "b": "bool"}


def _csv(path: Path) -> Path:
    def text(v):
        if v is None:
            return ""
        if isinstance(v, float) and math.isnan(v):
            return "nan"
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, float) and v.is_integer():
            return str(int(v)) if v else "0"
        return str(v)

    lines = [",".join(ROWS)] + [",".join(text(ROWS[c][r]) for c in ROWS) for r in range(8)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# --- the reference: the documented rules in plain Python ------------------------------------------------------
def null(*values):
    return any(v is None for v in values)


def key(v):
    """DuckDB's order of doubles: NaN above every number and equal to itself."""
    return (1, 0.0) if isinstance(v, float) and math.isnan(v) else (0, v)


def cmp(op):
    return lambda a, b: None if null(a, b) else op(key(a), key(b))


def and3(a, b):
    if a is False or b is False:
        return False
    return None if null(a, b) else True


def or3(a, b):
    if a is True or b is True:
        return True
    return None if null(a, b) else False


def not3(a):
    return None if a is None else not a


def arith(op):
    return lambda a, b: None if null(a, b) else op(a, b)


def div(a, b):
    return None if null(a, b) or b == 0 else a / b


def trunc_div(a, b):
    return None if null(a, b) or b == 0 else int(a / b)


def half_away(v):
    return v if math.isnan(v) else math.copysign(math.floor(abs(v) + 0.5), v)


def text_in(v):
    """How a text value enters the table: stripped, empty is NULL."""
    if v is None:
        return None
    v = v.strip()
    return v or None


gt, lt, ge, le, eq = (cmp(f) for f in (lambda a, b: a > b, lambda a, b: a < b, lambda a, b: a >= b,
                                        lambda a, b: a <= b, lambda a, b: a == b))  # fmt: skip
lift = lambda f: lambda *a: None if null(*a) else f(*a)  # noqa: E731
like_a = lift(lambda s: s.startswith("a"))
GREAT = lambda *v: max((x for x in v if x is not None), key=key, default=None)  # noqa: E731
LEAST = lambda *v: min((x for x in v if x is not None), key=key, default=None)  # noqa: E731

# expression -> (kind of the result, reference of one row r)
BATTERY = {
    "x + y": ("f", lambda r: arith(lambda a, b: a + b)(r["x"], r["y"])),
    "x - y": ("f", lambda r: arith(lambda a, b: a - b)(r["x"], r["y"])),
    "x * y": ("f", lambda r: arith(lambda a, b: a * b)(r["x"], r["y"])),
    "x / y": ("f", lambda r: div(r["x"], r["y"])),
    "i / 2": ("f", lambda r: div(r["i"], 2)),
    "i / 0": ("f", lambda r: None),
    "i // 2": ("i", lambda r: trunc_div(r["i"], 2)),
    "i // 0": ("i", lambda r: None),
    "i % 3": ("i", lambda r: None if r["i"] is None else int(math.fmod(r["i"], 3))),
    "x + i": ("f", lambda r: arith(lambda a, b: a + b)(r["x"], r["i"])),
    "i * 2": ("i", lambda r: arith(lambda a, b: a * b)(r["i"], 2)),
    "-x": ("f", lambda r: None if r["x"] is None else -r["x"]),
    "x > y": ("b", lambda r: gt(r["x"], r["y"])),
    "x = y": ("b", lambda r: eq(r["x"], r["y"])),
    "x <> 0": ("b", lambda r: not3(eq(r["x"], 0.0))),
    "x <= 1.5": ("b", lambda r: le(r["x"], 1.5)),
    "x >= 1 AND y < 3": ("b", lambda r: and3(ge(r["x"], 1.0), lt(r["y"], 3.0))),
    "x > 0 OR y > 0": ("b", lambda r: or3(gt(r["x"], 0.0), gt(r["y"], 0.0))),
    "NOT b": ("b", lambda r: not3(r["b"])),
    "b AND x > 0": ("b", lambda r: and3(r["b"], gt(r["x"], 0.0))),
    "i IN (0, 2, 7)": ("b", lambda r: None if r["i"] is None else r["i"] in (0, 2, 7)),
    "i NOT IN (1, NULL)": ("b", lambda r: None if r["i"] is None else (False if r["i"] == 1 else None)),
    "x BETWEEN 0 AND 3": ("b", lambda r: and3(ge(r["x"], 0.0), le(r["x"], 3.0))),
    "x IS NULL": ("b", lambda r: r["x"] is None),
    "s IS NOT NULL": ("b", lambda r: r["s"] is not None),
    "CASE WHEN x > 0 THEN 'pos' WHEN x < 0 THEN 'neg' ELSE 'other' END": (
        "s",
        lambda r: "pos" if gt(r["x"], 0.0) else "neg" if lt(r["x"], 0.0) else "other",
    ),
    "CAST(i AS DOUBLE)": ("f", lambda r: None if r["i"] is None else float(r["i"])),
    "CAST(y AS BIGINT)": ("i", lambda r: None if r["y"] is None else round(r["y"])),  # ties to even, as Python
    "CAST(i AS VARCHAR)": ("s", lambda r: None if r["i"] is None else str(r["i"])),
    "TRY_CAST(s AS DOUBLE)": ("f", lambda r: None),
    "COALESCE(x, y, 0)": ("f", lambda r: next((v for v in (r["x"], r["y"]) if v is not None), 0.0)),
    "NULLIF(i, 0)": ("i", lambda r: None if r["i"] in (None, 0) else r["i"]),
    "ln(abs(x) + 1)": ("f", lambda r: None if r["x"] is None else float(np.log(abs(r["x"]) + 1))),
    "exp(y)": ("f", lambda r: None if r["y"] is None else math.exp(r["y"])),
    "sqrt(abs(y))": ("f", lambda r: None if r["y"] is None else math.sqrt(abs(r["y"]))),
    "sqrt(y)": ("f", lambda r: None if r["y"] is None else float(np.sqrt(np.float64(r["y"])))),
    "ln(y)": ("f", lambda r: None if r["y"] is None else float(np.log(np.float64(r["y"])))),
    "abs(x)": ("f", lambda r: None if r["x"] is None else abs(r["x"])),
    "pow(y, 2)": ("f", lambda r: None if r["y"] is None else r["y"] ** 2),
    "pow(x, 0.5)": ("f", lambda r: None if r["x"] is None else float(np.power(np.float64(r["x"]), 0.5))),
    "floor(x)": ("f", lambda r: None if r["x"] is None else float(np.floor(r["x"]))),
    "ceil(y)": ("f", lambda r: None if r["y"] is None else float(np.ceil(r["y"]))),
    "round(x)": ("f", lambda r: None if r["x"] is None else half_away(r["x"])),
    "greatest(x, y)": ("f", lambda r: GREAT(r["x"], r["y"])),
    "least(x, y, 0)": ("f", lambda r: LEAST(r["x"], r["y"], 0.0)),
    "lower(s)": ("s", lambda r: None if r["s"] is None else r["s"].lower()),
    "upper(s)": ("s", lambda r: None if r["s"] is None else "".join("ẞ" if c == "ß" else c.upper() for c in r["s"])),
    "trim(concat('  ', s, ' '))": ("s", lambda r: (r["s"] or "").strip()),
    "substring(s, 2, 3)": ("s", lambda r: None if r["s"] is None else r["s"][1:4]),
    "length(s)": ("i", lambda r: None if r["s"] is None else len(r["s"])),
    "concat(s, '-', i)": ("s", lambda r: (r["s"] or "") + "-" + ("" if r["i"] is None else str(r["i"]))),
    "s || '!'": ("s", lambda r: None if r["s"] is None else r["s"] + "!"),
    "s LIKE 'a%'": ("b", lambda r: like_a(r["s"])),
    "s LIKE '%l%'": ("b", lambda r: None if r["s"] is None else "l" in r["s"]),
    "CASE WHEN b THEN x ELSE y END": ("f", lambda r: r["x"] if r["b"] is True else r["y"]),
    "x / y IS NULL": ("b", lambda r: div(r["x"], r["y"]) is None),
    "exp(x) > 1 AND NOT (s LIKE 'a%')": (
        "b",
        lambda r: and3(gt(None if r["x"] is None else math.exp(r["x"]), 1.0), not3(like_a(r["s"]))),
    ),  # fmt: skip
}


def _parse(kind: str, text):
    """A value as DuckDB wrote it (CAST ... AS VARCHAR) back to Python."""
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return None
    if kind == "f":
        return float(text)
    if kind == "i":
        return int(text)
    if kind == "b":
        return {"true": True, "false": False}[text]
    return text


def _same(kind, got, want) -> bool:
    if kind == "s":
        want = text_in(want)
    if got is None or want is None:
        return got is None and want is None
    if kind == "f":
        return (math.isnan(got) and math.isnan(want)) or got == pytest.approx(want, rel=1e-12, abs=1e-300)
    return got == want


NAMES = {f"e{k:02d}": expr for k, expr in enumerate(BATTERY)}


def _battery_frame(engine, tmp_path: Path) -> pd.DataFrame:
    """Every battery expression as a derived column (written as text), through the real ingest partitions."""
    path = _csv(tmp_path / "battery.csv")
    types = {**TYPES, **dict.fromkeys(NAMES, "str")}
    ds = DatasetConfig(name="battery", format="csv", path=str(path), features=list(NAMES), types=types)
    plan = plan_ingest(ds, 3, engine, derive=NAMES)
    split = SplitConfig()
    frame, _ = engine.persist_tasks(
        lambda part: read_part(plan, part, split),
        plan.parts,
        table_arrow_schema(plan.table),
        lambda pdf: partition_stats(pdf, plan.table),
    )
    try:
        return engine.to_pandas(frame).sort_values("_row", ignore_index=True)
    finally:
        engine.release(frame)


@pytest.fixture(scope="module")
def battery(dask_engine, spark_engine, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("battery")
    return {e.kind: _battery_frame(e, tmp) for e in (dask_engine, spark_engine)}


def test_battery_has_at_least_forty_expressions():
    assert len(BATTERY) >= 40


def test_battery_identical_on_spark_and_dask(battery):
    dask, spark = battery["dask"], battery["spark"]
    assert len(dask) == len(spark) == 8
    for name in NAMES:
        assert dask[name].tolist() == spark[name].tolist(), NAMES[name]


@pytest.mark.parametrize("name", sorted(NAMES))
def test_battery_matches_the_reference(battery, name):
    expr = NAMES[name]
    kind, reference = BATTERY[expr]
    for engine, frame in battery.items():
        for r in range(8):
            row = {c: ROWS[c][r] for c in ROWS}
            got, want = _parse(kind, frame[name][r]), reference(row)
            assert _same(kind, got, want), f"{engine}: {expr} on row {r} {row}: got {got!r}, want {want!r}"


# --- validation: one line naming the key --------------------------------------------------------------------
def _config(tmp_path: Path, stage: dict, formula: str = "deny ~ pi_rat + race") -> dict:
    path = tmp_path / "h.csv"
    path.write_text("s7,s13,s46,name\n3,3,20,a\n1,4,35,b\n")
    return {
        "name": "h",
        "runs_dir": str(tmp_path / "runs"),
        "dataset": {"name": "h", "format": "csv", "path": str(path), "formula": formula},
        "stages": [{"stage": "ingest", **stage}],
    }


GOOD = {"pi_rat": "s46 / 100", "race": "s13 IN (3, 4)", "deny": "s7 = 3"}


def _plan_problems(tmp_path, stage) -> list[str]:
    return [str(p) for p in check_plan(parse_config(_config(tmp_path, stage)))]


def test_valid_expressions_pass_validate(tmp_path):
    assert _plan_problems(tmp_path, {"filter": "s13 IN (3, 4, 5)", "derive": GOOD}) == []


def test_unknown_column_names_the_key(tmp_path):
    problems = _plan_problems(tmp_path, {"derive": {**GOOD, "pi_rat": "s99 / 100"}})
    assert problems == ["stages[0].derive.pi_rat: unknown column 's99'"]
    problems = _plan_problems(tmp_path, {"derive": GOOD, "filter": ["s13 > 0", "zz = 1"]})
    assert problems == ["stages[0].filter[1]: unknown column 'zz'"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("s46 / ", "syntax error"),
        ("foo(s46)", "unknown function 'foo'"),
        ("(SELECT 1)", "subqueries, tables and '*' are not allowed"),
        ("t.s46 + 1", "name columns without a table"),
        ("log(s46)", "write ln(x)"),
        ("s46 + 1; DROP TABLE t", "expected one expression"),
    ],
)
def test_bad_syntax_and_refused_nodes_are_config_errors_at_load(tmp_path, text, message):
    with pytest.raises(ConfigError) as err:
        parse_config(_config(tmp_path, {"derive": {**GOOD, "pi_rat": text}}))
    line = [ln for ln in str(err.value).splitlines() if "derive.pi_rat" in ln]
    assert len(line) == 1 and message in line[0]


def test_type_errors_name_the_key(tmp_path):
    problems = _plan_problems(tmp_path, {"derive": {**GOOD, "pi_rat": "lower(name) + 1"}})
    assert len(problems) == 1 and problems[0].startswith("stages[0].derive.pi_rat: type error:")
    assert "\n" not in problems[0]
    problems = _plan_problems(tmp_path, {"derive": GOOD, "filter": "s46 + 1"})
    assert problems == ["stages[0].filter: a filter must be true or false, this one gives int64"]  # s46: 20, 35


def test_run_checks_expressions_against_the_file(dask_engine, tmp_path):
    cfg = parse_config(_config(tmp_path, {"derive": {**GOOD, "race": "s14 = 1"}}))
    with pytest.raises(ConfigError, match=r"^derive\.race: unknown column 's14'$"):
        run_ingest(dask_engine, cfg.dataset, cfg.stages[0], 2)


# --- a run: counts reconcile, the derived columns fit the formula, predict applies the same steps -----------------
def hmda_like(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    s13 = rng.integers(1, 6, n)
    s46 = rng.normal(33, 10, n).round(1)
    p = 0.05 + 0.004 * (s46 - 33) + 0.12 * np.isin(s13, [3, 4])
    s7 = np.where(rng.random(n) < p, 3, 1)
    return pd.DataFrame({"s7": s7, "s13": s13, "s46": s46})


def test_filter_and_derive_run_reconcile_and_fit_like_statsmodels(engine, tmp_path):
    frame = hmda_like(600, 1)
    frame.loc[[4, 5, 6], "s13"] = [3, 4, 2]
    text = frame.to_csv(index=False).splitlines()
    text[5] = "3,3,oops"  # line 6: rejected while reading (s46 not a number)
    text[6] = "1,4,"  # line 7: s46 missing, so pi_rat is NULL in a model column: rejected
    text[7] = "1,2,"  # line 8: s46 missing, but race 2 is filtered out first: filtered, not rejected
    (tmp_path / "h.csv").write_text("\n".join(text) + "\n")
    stage = {
        "filter": "s13 IN (3, 4, 5)",
        "derive": {**GOOD, "t": "CAST(s13 AS VARCHAR) || 'x'"},
        "standardize": False,
        "split": {"test_fraction": 0.0},
    }
    conf = _config(tmp_path, stage)
    conf["dataset"]["types"] = {"s46": "float"}  # declared: "oops" is to be rejected, not to make s46 a category
    (tmp_path / "h.csv").write_text("\n".join(text) + "\n")
    conf["stages"].append({"stage": "model", "name": "lm", "model": "linear_regression"})
    conf["engine"] = {"kind": engine.kind, "partitions": 3}
    result = run_pipeline(parse_config(conf), engine=engine)
    ingest = result.run.stage_facts("ingest")
    dropped = int((~frame.drop(index=[4])["s13"].isin([3, 4, 5])).sum())
    assert ingest["read"] == 600
    assert (ingest["filtered"], ingest["rejected"]) == (dropped, 2)
    assert ingest["read"] == ingest["filtered"] + ingest["accepted"] + ingest["rejected"]
    assert ingest["filters"] == [{"key": "filter", "expression": "s13 IN (3, 4, 5)", "dropped": dropped}]
    assert ingest["derived"] == {"pi_rat": "float", "race": "bool", "deny": "bool", "t": "category"}
    quarantine = pd.read_csv(result.run.dir / "quarantine.csv")
    assert quarantine[["row", "column"]].values.tolist() == [[6, "s46"], [7, "pi_rat"]]
    kept = frame.drop(index=[4, 5])
    kept = kept[kept["s13"].isin([3, 4, 5])]
    assert ingest["accepted"] == len(kept)
    x = pd.DataFrame({"pi_rat": kept["s46"] / 100, "race": kept["s13"].isin([3, 4]).astype(float)})
    ref = sm.OLS((kept["s7"] == 3).astype(float).to_numpy(), sm.add_constant(x.to_numpy())).fit()
    model = load_model(result.run.dir / "models" / "lm")
    np.testing.assert_allclose(model.summary().coefficients.estimate, ref.params, rtol=1e-8)

    new = hmda_like(50, 2)
    new.loc[0, "s46"] = np.nan  # written as an empty field
    path = tmp_path / "new.csv"
    new.to_csv(path, index=False, na_rep="")
    summary = predict(result.run.dir, "lm", str(path), tmp_path / "out", engine=engine)
    keep = new["s13"].isin([3, 4, 5])
    assert summary["filtered"] == int((~keep).sum())
    assert summary["scored"] + summary["filtered"] + summary["rejected"] == 50
    scored = pd.concat(pd.read_parquet(p) for p in sorted((tmp_path / "out" / "predictions").glob("*.parquet")))
    rows = new[keep & new["s46"].notna()]
    assert sorted(scored["row"]) == sorted(rows.index + 2)  # CSV line numbers (the header is line 1)
    want = model.predict(np.column_stack([rows["s46"] / 100, rows["s13"].isin([3, 4])]).astype(float))
    got = scored.sort_values("row")["prediction"].to_numpy()
    np.testing.assert_allclose(got, want, rtol=1e-9)
    unlabelled = tmp_path / "unlabelled.csv"  # without s7 there is no `deny`: scored all the same
    new.drop(columns="s7").to_csv(unlabelled, index=False, na_rep="")
    again = predict(result.run.dir, "lm", str(unlabelled), tmp_path / "out2", engine=engine)
    assert (again["scored"], again["filtered"], again["labelled"]) == (summary["scored"], summary["filtered"], False)


def test_expression_error_on_a_row_goes_to_quarantine(dask_engine, tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("a,code\n1,12\n2,x7\n3,40\n4,\n")
    ds = DatasetConfig(name="c", format="csv", path=str(path), features=["n"], label="a", types={"code": "str"})
    stage = IngestStage(derive={"n": "CAST(code AS INTEGER) * 2"}, max_rejected_fraction=1.0)
    cfg_run = Run.create("c", str(tmp_path / "runs"), dump_config(_cfg(ds, stage, tmp_path)), {"kind": "dask"})
    result = run_ingest(dask_engine, ds, stage, 2, cfg_run)
    quarantine = pd.read_csv(cfg_run.dir / "quarantine.csv")
    assert (result.read, result.filtered, result.accepted, result.rejected) == (4, 0, 2, 2)
    assert quarantine["row"].tolist() == [3, 5]
    assert quarantine["column"].tolist() == ["n", "n"]
    assert "Could not convert string 'x7'" in quarantine["reason"][0] and quarantine["raw"][0] == "2,x7"
    assert quarantine["reason"][1] == "missing value"  # NULL code: CAST gives NULL, a model column then lacks it


def _cfg(ds, stage, tmp_path):
    from pipelines.config import PipelineConfig

    return PipelineConfig(name="c", dataset=ds, stages=[stage], runs_dir=str(tmp_path / "runs"))
