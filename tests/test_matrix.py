"""Matrix stage and operations on a real Dask LocalCluster and a real local[2] SparkSession, against NumPy.

Tolerances: products, gram and solves 1e-10 relative to the result's largest entry; TSQR singular values
rtol 1e-10; randomized top-k singular values rtol 1e-3 on a matrix with a decaying spectrum (s_i = 0.8**i).
The out-of-core case: a 1.6 GB .npy X.T @ X on two Dask workers of 500 MB each, checked against NumPy
summed block by block, with no worker lost.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import ROOT, stage_problem

from pipelines.config import load_config, parse_config
from pipelines.engines.matrix import (
    GEN_TILE_ROWS,
    Generated,
    Npy,
    NpyWriter,
    Out,
    Parquet,
    Zarr,
    auto_block_bytes,
    chunk_shape,
    row_ranges,
)
from pipelines.errors import ConfigError
from pipelines.pipeline import run_pipeline

BLOCK = 256 * 2**10  # 256 KiB blocks: X (2,000 x 60, 960 KB) in 4 row blocks
GATHER = Out("unused", gather_bytes=1 << 40)


def close(got: np.ndarray, want: np.ndarray, rtol: float = 1e-10) -> None:
    """Equal to NumPy within rtol of the largest entry (sums run in another order)."""
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= rtol * np.abs(want).max()


@pytest.fixture(scope="module")
def arrays(tmp_path_factory):
    """As .npy: X 2,000 x 60, Y 60 x 25 and 60 x 600, a well-conditioned square A, b, a decaying-spectrum M."""
    folder = tmp_path_factory.mktemp("matrix")
    rng = np.random.default_rng(0)
    mats = {
        "x": rng.standard_normal((2000, 60)),
        "y": rng.standard_normal((60, 25)),
        "yw": rng.standard_normal((60, 600)),  # 288 KB, more than a block
        "a": rng.standard_normal((120, 120)) + 12 * np.eye(120),
        "ba": rng.standard_normal((120, 2)),
        "b": rng.standard_normal((2000, 1)),
    }
    u, _ = np.linalg.qr(rng.standard_normal((3000, 150)))
    v, _ = np.linalg.qr(rng.standard_normal((150, 150)))
    mats["m"] = (u * 0.8 ** np.arange(150)) @ v.T
    paths = {}
    for name, value in mats.items():
        paths[name] = str(folder / f"{name}.npy")
        np.save(paths[name], value)
    return mats, {name: Npy.open(p) for name, p in paths.items()}


def test_generated_values_do_not_depend_on_the_blocks():
    src = Generated(3 * GEN_TILE_ROWS + 17, 5, seed=3)
    whole = src.read(0, src.rows)
    cuts = [src.read(r0, r1) for r0, r1 in row_ranges(src.rows, 1000)]
    assert np.array_equal(np.vstack(cuts), whole)
    assert np.array_equal(src[10:20, 1:3], whole[10:20, 1:3])
    assert not np.array_equal(Generated(100, 5, seed=4).read(0, 100), whole[:100])
    assert Generated(50, 4, kind="uniform").read(0, 50).min() >= 0


def test_auto_chunks_follow_the_memory_per_worker():
    block = auto_block_bytes(4 * 10**9)
    assert block == 500_000_000
    rows, cols = chunk_shape((100_000, 10_000), block)
    assert (rows, cols) == (12_500, 5_000)  # a 5,000 x 5,000 gram tile (200 MB) fits the block too
    assert rows * cols * 8 <= block and cols * cols * 8 <= block
    assert chunk_shape((1000, 20), block) == (1000, 20)


@pytest.mark.parametrize("op", ["multiply", "multiply-blocks", "gram", "tsqr", "lstsq", "square-solve"])
def test_operations_equal_numpy(engine, arrays, op):
    mats, src = arrays
    ops = engine.matrix_ops()
    if op == "multiply":
        close(ops.multiply(src["x"], src["y"], BLOCK, GATHER).value, mats["x"] @ mats["y"])
    elif op == "multiply-blocks":  # Y larger than a block: Spark takes BlockMatrix.multiply
        close(ops.multiply(src["x"], src["yw"], BLOCK, GATHER).value, mats["x"] @ mats["yw"])
    elif op == "gram":
        close(ops.gram(src["x"], BLOCK, GATHER).value, mats["x"].T @ mats["x"])
    elif op == "tsqr":
        found = ops.svd(src["x"], "tsqr", 60, 0, 0, BLOCK)
        want_u, want_s, want_vt = np.linalg.svd(mats["x"], full_matrices=False)
        np.testing.assert_allclose(found.extra["s"], want_s, rtol=1e-10)
        signs = np.sign(np.sum(found.extra["vt"] * want_vt, axis=1))  # each right vector up to its sign
        close(found.extra["vt"] * signs[:, None], want_vt, rtol=1e-8)
    elif op == "lstsq":
        close(ops.solve(src["x"], src["b"], BLOCK).value, np.linalg.lstsq(mats["x"], mats["b"], rcond=None)[0])
    else:
        close(ops.solve(src["a"], src["ba"], 30 * 30 * 8).value, np.linalg.solve(mats["a"], mats["ba"]))


@pytest.mark.slow  # Spark's ARPACK runs one job per iteration (~40 s on 2 busy cores)
def test_randomized_svd_finds_the_top_singular_values(engine, arrays):
    mats, src = arrays
    want = np.linalg.svd(mats["m"], compute_uv=False)[:5]
    found = engine.matrix_ops().svd(src["m"], "randomized", 5, 2, 0, BLOCK)
    np.testing.assert_allclose(found.extra["s"], want, rtol=1e-3)


@pytest.mark.parametrize("fmt", ["zarr", "npy"])
def test_a_large_product_is_written_block_by_block(engine, arrays, tmp_path, fmt):
    mats, src = arrays
    out = Out(str(tmp_path / f"p.{fmt}"), fmt, gather_bytes=0)  # never gathered
    found = engine.matrix_ops().multiply(src["x"], src["y"], BLOCK, out)
    assert found.value is None and found.written == out.path
    stored = Zarr.open(out.path) if fmt == "zarr" else Npy.open(out.path)
    close(stored.read(0, 2000), mats["x"] @ mats["y"])


@pytest.mark.spark
def test_spark_refuses_gramians_past_its_column_limit(spark_engine):
    from pyspark.mllib.linalg.distributed import RowMatrix

    ops = spark_engine.matrix_ops()
    wide = Generated(2, 65_536)
    for call in (lambda: ops.gram(wide, BLOCK, GATHER), lambda: ops.svd(wide, "tsqr", 2, 0, 0, BLOCK)):
        with pytest.raises(ConfigError, match="65,535 columns"):
            call()
    with pytest.raises(ConfigError, match="65,535 columns"):
        ops.solve(Generated(2, 65_535), Generated(2, 1), BLOCK)  # [A | b] has 65,536
    # the limit is Spark's own: RowMatrix refuses the same matrix when asked directly
    rows = spark_engine.spark.sparkContext.parallelize([np.zeros(65_536), np.ones(65_536)], 2)
    with pytest.raises(Exception, match="65535"):
        RowMatrix(rows).computeGramianMatrix()


def test_inputs_from_parquet_and_npy_agree(engine, arrays, tmp_path):
    mats, src = arrays
    folder = tmp_path / "pq"
    folder.mkdir()
    names = [f"c{i}" for i in range(60)]
    for part, (r0, r1) in enumerate(row_ranges(2000, 700)):  # three part files of uneven row groups
        table = pa.table({n: mats["x"][r0:r1, i] for i, n in enumerate(names)} | {"label": np.zeros(r1 - r0)})
        pq.write_table(table, folder / f"part.{part}.parquet", row_group_size=300)
    x = Parquet.open(str(folder), names)
    assert x.shape == (2000, 60)
    assert np.array_equal(x.read(250, 1650), mats["x"][250:1650])
    close(engine.matrix_ops().gram(x, BLOCK, GATHER).value, mats["x"].T @ mats["x"])
    with pytest.raises(ConfigError, match="missing or not numeric"):
        Parquet.open(str(folder), ["nope"])


@pytest.mark.slow
def test_stage_from_ingest_on_both_engines(engine, tmp_path):
    """gram, TSQR SVD and the least-squares fit of affairs from the ingested train split equal NumPy's."""
    data = load_config(ROOT / "conf" / "matrix_ingest.yaml", [f"runs_dir={tmp_path}"]).model_dump(mode="json")
    run, _ = run_pipeline(parse_config(data), engine=engine)
    train = pq.read_table(run.dir / "data" / "train").to_pandas()
    features = ["rate_marriage", "age", "yrs_married", "children", "religious", "educ"]
    x, b = train[features].to_numpy(), train[["affairs"]].to_numpy()
    folder = run.dir / "matrix"
    close(np.load(folder / "gram" / "result.npy"), x.T @ x)
    np.testing.assert_allclose(np.load(folder / "svd" / "s.npy"), np.linalg.svd(x, compute_uv=False), rtol=1e-10)
    close(np.load(folder / "ols" / "result.npy"), np.linalg.lstsq(x, b, rcond=None)[0], rtol=1e-8)
    summary = json.loads((folder / "svd" / "summary.json").read_text())
    assert summary["method"] == "tsqr" and summary["x_shape"] == [len(train), 6] and summary["engine"] == engine.kind
    assert set(run.manifest["outputs"]) >= {"matrix/gram", "matrix/svd", "matrix/ols"}
    metrics = json.loads((run.dir / "metrics.json").read_text())
    assert metrics["gram"]["op"] == "gram" and metrics["gram"]["result"] == "result.npy"


