"""What RFC 4180 reading costs: a spreadsheet-style CSV (a quoted free-text column, some fields spanning lines).

In one process run, on one Dask LocalCluster, it times:
- our whole ingest read of the file (quote-aware parallel index, then validated partitions), plain and gzipped;
- the same read of the file with the text column left out of the quotes (no field spans lines);
- pandas.read_csv of the same file, as the baseline (one core; it is the reference for the parsed values).
Prints seconds, rows/s, each time's ratio to pandas, and the peak RSS of the process tree.

    python -m benchmarks.ingest.bench_csv_dialects --rows 1000000
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.common import measure
from pipelines.engines.config import DaskSettings
from pipelines.engines.dask_engine import DaskEngine
from pipelines.ingest.config import DatasetConfig
from pipelines.ingest.stage import IngestStage, plan_ingest, read_part


def write_csv(path: Path, rows: int, multiline: float, seed: int = 0) -> None:
    """Numbers and a quoted note; a `multiline` fraction of the notes hold line breaks and doubled quotes."""
    rng = np.random.default_rng(seed)
    notes = np.where(rng.random(rows) < multiline, 'first line\nsecond "quoted" line, with a comma', "a short note")
    frame = pd.DataFrame({f"x{i}": rng.normal(size=rows) for i in range(8)})
    frame["note"] = notes
    frame["y"] = rng.integers(0, 2, rows)
    frame.to_csv(path, index=False)


def ingest_read(engine: DaskEngine, path: Path, partitions: int) -> int:
    """Rows our ingest reads and validates from the file (index, partitions, checks; nothing written)."""
    dataset = DatasetConfig(
        name="bench",
        format="csv",
        path=str(path),
        features=[f"x{i}" for i in range(8)] + ["note"],
        label="y",
        types={"note": "str", "y": "int"},
    )
    plan = plan_ingest(dataset, partitions, engine)
    split = IngestStage().split
    sizes = engine.run_tasks(lambda part: len(read_part(plan, part, split)), plan.parts)
    return sum(sizes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--multiline", type=float, default=0.01, help="fraction of notes that span lines")
    parser.add_argument("--partitions", type=int, default=8)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench-csv-"))
    quoted, flat = root / "quoted.csv", root / "flat.csv"
    write_csv(quoted, args.rows, args.multiline)
    write_csv(flat, args.rows, 0.0)
    packed = root / "quoted.csv.gz"
    with open(quoted, "rb") as src, gzip.open(packed, "wb", compresslevel=1) as dst:
        shutil.copyfileobj(src, dst)
    size_mb = quoted.stat().st_size / 1e6
    spans = f"{args.multiline:.1%} of notes span lines"
    print(f"{args.rows:,} rows, {size_mb:.0f} MB, {spans}; {args.partitions} partitions")

    engine = DaskEngine(DaskSettings(n_workers=2, threads_per_worker=1))
    engine.start()
    try:
        ingest_read(engine, flat, args.partitions)  # warm the workers
        base_s, base_rows, base_mem = measure(lambda: len(pd.read_csv(quoted)))
        print(
            f"{'pandas.read_csv (baseline)':34s} {base_s:7.2f} s {base_rows / base_s:12,.0f} rows/s  1.00x  "
            f"peak {base_mem / 2**20:,.0f} MiB"
        )
        for label, path in (
            ("ours, multi-line quoted fields", quoted),
            ("ours, no field spans lines", flat),
            ("ours, gzipped (one segment)", packed),
        ):
            seconds, rows, peak = measure(lambda path=path: ingest_read(engine, path, args.partitions))
            assert rows == args.rows, (label, rows)
            print(
                f"{label:34s} {seconds:7.2f} s {rows / seconds:12,.0f} rows/s  {seconds / base_s:.2f}x  "
                f"peak {peak / 2**20:,.0f} MiB"
            )
    finally:
        engine.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
