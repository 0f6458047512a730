"""Render a run's report page from its files and write it atomically as <run>/report.html."""

from __future__ import annotations

from pathlib import Path

import jinja2

from pipelines.atomic import atomic_write_text
from pipelines.report.content import RunContent, clock, fmt, read_run, short_facts

REPORT = "report.html"

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("pipelines.report", "templates"),
    autoescape=True,
    trim_blocks=True,
    lstrip_blocks=True,
)
_ENV.filters["fmt"] = fmt
_ENV.filters["facts"] = short_facts
_ENV.filters["clock"] = clock


def render_report(content: RunContent) -> str:
    """The report page of a run as one self-contained HTML document (inline CSS, images as data URIs)."""
    return _ENV.get_template("report.html.j2").render(run=content, m=content.manifest)


def build_report(run_dir: str | Path) -> Path:
    """Read a run directory and write its report.html atomically; returns the report's path."""
    content = read_run(run_dir)
    return atomic_write_text(content.dir / REPORT, render_report(content))
