#!/usr/bin/env python
"""Start InternEvo training of a rethinktiny config:

    python start_finetune.py --config configs/LLM1B.py                 # torchrun on this node
    python start_finetune.py --config configs/LLM1B.py --launcher slurm # srun inside an sbatch job
    torchrun --nproc_per_node 8 start_finetune.py --config configs/LLM1B.py

This file can be copied anywhere (e.g. an InternEvo checkout): it only needs rethinktiny to be
installed. `python start_finetune.py --help` lists the launch flags (ranks per node, nodes, node
rank, master address/port, rendezvous timeout); their defaults come from the environment.
"""

import sys

from rethinktiny.cli import run_command
from rethinktiny.cli.train import build_parser, train

if __name__ == "__main__":
    sys.exit(run_command(train, build_parser().parse_args()))
