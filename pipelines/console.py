"""What the terminal shows: stage progress while runs go, summary tables of finished runs, earlier runs."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import tempfile
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from pipelines.config import PipelineConfig
from pipelines.errors import INTERNAL, INTERRUPTED, PipelineError
from pipelines.ingest.stage import IngestResult
from pipelines.pipeline import PipelineResult
from pipelines.runs.history import RunRecord, compare_runs, same_splits

console = Console(stderr=True)

INGEST_COLUMNS: tuple[str, ...] = ("pipeline", "engine", "read", "accepted", "rejected", "partitions", "rows/partition")
INGEST_COLUMNS += ("train", "val", "test", "seconds", "run")
MODEL_COLUMNS: tuple[str, ...] = ("pipeline", "engine", "stage", "model", "train rows", "fit s")
MODEL_COLUMNS += ("metrics (train_: fit, test_: held out)", "files")


def ingest_table(rows: Sequence[tuple[PipelineConfig, PipelineResult]]) -> Table:
    """One line per (pipeline, engine) ingest: counts, partitions, split sizes, time, run directory."""
    table = Table(title="ingest summary", header_style="bold")
    for name in INGEST_COLUMNS:
        table.add_column(name, justify="left" if name in ("pipeline", "engine", "run") else "right")
    for config, out in rows:
        for stage in config.stages:
            result = out.results.get(stage.output_name)
            if not isinstance(result, IngestResult):
                continue
            entry = out.run.stage_facts(stage.output_name) or {}
            sizes = result.partition_rows or [0]
            table.add_row(
                config.name,
                result.engine,
                f"{result.read:,}",
                f"{result.accepted:,}",
                f"{result.rejected:,}",
                str(len(result.partition_rows)),
                f"{min(sizes):,}-{max(sizes):,}",
                *(f"{result.splits[s]:,}" for s in ("train", "val", "test")),
                f"{entry.get('seconds', 0.0):.1f}",
                os.path.relpath(out.run.dir),
            )
    return table


def _metric_text(facts: dict[str, Any]) -> str:
    shown = {k: v for k, v in facts.items() if k not in ("model", "train_rows", "fit_seconds", "placement")}
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items())


def model_table(rows: Sequence[tuple[PipelineConfig, PipelineResult]]) -> Table:
    """One line per fitted model or network: rows, fit time, headline metrics, where its files are."""
    table = Table(title="model summary", header_style="bold")
    for name in MODEL_COLUMNS:
        table.add_column(name, justify="right" if name in ("train rows", "fit s") else "left")
    for config, out in rows:
        for stage in config.stages:
            result = out.results.get(stage.output_name)
            if result is None or isinstance(result, IngestResult):
                continue
            facts = result.facts()
            folder = out.run.dir / stage.output_dir / stage.output_name
            table.add_row(
                config.name,
                out.run.manifest["engine"]["kind"],
                stage.output_name,
                str(facts.get("model", "")),
                f"{facts.get('train_rows', 0):,}",
                f"{facts.get('fit_seconds', 0):.2f}",
                _metric_text(facts),
                os.path.relpath(folder),
            )
    return table


def print_wide(*tables: Table) -> None:
    """Print tables on stdout, wide enough not to wrap."""
    wide = Console(width=max(Console().width, 150))
    for table in tables:
        wide.print(table)


def print_summaries(rows: Sequence[tuple[PipelineConfig, PipelineResult]]) -> None:
    """Print the ingest and model tables of finished runs (wide enough not to wrap)."""
    wide = Console(width=max(Console().width, 150))
    if any(isinstance(r, IngestResult) for _, out in rows for r in out.results.values()):
        wide.print(ingest_table(rows))
    if any(not isinstance(r, IngestResult) for _, out in rows for r in out.results.values()):
        wide.print(model_table(rows))


class StageProgress(logging.Handler):
    """Stage progress from the run's log records: a live display on a terminal, plain lines elsewhere (CI, logs).

    It reads `stage_event` (pipeline, stage, status, seconds), `progress` (an engine or rank 0's progress line)
    and `dashboard` (the Spark UI or Dask dashboard address) from records; other records are not its business.
    """

    def __init__(self, out: Console | None = None) -> None:
        super().__init__(logging.INFO)
        self.out = out or console
        self.live = self.out.is_terminal
        self.progress: Progress | None = None
        self.tasks: dict[tuple[str, str], TaskID] = {}
        self.current: tuple[str, str] | None = None

    def _bar(self) -> Progress:
        if self.progress is None:
            columns = (SpinnerColumn(finished_text="[green]✓[/]"), TextColumn("{task.description}"))
            self.progress = Progress(*columns, TimeElapsedColumn(), console=self.out)
            self.progress.start()
        return self.progress

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if hasattr(record, "stage_event"):
                self._stage(*record.stage_event)
            elif dashboard := getattr(record, "dashboard", None):
                self._line(f"dashboard: {dashboard}")
            elif getattr(record, "progress", False):
                self._note(record.getMessage())
        except Exception:  # a display problem never stops a run
            self.handleError(record)

    def _stage(self, pipeline: str, stage: str, status: str, seconds: float | None) -> None:
        key = (pipeline, stage)
        if status == "started":
            self.current = key
            if self.live:
                self.tasks[key] = self._bar().add_task(f"{pipeline}: {stage}", total=1)
            else:
                self._line(f"{pipeline}: stage {stage} started")
            return
        self.current = None
        if self.live and key in self.tasks:
            mark = "" if status == "succeeded" else f" [red]{status}[/]"
            bar = self._bar()
            bar.update(self.tasks.pop(key), description=f"{pipeline}: {stage}{mark}", completed=1)
        elif not self.live:
            self._line(f"{pipeline}: stage {stage} {status} in {seconds or 0:.1f}s")

    def _note(self, text: str) -> None:
        if self.live and self.current in self.tasks:
            pipeline, stage = self.current
            self._bar().update(self.tasks[self.current], description=f"{pipeline}: {stage} [dim]{text}[/]")
        else:
            self._line(text)

    def _line(self, text: str) -> None:
        if self.progress is not None:
            self.progress.console.print(Text(text, style="dim"))
        else:
            self.out.print(Text(text), highlight=False)

    def stop(self) -> None:
        """End the live display (before tables or errors are printed)."""
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        self.tasks.clear()


def _seconds_text(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{seconds:.1f}s"


def _value_text(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


STATUS_STYLE = {"succeeded": "green", "failed": "red", "running": "yellow", "interrupted": "yellow"}


def runs_table(records: Sequence[RunRecord], metrics: int = 4) -> Table:
    """Earlier runs, newest first: pipeline, id, status, start, duration, engine, headline train/test metrics."""
    table = Table(title="runs", header_style="bold")
    for name in ("pipeline", "run", "status", "started", "duration", "engine", "metrics"):
        table.add_column(name, justify="right" if name == "duration" else "left")
    for record in records:
        status = str(record.manifest.get("status", "?"))
        shown = list(record.headline().items())
        text = ", ".join(f"{k}={_value_text(v)}" for k, v in shown[:metrics])
        table.add_row(
            str(record.manifest.get("pipeline", record.dir.parent.name)),
            record.id,
            Text(status, style=STATUS_STYLE.get(status, "")),
            str(record.manifest.get("started", "")).replace("T", " ").replace("+00:00", "Z"),
            _seconds_text(record.seconds),
            record.engine,
            text + (f" (+{len(shown) - metrics})" if len(shown) > metrics else ""),
        )
    return table


def compare_tables(a: RunRecord, b: RunRecord) -> list[Table]:
    """Config and metric differences of two runs, side by side (a metric's change as b - a)."""
    configs, metrics = compare_runs(a, b)
    config_table = Table(title=f"config: {a.id} vs {b.id}", header_style="bold")
    for name in ("key", a.id, b.id):
        config_table.add_column(name)
    for key, left, right in configs:
        config_table.add_row(key, _value_text(left), _value_text(right))
    metric_table = Table(title=f"metrics: {a.id} vs {b.id}", header_style="bold")
    for name, justify in (("key", "left"), (a.id, "right"), (b.id, "right"), ("change", "right")):
        metric_table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for key, left, right in metrics:
        numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (left, right))
        change = f"{right - left:+.4g}" if numbers else ""
        metric_table.add_row(key, _value_text(left), _value_text(right), change)
    if not configs:
        config_table.add_row("(same config)", "", "")
    if not metrics:
        metric_table.add_row("(same metrics)", "", "", "")
    for stage in same_splits(a, b):  # Spark's part file names differ between runs; the content digests do not
        metric_table.add_row(f"{stage}.splits_digest", "same", "same", "")
    return [config_table, metric_table]


class RunLogs(logging.Handler):
    """Library and engine records (not under `pipelines`) also go to the open run's log; it remembers that log.

    A run attaches its logs/run.log to the `pipelines` logger while it goes on; this handler, on the root
    logger, forwards other loggers' records there (Python warnings included) and notes the file, so an error
    that ends the command can put its traceback in the log of the run it ended.
    """

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.last: Path | None = None

    def emit(self, record: logging.LogRecord) -> None:
        files = [h for h in logging.getLogger("pipelines").handlers if isinstance(h, logging.FileHandler)]
        if files:
            self.last = Path(files[-1].baseFilename)
        if not record.name.startswith("pipelines"):
            for handler in files:
                if record.levelno >= handler.level:
                    handler.handle(record)


def _on_terminal(verbose: bool) -> logging.Filter:
    """Which records the terminal shows: our warnings and errors; with -v also INFO and engine warnings."""

    def keep(record: logging.LogRecord) -> bool:
        if getattr(record, "stage_event", None) or getattr(record, "progress", False):
            return verbose  # the progress display shows these
        ours = record.name == "pipelines" or record.name.startswith("pipelines.")
        if verbose:
            return ours or record.levelno >= logging.WARNING
        return ours and record.levelno >= logging.WARNING

    return keep  # type: ignore[return-value]


class Terminal:
    """The command's logging: terminal handler, stage progress, run-log forwarding; and how it reports errors."""

    def __init__(self, verbose: bool = False) -> None:
        self.verbose = verbose
        handler = RichHandler(console=console, show_path=False, show_time=verbose, markup=False)
        handler.addFilter(_on_terminal(verbose))
        self.run_logs = RunLogs()
        self.progress = StageProgress()
        logging.basicConfig(
            level=logging.WARNING, handlers=[handler, self.run_logs, self.progress], format="%(message)s", force=True
        )
        logging.captureWarnings(True)  # library warnings: into the run log, on the terminal only with -v
        logging.getLogger("pipelines").setLevel(logging.DEBUG if verbose else logging.INFO)
        for noisy in ("py4j", "tensorflow", "absl"):
            logging.getLogger(noisy).setLevel(logging.ERROR)

    def close(self) -> None:
        """End the progress display."""
        self.progress.stop()

    def log_file(self) -> Path:
        """Where a traceback goes: the log of the run that just ended, else a file in the temp folder."""
        if self.run_logs.last is not None and self.run_logs.last.exists():
            return self.run_logs.last
        stamp = dt.datetime.now().strftime("%Y%m%dT%H%M%S")
        return Path(tempfile.gettempdir()) / f"pipelines-error-{stamp}-{os.getpid()}.log"

    def fail(self, exc: BaseException) -> int:
        """Report an error that ends the command as one line (its traceback to the log); the exit code by kind."""
        self.close()
        if isinstance(exc, KeyboardInterrupt):
            console.print("[red]interrupted[/]")
            return INTERRUPTED
        path = self.log_file()
        text = f"{dt.datetime.now().isoformat(timespec='seconds')} command failed:\n"
        text += "".join(traceback.format_exception(exc))
        try:
            with open(path, "a", encoding="utf-8") as out:
                out.write(text)
        except OSError:  # the run's disk is full: the temp folder instead
            self.run_logs.last = None
            path = self.log_file()
            with contextlib.suppress(OSError), open(path, "a", encoding="utf-8") as out:
                out.write(text)
        where = os.path.relpath(path) if not os.path.relpath(path).startswith("..") else str(path)
        if isinstance(exc, PipelineError):
            line = error_line(str(exc))
            console.print(Text.assemble((f"{exc.kind}: ", "bold red"), line), soft_wrap=True)
            return exc.exit_code
        text = str(exc).strip()
        first = text.splitlines()[0][:300] if text else ""
        console.print(
            Text.assemble(("internal error: ", "bold red"), f"{type(exc).__name__}: {first} (traceback in {where})"),
            soft_wrap=True,
        )
        return INTERNAL


def error_line(message: str) -> str:
    """A message as one line: a header with one `- item` under it joined to it; further detail lines indented."""
    lines = [line for line in message.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    if len(lines) == 2 and lines[1].lstrip().startswith("- "):
        return f"{lines[0].rstrip()} {lines[1].strip()[2:]}"
    return "\n".join([lines[0], *(f"  {line.strip()}" for line in lines[1:])])


def end_progress() -> None:
    """Stop the live stage display (before tables are printed)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, StageProgress):
            handler.stop()
