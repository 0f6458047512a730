"""Scheduled runs (`pipelines schedule`): one cron line per pipeline, in the user's crontab, SLURM's scrontab,
or a crontab file (for a system cron.d, a site tool, or tests that must not touch the user's table).

The line runs `pipelines run CONF --wait --resume`: the run lock (pipelines/runs/lock.py) keeps runs of one
pipeline from overlapping, and a failed run is continued by the next one.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from pipelines.atomic import atomic_write_text
from pipelines.errors import ConfigError, EnvironmentProblem

CRON_FIELD = re.compile(r"^[0-9*/,\-A-Za-z]+$")
MARK = "# pipelines:"


def cron_line(schedule: str, config: Path, workdir: Path, log_file: Path, python: str | None = None) -> str:
    """One crontab line running the pipeline (quoted), waiting for an earlier run, resuming a failed one.

    The line ends with `# pipelines:<config file name>`, the tag `install` replaces it by.
    """
    fields = schedule.split()
    if len(fields) != 5 or not all(CRON_FIELD.match(f) for f in fields):
        raise ConfigError(f"schedule {schedule!r}: expected five cron fields such as '0 2 * * *'")
    py = shlex.quote(python or sys.executable)
    cmd = (
        f"cd {shlex.quote(str(workdir))} && {py} -m pipelines run {shlex.quote(str(config))} --wait --resume "
        f">> {shlex.quote(str(log_file))} 2>&1 {MARK}{config.name}"
    )
    cmd = cmd.replace("%", "\\%")  # cron turns a bare % into a newline (in the tag too)
    return f"{' '.join(fields)} {cmd}"


def merge(table: str, line: str, directives: list[str] | None = None) -> str:
    """The table with this pipeline's earlier line (and the #SCRON lines just above it) replaced by `line`."""
    tag = MARK + line.rsplit(MARK, 1)[1]
    kept: list[str] = []
    for entry in table.splitlines():
        if entry.endswith(tag):
            while kept and kept[-1].startswith("#SCRON"):
                kept.pop()
            continue
        kept.append(entry)
    block = [f"#SCRON {d}" for d in directives or []]
    return "\n".join([*kept, *block, line]) + "\n"


def install(
    line: str, scrontab: bool = False, directives: list[str] | None = None, crontab_file: Path | None = None
) -> str:
    """Add (or replace) this pipeline's line; returns the new table.

    In `crontab_file` when given (created if missing; nothing else is touched), else in the user's crontab,
    or SLURM's scrontab with `scrontab` (`directives` become `#SCRON` lines above the entry).
    """
    block = directives if scrontab else None
    if crontab_file is not None:
        path = Path(crontab_file)
        table = merge(path.read_text() if path.exists() else "", line, block)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, table)
        return table
    tool = "scrontab" if scrontab else "crontab"
    if shutil.which(tool) is None:
        raise EnvironmentProblem(f"{tool} not found; print the entry with --dry-run and install it by hand")
    current = subprocess.run([tool, "-l"], capture_output=True, text=True)
    table = merge(current.stdout if current.returncode == 0 else "", line, block)
    subprocess.run([tool, "-"] if not scrontab else [tool, "/dev/stdin"], input=table, text=True, check=True)
    return table
