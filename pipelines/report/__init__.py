"""The run report: one self-contained HTML page (`report.html`) built from a run directory's files."""

from pipelines.report.build import REPORT, build_report, render_report
from pipelines.report.content import RunContent, read_run

__all__ = ["REPORT", "RunContent", "build_report", "read_run", "render_report"]
