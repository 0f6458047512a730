"""Image-folder ingest (decode + resize + shard) on both engines against Keras' `image_dataset_from_directory`.

In one process run, on one folder of small JPEGs cut from scikit-learn's sample photographs (written to a
temporary folder first; nothing downloaded):
  ours    `format: images` ingest (Pillow decode and bilinear resize on the engine's workers, seeded split,
          checksummed Parquet splits) plus the deep stage's tensor shards, on Dask and on Spark;
  keras   `keras.utils.image_dataset_from_directory(folder, image_size=..., shuffle=False)` read to the end
          (TensorFlow's decoder and bilinear resize into float32 batches: no split files, no shards);
each timed after an untimed warm-up on a small folder: images/s, images/s per core (ours: the engine's
worker cores; Keras: the cores TensorFlow may use), the ratio ours/keras per core, and the peak RSS of the
whole process tree.

    python -m benchmarks.deep.bench_image_folder [--images 3000] [--size 64]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from benchmarks.common import measure
from pipelines.config import PipelineConfig
from pipelines.data.patches import PATCH_CLASSES, write_patch_folder
from pipelines.deep.stage import DeepStage, hand_off
from pipelines.engines import make_engine
from pipelines.engines.config import EngineConfig
from pipelines.pipeline import run_pipeline


def ours(engine, folder: Path, size: int, runs: Path) -> int:
    """Ingest the folder and cut the tensor shards; the number of shard rows."""
    config = PipelineConfig.model_validate(
        {
            "name": "bench-images",
            "runs_dir": str(runs),
            "engine": {"kind": engine.kind, "partitions": 8},
            "dataset": {
                "name": "patches",
                "format": "images",
                "path": str(folder),
                "image": {"shape": [size, size, 3]},
            },
            "stages": [{"stage": "ingest", "split": {"test_fraction": 0.2}}],
        }
    )
    run, state = run_pipeline(config, engine=engine)
    data = state["ingest"].training_data(run.manifest["outputs"], "softmax")
    shards = hand_off(engine, DeepStage(model="softmax"), run, data)
    return sum(v["rows"] for v in shards.manifest["splits"].values())


def keras_read(folder: Path, size: int) -> int:
    """Every image of the folder through Keras' own reader; the number of images."""
    import keras

    data = keras.utils.image_dataset_from_directory(
        str(folder), image_size=(size, size), batch_size=64, shuffle=False, verbose=False
    )
    return sum(int(x.shape[0]) for x, _ in data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    tmp = Path(tempfile.mkdtemp(prefix="bench-images-"))
    per_class = args.images // len(PATCH_CLASSES)
    write_patch_folder(tmp / "data", per_class=per_class, size=(32, 160), seed=0, suffixes=(".jpg",))
    write_patch_folder(tmp / "warm", per_class=25, size=(32, 160), seed=1, suffixes=(".jpg",))
    n = per_class * len(PATCH_CLASSES)
    cores = os.cpu_count() or 1
    out: dict[str, dict[str, float]] = {}
    keras_read(tmp / "warm", args.size)
    seconds, got, peak = measure(lambda: keras_read(tmp / "data", args.size))
    assert got == n
    out["keras"] = {"seconds": seconds, "images_per_s": n / seconds, "cores": cores, "peak_mb": peak / 1e6}
    for kind, settings in (
        ("dask", {"kind": "dask", "dask": {"n_workers": 2, "threads_per_worker": 1}}),
        ("spark", {"kind": "spark", "spark": {"master": "local[2]"}}),
    ):
        with make_engine(EngineConfig.model_validate(settings)) as engine:
            ours(engine, tmp / "warm", args.size, tmp / f"runs-warm-{kind}")
            seconds, rows, peak = measure(lambda e=engine, k=kind: ours(e, tmp / "data", args.size, tmp / f"runs-{k}"))
        assert rows == n
        out[kind] = {"seconds": seconds, "images_per_s": n / seconds, "cores": 2, "peak_mb": peak / 1e6}
    keras_per_core = out["keras"]["images_per_s"] / out["keras"]["cores"]
    print(f"{n} JPEGs (sides 32-160 px) -> {args.size}x{args.size}x3, {cores} cores on this machine")
    print(f"{'reader':8} {'seconds':>8} {'images/s':>9} {'cores':>5} {'per core':>9} {'ratio':>6} {'peak MB':>8}")
    for name, row in out.items():
        per_core = row["images_per_s"] / row["cores"]
        row["ratio_per_core"] = per_core / keras_per_core
        print(
            f"{name:8} {row['seconds']:8.2f} {row['images_per_s']:9.0f} {row['cores']:5d} {per_core:9.0f} "
            f"{row['ratio_per_core']:6.2f} {row['peak_mb']:8.0f}"
        )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
