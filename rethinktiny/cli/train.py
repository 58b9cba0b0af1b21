"""rethinktiny train: the launcher of start_finetune.py (same flags, same behaviour).

Run as a plain command it loads and checks the config, then starts the ranks (torchrun, or srun
for `--launcher slurm`); run as a rank (under torchrun, or in an srun step) it trains in this
process. `add_launch_arguments` / `launch_options` are the launch flags `resample` and
`multiround` share.
"""

from __future__ import annotations

import argparse

from rethinktiny.launch import DEFAULT_MASTER_PORT, STOP_TIMEOUT_S, LaunchOptions


def add_launch_arguments(parser: argparse.ArgumentParser) -> None:
    """The rank-start flags; a flag not given comes from the Slurm/torchrun environment."""
    g = parser.add_argument_group("ranks (torchrun on this node, or srun inside a Slurm allocation)")
    g.add_argument("--launcher", choices=["torch", "slurm"], default="torch")
    g.add_argument("--nproc-per-node", "--nproc_per_node", "--gpus-per-node", dest="nproc_per_node", type=int,
                   help="ranks per node (default: $SLURM_NTASKS_PER_NODE / $LOCAL_WORLD_SIZE, the GPU count, "
                        "the config's launch=dict(nproc_per_node=...))")
    g.add_argument("--nnodes", type=int, help="nodes (default: $SLURM_NNODES or $NNODES or 1)")
    g.add_argument("--node-rank", "--node_rank", dest="node_rank", type=int,
                   help="this node's rank (default: $SLURM_NODEID or $NODE_RANK or 0)")
    g.add_argument("--master-addr", "--master_addr", dest="master_addr",
                   help="rendezvous host (default: $MASTER_ADDR or 127.0.0.1)")
    g.add_argument("--master-port", "--master_port", dest="master_port", type=int,
                   help=f"rendezvous port (default: $MASTER_PORT, else a free port on one node, "
                        f"else {DEFAULT_MASTER_PORT})")
    g.add_argument("--rdzv-timeout", dest="rdzv_timeout", type=int, default=5400,
                   help="seconds torchrun waits for all nodes to join (default: 5400)")
    g.add_argument("--stop-timeout", dest="stop_timeout", type=float, default=STOP_TIMEOUT_S,
                   help=f"seconds the ranks get to exit after SIGTERM/SIGINT before they are killed "
                        f"(default: {STOP_TIMEOUT_S:g})")


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of every command that trains (train, multiround)."""
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value in every rank, e.g. --set data.total_steps=40 (repeatable)")
    parser.add_argument("--allow-unknown-keys", action="store_true",
                        help="keep config keys neither InternEvo nor rethinktiny reads (default: an error)")
    parser.add_argument("--ignore-memory-plan", action="store_true",
                        help="start even when the per-GPU memory plan exceeds the visible GPU's memory")


def launch_options(args: argparse.Namespace) -> LaunchOptions:
    return LaunchOptions.from_env(nproc_per_node=args.nproc_per_node, nnodes=args.nnodes, node_rank=args.node_rank,
                                  master_addr=args.master_addr, master_port=args.master_port,
                                  launcher=args.launcher, rdzv_timeout=args.rdzv_timeout,
                                  stop_timeout=args.stop_timeout)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="InternEvo Python config file")
    parser.add_argument("--seed", type=int, default=1024, help="InternEvo's seed (default: 1024)")
    parser.add_argument("--dry-run", action="store_true", help="print the launch command instead of running it")
    add_training_arguments(parser)
    add_launch_arguments(parser)
    parser.set_defaults(func=train)


def build_parser() -> argparse.ArgumentParser:
    """start_finetune.py's parser."""
    parser = argparse.ArgumentParser(description="Start InternEvo training: torchrun or srun starts the ranks, "
                                                 "or this process trains when it is a rank.")
    configure(parser)
    return parser


def train(args: argparse.Namespace) -> int:
    """Train in this process when it is a rank, else check the config and start the ranks."""
    from rethinktiny import launch

    options = launch_options(args)
    rank_launcher = launch.rank_launcher()
    if rank_launcher == "torch" or (rank_launcher == "slurm" and options.launcher == "slurm"):
        from rethinktiny.internevo.train import main as train_in_rank

        options.launcher = rank_launcher
        return train_in_rank(launch.train_args(args.config, options, args.seed, args.overrides))
    from rethinktiny.configfiles.training import TrainingConfig

    config = TrainingConfig.from_file(args.config, args.overrides, allow_unknown_keys=args.allow_unknown_keys)
    return launch.train(config, options, seed=args.seed, dry_run=args.dry_run,
                        ignore_memory_plan=args.ignore_memory_plan)
