"""What a run directory holds, read into plain values for the report page (files only, no stage imports)."""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.runs.history import RunRecord
from pipelines.runs.layout import Folder

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
INLINE_LIST = 12  # lists of scalars up to this length are shown inline, longer ones by their length
LOG_TAIL = 40  # lines of logs/run.log shown at the end of the page
TABLE_TITLES = {"placement": "rank placement (where each rank ran)", "history": "history (per epoch)"}
ENTRY_KEYS = ("name", "status", "started", "finished", "seconds", "error")  # manifest entry keys with own columns
SKIPPED_METRICS = ("plots",)  # shown as figures, not as values


@dataclass
class Table:
    """A titled table of formatted cells."""

    title: str
    columns: list[str]
    rows: list[list[str]]


@dataclass
class Figure:
    """A PNG the run wrote, by its path relative to the run directory, as a data URI."""

    path: str
    data_uri: str


@dataclass
class StageContent:
    """One stage: its newest manifest entry, its metrics (values and tables), summaries and figures."""

    name: str
    status: str
    entry: dict[str, Any]
    values: list[tuple[str, str]] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    summaries: list[tuple[str, str]] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)


@dataclass
class RunContent:
    """Everything the report shows about one run."""

    dir: Path
    manifest: dict[str, Any]
    config_yaml: str
    entries: list[dict[str, Any]]
    stages: list[StageContent]
    engine: list[tuple[str, str]]
    job: list[tuple[str, str]]
    other_figures: list[Figure]
    log_tail: str
    quarantine: dict[str, Any] | None

    @property
    def failed_stage(self) -> StageContent | None:
        """The stage that failed, if any."""
        return next((s for s in self.stages if s.status == "failed"), None)


def fmt(value: Any) -> str:
    """One cell: ints with thousands separators, floats to 6 significant digits, lists by length when long."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return str(value) if math.isnan(value) or math.isinf(value) else f"{value:.6g}"
    if isinstance(value, list):
        if any(isinstance(v, list | dict) for v in value):
            inner = len(value[0]) if value and isinstance(value[0], list) else None
            return f"{len(value)}×{inner} values" if inner is not None else f"{len(value)} items"
        if len(value) > INLINE_LIST:
            return f"{len(value)} values"
        return ", ".join(fmt(v) for v in value) or "(none)"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def clock(stamp: str | None) -> str:
    """The time of day of a manifest time stamp ('2026-01-02T03:04:05+00:00' -> '03:04:05')."""
    return stamp[11:19] if stamp and len(stamp) >= 19 and stamp[10] == "T" else fmt(stamp)


def short_facts(entry: dict[str, Any]) -> list[tuple[str, str]]:
    """A manifest entry's scalar facts (counts, model, metrics) for the stages table; lists and dicts left out."""
    out = [(k, fmt(v)) for k, v in entry.items() if k not in ENTRY_KEYS and _is_scalar(v) and v is not None]
    if entry.get("imputed_cells"):  # ingest: imputed cells per column (missing-value policies)
        out.append(("imputed cells", ", ".join(f"{k} {fmt(v)}" for k, v in entry["imputed_cells"].items())))
    return out


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _columnar(value: dict[str, Any]) -> bool:
    """A dict of equal-length lists of scalars (a table by columns, e.g. regression coefficients)."""
    lists = list(value.values())
    return (
        len(lists) > 1
        and all(isinstance(v, list) and v and all(_is_scalar(x) for x in v) for v in lists)
        and len({len(v) for v in lists}) == 1
    )


def flatten(values: dict[str, Any], prefix: str = "") -> tuple[list[tuple[str, str]], list[Table]]:
    """Scalar leaves as (dotted key, cell); lists of records and dicts of equal-length lists as tables."""
    rows: list[tuple[str, str]] = []
    tables: list[Table] = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and _columnar(value):
            columns = sorted(value, key=lambda c: (c != "term", c))  # a `term` column names the rows
            rows_of = zip(*(value[c] for c in columns), strict=True)
            tables.append(Table(path, columns, [[fmt(v) for v in row] for row in rows_of]))
        elif isinstance(value, dict):
            inner_rows, inner_tables = flatten(value, path + ".")
            rows += inner_rows
            tables += inner_tables
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            columns = list(dict.fromkeys(k for v in value for k in v))
            title = TABLE_TITLES.get(key, path)
            tables.append(Table(title, columns, [[fmt(v.get(c)) for c in columns] for v in value]))
        else:
            rows.append((path, fmt(value)))
    return rows, tables


def _figure(run_dir: Path, path: Path) -> Figure | None:
    data = path.read_bytes()
    if not data.startswith(PNG_SIGNATURE):
        return None
    uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    return Figure(path.relative_to(run_dir).as_posix(), uri)


def figures(run_dir: Path) -> list[Figure]:
    """Every PNG in the run directory (temp and hidden folders left out), sorted by path."""
    found = []
    for path in sorted(run_dir.rglob("*.png")):
        if any(part.startswith(".") for part in path.relative_to(run_dir).parts):
            continue
        figure = _figure(run_dir, path)
        if figure is not None:
            found.append(figure)
    return found


def _owner(figure: Figure, names: set[str]) -> str | None:
    """The stage a file belongs to: the first folder below the top one named like a stage (plots/<stage>/...)."""
    parts = figure.path.split("/")[1:-1]
    return next((p for p in parts if p in names), None)


def _summaries(run_dir: Path, name: str) -> list[tuple[str, str]]:
    """The text summaries a stage wrote next to its model (models/<stage>/summary*.txt)."""
    found = sorted(Folder.MODELS.under(run_dir, name).glob("summary*.txt"))
    return [(p.relative_to(run_dir).as_posix(), p.read_text()) for p in found]


def _log_tail(run_dir: Path) -> str:
    path = run_dir / "logs" / "run.log"
    if not path.is_file():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-LOG_TAIL:])


def read_run(run_dir: str | Path) -> RunContent:
    """Read a run directory's config, manifest, metrics, summaries, figures and log tail."""
    record = RunRecord.read(Path(run_dir).resolve())
    directory, manifest, metrics = record.dir, record.manifest, record.metrics
    config = directory / "config.yaml"
    entries = manifest.get("stages", [])
    newest = {e["name"]: e for e in entries}  # the last entry of a name wins (earlier ones were superseded)
    names = list(newest) + [n for n in metrics if n not in newest]
    stages = []
    for name in names:
        entry = newest.get(name, {"name": name, "status": "restored"})
        shown = {k: v for k, v in metrics.get(name, {}).items() if k not in SKIPPED_METRICS}
        if not shown:
            shown = {k: v for k, v in entry.items() if k not in ENTRY_KEYS}
        values, tables = flatten(shown)
        stages.append(StageContent(name, entry.get("status", "?"), entry, values, tables, _summaries(directory, name)))
    by_name = {s.name: s for s in stages}
    others: list[Figure] = []
    for figure in figures(directory):
        owner = _owner(figure, set(by_name))
        (by_name[owner].figures if owner else others).append(figure)
    engine, _ = flatten(manifest.get("engine", {}))
    job, _ = flatten(manifest.get("job") or {})
    quarantine = manifest.get("quarantine")
    if quarantine and not (directory / quarantine.get("file", "")).is_file():
        quarantine = None
    return RunContent(
        dir=directory,
        manifest=manifest,
        config_yaml=config.read_text() if config.is_file() else "",
        entries=entries,
        stages=stages,
        engine=engine,
        job=job,
        other_figures=others,
        log_tail=_log_tail(directory),
        quarantine=quarantine,
    )