def test_seeds_config_scaled_down_writes_its_product_into_the_run(engine, tmp_path):
    """conf/matrix_seeds.yaml at 3,000 x 200: the gram gathered, the product written to Zarr by the workers."""
    data = load_config(ROOT / "conf" / "matrix_seeds.yaml", [f"runs_dir={tmp_path}"]).model_dump(mode="json")
    for stage in data["stages"]:
        stage["x"]["generate"].update(rows=3000, cols=200)
        stage["chunk_mb"] = 1
    data["stages"][1]["y"]["generate"].update(rows=200, cols=300)
    data["stages"][1]["out"]["gather_mb"] = 1  # 3,000 x 300 x 8 bytes = 7.2 MB: written, not gathered
    run, _ = run_pipeline(parse_config(data), engine=engine)
    x, y = Generated(3000, 200, seed=0).read(0, 3000), Generated(200, 300, seed=1).read(0, 200)
    close(np.load(run.dir / "matrix" / "gram" / "result.npy"), x.T @ x)
    product = run.dir / "matrix" / "product"
    close(Zarr.open(str(product / "result.zarr")).read(0, 3000), x @ y)
    summary = json.loads((product / "summary.json").read_text())
    assert summary["result"] == "result.zarr" and summary["result_shape"] == [3000, 300]
    assert summary["block_mb"] == 1.0 and summary["block"] == [655, 200]
    assert any(k.startswith("result.zarr/") for k in run.manifest["outputs"]["matrix/product"])  # checksummed


