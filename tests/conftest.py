"""Shared fixtures: one real local SparkSession and one real Dask LocalCluster for the whole session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def dask_engine():
    from pipelines.engines.config import DaskSettings
    from pipelines.engines.dask_engine import DaskEngine

    engine = DaskEngine(DaskSettings(n_workers=2, threads_per_worker=1, memory_limit="3GB"))
    engine.start()
    yield engine
    engine.stop()


@pytest.fixture(scope="session")
def spark_engine():
    from pipelines.engines.config import SparkSettings
    from pipelines.engines.spark_engine import SparkEngine

    engine = SparkEngine(SparkSettings(master="local[2]"), partitions=4)
    engine.start()
    yield engine
    engine.stop()


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A real single-node SLURM (slurmctld, slurmd, munge) for one test module; skipped where it cannot run."""
    from slurm import LocalSlurm, missing

    why = missing()
    if why:
        pytest.skip(f"real SLURM unavailable: {why}")
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm")).start()
    os.environ["SLURM_CONF"] = str(cluster.conf)
    yield cluster
    cluster.stop()
    os.environ.pop("SLURM_CONF", None)


@pytest.fixture(params=["dask", "spark"])
def engine(request):
    """Each test using this runs once per engine."""
    return request.getfixturevalue(f"{request.param}_engine")


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def stage_problem(conf: str, index: int, stage: dict) -> str:
    """The config error when stage `index` of conf/<conf> is replaced by `stage` (the config must be refused)."""
    import json

    from pipelines.config import load_config, parse_config
    from pipelines.errors import ConfigError

    data = json.loads(json.dumps(load_config(ROOT / "conf" / conf).model_dump(mode="json")))
    data["stages"][index] = stage
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    return str(err.value)
