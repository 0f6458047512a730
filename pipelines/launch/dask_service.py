"""A dask-jobqueue cluster as a long-lived service beside a notebook: `python -m pipelines.launch.dask_service
SETTINGS SCHEDULER_FILE`.

It starts the cluster from `engine.dask.jobqueue` settings (a JSON file validated with the same model), scales
it, writes the scheduler file (Dask's own format: `address`, plus the dashboard's `port`) atomically, and keeps
the cluster until it is told to stop (SIGTERM, SIGINT: the notebook job ending); closing the cluster cancels its
worker jobs.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path
from urllib.parse import urlparse

from pipelines.atomic import atomic_write_json
from pipelines.launch.config import JobqueueSettings
from pipelines.launch.jobqueue import make_cluster, scale

log = logging.getLogger(__name__)


def serve(settings: JobqueueSettings, scheduler_file: Path, stop: threading.Event) -> None:
    """Start and scale the cluster, publish its scheduler file, and hold it until `stop` is set."""
    cluster = make_cluster(settings)
    try:
        scale(cluster, settings)
        link = cluster.dashboard_link or ""
        port = urlparse(link).port if link else None
        atomic_write_json(scheduler_file, {"address": cluster.scheduler_address, "dashboard_port": port})
        log.info("dask-jobqueue cluster at %s, dashboard %s", cluster.scheduler_address, link or "(none)")
        stop.wait()
    finally:
        cluster.close()


def main(argv: list[str] | None = None) -> int:
    """Entry point: SETTINGS (JSON of engine.dask.jobqueue) and the scheduler file to write."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m pipelines.launch.dask_service SETTINGS.json SCHEDULER_FILE", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = JobqueueSettings.model_validate_json(Path(args[0]).read_text())
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    serve(settings, Path(args[1]), stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
