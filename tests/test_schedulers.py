"""One class per scheduler: SLURM and PBS answer the same questions; an unknown one is one config error."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.errors import ConfigError
from pipelines.launch.schedulers import SCHEDULERS, Pbs, Slurm, scheduler


def test_each_scheduler_names_its_commands_scripts_and_directives():
    slurm, pbs = scheduler("slurm"), scheduler("pbs")
    assert isinstance(slurm, Slurm) and isinstance(pbs, Pbs) and set(SCHEDULERS) == {"slurm", "pbs"}
    script = Path("/jobs/j")
    assert slurm.submit_argv(script) == ["sbatch", "--parsable", "/jobs/j"] and pbs.submit_argv(script)[0] == "qsub"
    assert (slurm.script_name("array"), pbs.script_name("driver")) == ("array.sbatch", "driver.pbs")
    assert slurm.job_id("123;cluster\n") == "123" and pbs.job_id("45[].server\n") == "45[].server"
    assert slurm.cancel_argv("7") == ["scancel", "7"] and pbs.cancel_argv("7") == ["qdel", "-W", "force", "7"]
    assert slurm.array_directives([0, 1, 2, 5], 2, True) == ["--array=0-2,5%2", "--requeue"]
    assert pbs.array_directives([0, 1, 2, 5], None, False) == ["-J 0-3", "-r n"]
    assert pbs.array_directives([9], None, True) == ["-J 0-1", "-r y"]  # PBS refuses a one-task array
    assert (slurm.gpu_directive(2), pbs.gpu_directive(2)) == ("--gres=gpu:2", "-l ngpus=2")
    assert slurm.jobqueue_cluster().__name__ == "SLURMCluster" and pbs.jobqueue_cluster().__name__ == "PBSCluster"


def test_an_unknown_scheduler_is_a_config_error_listing_the_known_ones():
    with pytest.raises(ConfigError, match=r"scheduler 'lsf': expected one of \('slurm', 'pbs'\)"):
        scheduler("lsf")
