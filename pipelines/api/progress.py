"""Run progress where the API is called: a live table in a Jupyter cell, the terminal display elsewhere.

In a Jupyter kernel the stage, epoch (rank 0's lines) and dashboard records of the run's log update one
output in place through IPython's display handles (`display(..., display_id=True)`), so no widget library
is needed and nbconvert/nbclient keep the final state. Outside Jupyter the command line's `StageProgress`
prints (live on a terminal, plain lines otherwise). Records are read from the `pipelines` logger; what a run
logs stays in its logs/run.log either way.
"""

from __future__ import annotations

import contextlib
import html
import logging
import time
from collections.abc import Iterator
from typing import Any

from pipelines.console import StageProgress

THROTTLE = 0.5  # seconds between redraws for epoch lines (stage changes redraw at once)


def in_jupyter() -> bool:
    """Whether this process is a Jupyter kernel (IPython's ZMQ shell)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


class NotebookProgress(logging.Handler):
    """Stages of the runs in this cell as one HTML table updated in place; the latest progress line under it."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        from IPython.display import HTML, display

        self._html = HTML
        self.rows: dict[tuple[str, str], list[Any]] = {}  # (pipeline, stage) -> [status, started, seconds, note]
        self.links: list[str] = []
        self.lines: list[str] = []
        self.drawn = 0.0
        self.shown = display(HTML(self.render()), display_id=True)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if hasattr(record, "stage_event"):
                pipeline, stage, status, seconds = record.stage_event
                row = self.rows.setdefault((pipeline, stage), [status, time.monotonic(), None, ""])
                row[0], row[2] = status, seconds
                self.draw(force=True)
            elif dashboard := getattr(record, "dashboard", None):
                self.links.append(str(dashboard))
                self.draw(force=True)
            elif getattr(record, "progress", False):
                text = record.getMessage()
                running = [r for r in self.rows.values() if r[0] == "started"]
                if running:
                    running[-1][3] = text
                self.lines = (self.lines + [text])[-5:]
                self.draw()
        except Exception:  # a display problem never stops a run
            self.handleError(record)

    def render(self) -> str:
        cells = []
        for (pipeline, stage), (status, started, seconds, note) in self.rows.items():
            shown = "running" if status == "started" else status
            took = seconds if seconds is not None else time.monotonic() - started
            colour = {"succeeded": "green", "failed": "#c62828"}.get(shown, "#9a6700")
            cells.append(
                f"<tr><td>{html.escape(pipeline)}</td><td>{html.escape(stage)}</td>"
                f'<td style="color:{colour}">{html.escape(shown)}</td><td style="text-align:right">{took:.1f}s</td>'
                f'<td style="font-size:11px;color:#5d6677">{html.escape(note)}</td></tr>'
            )
        links = " · ".join(f'<a href="{html.escape(u)}" target="_blank">{html.escape(u)}</a>' for u in self.links)
        lines = "<br>".join(html.escape(t) for t in self.lines)
        return (
            '<div class="pipelines-progress"><table><thead><tr><th>pipeline</th><th>stage</th><th>status</th>'
            f"<th>time</th><th>progress</th></tr></thead><tbody>{''.join(cells)}</tbody></table>"
            + (f'<div style="font-size:12px">dashboard: {links}</div>' if links else "")
            + (f'<div style="font-size:11px;font-family:monospace;color:#5d6677">{lines}</div>' if lines else "")
            + "</div>"
        )

    def draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.drawn >= THROTTLE:
            self.drawn = now
            self.shown.update(self._html(self.render()))


@contextlib.contextmanager
def progress() -> Iterator[None]:
    """Show the progress of what runs inside: in the notebook cell, else on the terminal (unless shown already)."""
    root, ours = logging.getLogger(), logging.getLogger("pipelines")
    if any(isinstance(h, StageProgress | NotebookProgress) for h in root.handlers + ours.handlers):
        yield  # the command line (or an enclosing call) shows it already
        return
    handler: NotebookProgress | StageProgress = NotebookProgress() if in_jupyter() else StageProgress()
    level = ours.level
    if ours.getEffectiveLevel() > logging.INFO:
        ours.setLevel(logging.INFO)
    ours.addHandler(handler)
    try:
        yield
    finally:
        ours.removeHandler(handler)
        ours.setLevel(level)
        if isinstance(handler, NotebookProgress):
            handler.draw(force=True)
        else:
            handler.stop()
