"""`--launcher slurm` for real: a local single-node Slurm cluster runs tools/slurm/train.sbatch."""

import os
import shutil

import pytest

from .helpers import REPO, TINY_CONFIG
from .slurm_cluster import LocalSlurm, ensure_packages

pytestmark = pytest.mark.slurm


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    if os.geteuid() != 0 and not shutil.which("slurmctld"):
        pytest.skip("needs root to install and run a local Slurm cluster")
    ensure_packages()
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm")).start()
    yield cluster
    cluster.stop()


def test_sbatch_trains_tiny_cpu_with_two_tasks(slurm, tmp_path, tokenized_sample):
    save = tmp_path / "ckpt"
    import sys
    job = slurm.sbatch(REPO / "tools" / "slurm" / "train.sbatch", str(TINY_CONFIG),
                       "--set", f"ckpt.save_ckpt_folder=local:{save}", "--set", f"data.train_folder={tokenized_sample}",
                       "--set", "data.total_steps=6", "--set", "ckpt.checkpoint_every=3",
                       cwd=REPO, env={"PYTHON": sys.executable},
                       # the script asks for 8 GPUs a node; this cluster is one node of 2 CPUs, no GPUs
                       options=("--gpus-per-node=0", "--ntasks-per-node=2", "--cpus-per-task=1"))
    state = slurm.wait(job, timeout=600)
    output = slurm.job_output(job)
    assert state == "COMPLETED", f"{state}\n{output[-6000:]}\n{slurm.log('slurmd')}"
    assert (save / "6" / "model_tp0_pp0.pt").exists() and (save / "6" / "model_config.json").exists()
    assert "step      6 | loss" in output and "data parallel size: 2" in output