def test_stage_config_problems_name_their_keys():
    base = load_config(ROOT / "conf" / "matrix_ingest.yaml").model_dump(mode="json")

    def problem(**stage):
        return stage_problem("matrix_ingest.yaml", 1, {"stage": "matrix", "name": "m", **stage})

    gen = {"generate": {"rows": 10, "cols": 3}}
    assert "op multiply needs y" in problem(op="multiply", x=gen)
    assert "op gram takes no b" in problem(op="gram", x=gen, b=gen)
    assert "exactly one of" in problem(op="gram", x={"npy": "a.npy", "zarr": "b.zarr"})
    assert "method and k apply to op svd only" in problem(op="gram", x=gen, k=3)
    no_ingest = json.loads(json.dumps(base))
    no_ingest["stages"] = no_ingest["stages"][1:]
    with pytest.raises(ConfigError, match="x.from: needs an earlier ingest stage"):
        from pipelines.plan import require_valid_plan

        require_valid_plan(parse_config(no_ingest), "m")


@pytest.mark.slow
def test_out_of_core_gram_on_workers_of_500_mb(tmp_path):
    """X (400,000 x 500 float64 = 1.6 GB .npy) is more than both workers' memory; X.T @ X equals NumPy's.

    (500 MB, not less: a worker holding this package's imports already uses ~240 MB, and Dask pauses a
    worker at 80 % of its limit.)
    """
    import dask.array as da

    from pipelines.engines.config import DaskSettings
    from pipelines.engines.dask_engine import DaskEngine

    src, path = Generated(400_000, 500, seed=11), str(tmp_path / "x.npy")
    with DaskEngine(DaskSettings(n_workers=2, threads_per_worker=1, memory_limit="500MB")) as engine:
        ops = engine.matrix_ops()
        block = auto_block_bytes(ops.memory_per_worker())
        assert block == 500 * 10**6 // 8
        writer = NpyWriter(path)
        writer.create(src.shape, src.shape)
        engine.client.compute(da.store(ops.array(src, (10_000, 500)), writer, lock=False, compute=False)).result()
        workers = set(engine.client.scheduler_info(n_workers=-1)["workers"])
        found = ops.gram(Npy.open(path), block, GATHER).value
        assert set(engine.client.scheduler_info(n_workers=-1)["workers"]) == workers  # none killed and replaced
    want = np.zeros((500, 500))
    disk = np.load(path, mmap_mode="r")
    for r0, r1 in row_ranges(400_000, 20_000):
        part = np.asarray(disk[r0:r1])
        want += part.T @ part
    close(found, want)
    assert np.array_equal(np.asarray(disk[:5000]), src.read(0, 5000))  # what the workers wrote
