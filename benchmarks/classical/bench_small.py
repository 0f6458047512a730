"""Small data at in-process speed: the digits k-means stage on each engine beside scikit-learn, same run.

The k-means stage of conf/digits_classical.yaml (1,313 train rows x 64: the fit with n_clusters 10 and n_init 5,
an elbow over 8 values of k, silhouette on a sample) timed as the stage's own seconds in the run manifest:
  scikit-learn          sklearn.cluster.KMeans on the same train rows in one process (the reference)
  <engine>: on engine   engine.in_process_mb 0: every k-means pass is an engine job (the path before)
  <engine>: in process  the default: a split under engine.in_process_mb is gathered once and fitted here
with the ratio to scikit-learn, the limit the issue sets (2 x scikit-learn + 1 s), engine start-up seconds
and the peak RSS of the whole process tree.

    python -m benchmarks.classical.bench_small [--engines dask,spark] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.cluster import KMeans as SkKMeans
from sklearn.metrics import silhouette_score

from benchmarks.common import PeakRSS
from pipelines.classical.stage import model_blocks
from pipelines.config import load_config
from pipelines.engines import make_engine
from pipelines.ingest.handoff import training_data
from pipelines.pipeline import run_pipeline
from pipelines.protocol import StageContext

ROOT = Path(__file__).resolve().parents[2]
STAGE = "kmeans"


def _config(engine: str, in_process_mb: float, runs: Path) -> Any:
    """conf/digits_classical.yaml cut to ingest and the k-means stage (no plots: the work, not the drawing)."""
    overrides = [f"engine.kind={engine}", f"engine.in_process_mb={in_process_mb}", f"runs_dir={runs}"]
    config = load_config(ROOT / "conf" / "digits_classical.yaml", overrides)
    stages = [s for s in config.stages if s.output_name in ("ingest", STAGE)]
    stages[1] = stages[1].model_copy(update={"plots": False})
    return config.model_copy(update={"stages": stages})


def _stage_seconds(run_dir: Path) -> float:
    stages = json.loads((run_dir / "manifest.json").read_text())["stages"]
    return float(next(s["seconds"] for s in stages if s["name"] == STAGE))


def _sklearn_seconds(x: np.ndarray, stage: Any, sample: int) -> float:
    """The stage's work in scikit-learn: the fit, the elbow (n_init 1 per k), silhouette on the same sample size."""
    t0 = time.perf_counter()
    model = SkKMeans(n_clusters=stage.params["n_clusters"], n_init=stage.params["n_init"], random_state=0).fit(x)
    for k in stage.elbow:
        SkKMeans(n_clusters=k, n_init=1, random_state=0).fit(x)
    rows = np.random.default_rng(0).permutation(len(x))[:sample]
    silhouette_score(x[rows], model.predict(x[rows]))
    return time.perf_counter() - t0


def _line(who: str, seconds: float, base: float, start: float | None, peak: int) -> None:
    limit = 2 * base + 1.0
    verdict = "within" if seconds <= limit else "OVER"
    started = f"{start:8.1f}" if start is not None else " " * 8
    print(
        f"{who:22} {seconds:8.2f} {seconds / base:7.1f} {limit:8.2f} {verdict:>7} {started} {peak / 2**20:9.0f} MiB",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", default="dask,spark")
    parser.add_argument("--repeat", type=int, default=3, help="runs per path; the best is reported")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp)
        print(f"{'who':22} {'seconds':>8} {'ratio':>7} {'limit':>8} {'':>7} {'start s':>8} {'peak RSS':>13}")
        base: float | None = None
        for kind in args.engines.split(","):
            with PeakRSS() as mem:
                t0 = time.perf_counter()
                engine = make_engine(_config(kind, 0, runs).engine)
                engine.start()
                start = time.perf_counter() - t0
                try:
                    seconds: dict[float, float] = {}
                    for mb in (0.0, 64.0):
                        config = _config(kind, mb, runs)
                        best = []
                        for _ in range(args.repeat):
                            result = run_pipeline(config, engine=engine)
                            best.append(_stage_seconds(result.run.dir))
                        seconds[mb] = min(best)
                    if base is None:  # the reference on the same train rows the stage fitted
                        ctx = StageContext(engine, result.run, config, dict(result.results))
                        stage = config.stages[1]
                        with model_blocks(engine, training_data(ctx, "bench"), "train", stage) as train:
                            x = np.vstack(train.map(lambda block: block["x"]))
                        base = min(_sklearn_seconds(x, stage, stage.sample) for _ in range(args.repeat))
                        _line(f"scikit-learn ({len(x)} rows)", base, base, None, 0)
                finally:
                    engine.stop()
            _line(f"{kind}: on engine", seconds[0.0], base, start, mem.peak)
            _line(f"{kind}: in process", seconds[64.0], base, start, mem.peak)


if __name__ == "__main__":
    main()
