"""Start the scoring ranks the way training ranks start: torchrun on this node, or srun in a job.

Rank counts, nodes, master address and port are options whose defaults come from the same
places as `start_finetune.py`'s (Slurm/torchrun variables, GPU count, the config's `launch` hint).
One rank on one node runs in this process (no launcher needed).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from rethinktiny.errors import UserError

WORKER_MODULE = "rethinktiny.resample.worker"


@dataclass
class LaunchOptions:
    """How to start the scoring ranks.

    Args:
        nproc_per_node: ranks per node (None: the training launcher's default for the config).
        nnodes: nodes.
        node_rank: this node's rank (torchrun, multi-node).
        master_addr, master_port: torchrun rendezvous (port None: a free one on a single node).
        launcher: "torch" (torchrun) or "slurm" (srun inside an allocation).
    """

    nproc_per_node: int | None = None
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = os.environ.get("MASTER_ADDR", "127.0.0.1")
    master_port: int | None = None
    launcher: str = "torch"

    def resolve(self, config_path: str | os.PathLike) -> "LaunchOptions":
        if self.launcher not in ("torch", "slurm"):
            raise UserError(f"--launcher must be torch or slurm, got {self.launcher!r}")
        if self.nproc_per_node is None:
            from rethinktiny.launcher import default_nproc

            self.nproc_per_node = default_nproc(str(config_path))
        if self.nproc_per_node < 1 or self.nnodes < 1:
            raise UserError("--nproc-per-node and --nnodes must be positive")
        return self

    @property
    def in_process(self) -> bool:
        return self.launcher == "torch" and self.nproc_per_node == 1 and self.nnodes == 1


def worker_command(plan_path: Path, options: LaunchOptions, progress: bool) -> list[str]:
    """torchrun or srun command line that starts every scoring rank."""
    worker = ["-m", WORKER_MODULE, "--plan", str(plan_path), *([] if progress else ["--no-progress"])]
    if options.launcher == "slurm":
        return ["srun", f"--nodes={options.nnodes}", f"--ntasks-per-node={options.nproc_per_node}",
                "--kill-on-bad-exit=1", sys.executable, *worker]
    from rethinktiny.launcher import free_port

    port = options.master_port or (free_port() if options.nnodes == 1 else 29500)
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(options.nproc_per_node),
            "--nnodes", str(options.nnodes), "--node_rank", str(options.node_rank),
            "--master_addr", options.master_addr, "--master_port", str(port), *worker]


def run_scoring_ranks(plan_path: Path, options: LaunchOptions, progress: bool = True) -> None:
    """Score every batch of the plan with `options.nproc_per_node * nnodes` ranks."""
    if options.in_process:
        from rethinktiny.resample.scorefiles import ScorePlan
        from rethinktiny.resample.worker import score_share, scoring_device

        score_share(ScorePlan.load(plan_path), 0, 1, scoring_device(0), progress)
        return
    result = subprocess.run(worker_command(plan_path, options, progress), check=False)
    if result.returncode != 0:
        raise UserError(f"scoring ranks failed (exit {result.returncode}); the scores computed so far are kept "
                        f"in {plan_path.parent}, run the command again to continue")
