"""Launch InternEvo training the way InternEvo users do: `python start_finetune.py --config CFG`.

`start_finetune.py` is both the launcher and the training entry:
- run under torchrun (RANK/WORLD_SIZE/LOCAL_RANK set) or inside an srun step (SLURM_PROCID set with
  `--launcher slurm`), it trains in this process (`rethinktiny.internevo.train`);
- run as a plain command, it starts the ranks: `torchrun` for `--launcher torch` (default), or
  `srun` for `--launcher slurm`, and returns their exit status.

Node and process counts, master address and port are flags whose defaults come from the
environment (torchrun/SLURM variables, `torch.cuda.device_count()`), or from the config's optional
`launch = dict(nproc_per_node=...)` hint (a CPU config has no GPUs to count).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from typing import Sequence

from rethinktiny.configfiles.load import load_config_file
from rethinktiny.errors import UserError

TRAIN_MODULE = "rethinktiny.internevo.train"


def _env_int(*names: str) -> int | None:
    for name in names:
        value = os.environ.get(name, "")
        digits = value.split("(")[0]  # SLURM_TASKS_PER_NODE looks like "2(x3)"
        if digits.isdigit():
            return int(digits)
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_arguments(parser)
    return parser


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The launch flags, shared by start_finetune.py and `rethinktiny train`."""
    p.add_argument("--config", required=True, help="InternEvo Python config file")
    p.add_argument("--launcher", choices=["torch", "slurm"], default="torch")
    p.add_argument("--nproc-per-node", "--nproc_per_node", "--gpus-per-node", dest="nproc_per_node", type=int,
                   default=None, help="ranks per node (default: SLURM/torchrun env, GPU count, config launch hint)")
    p.add_argument("--nnodes", type=int, default=_env_int("SLURM_NNODES", "NNODES") or 1)
    p.add_argument("--node-rank", "--node_rank", dest="node_rank", type=int,
                   default=_env_int("SLURM_NODEID", "NODE_RANK") or 0)
    p.add_argument("--master-addr", "--master_addr", dest="master_addr",
                   default=os.environ.get("MASTER_ADDR", "127.0.0.1"))
    p.add_argument("--master-port", "--master_port", dest="master_port", type=int,
                   default=_env_int("MASTER_PORT"), help="default: a free port on a single node, else 29500")
    p.add_argument("--rdzv-timeout", dest="rdzv_timeout", type=int, default=5400,
                   help="seconds torchrun waits for all nodes to join")
    p.add_argument("--seed", type=int, default=1024)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value in every rank, e.g. --set data.total_steps=40 (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="print the launch command instead of running it")


def in_torchrun() -> bool:
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def in_srun_step() -> bool:
    return "SLURM_PROCID" in os.environ and "SLURM_STEP_ID" in os.environ


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _override_args(args: argparse.Namespace) -> list[str]:
    return [item for text in args.overrides for item in ("--set", text)]


def default_nproc(config_path: str) -> int:
    from_env = _env_int("SLURM_NTASKS_PER_NODE", "SLURM_GPUS_ON_NODE", "LOCAL_WORLD_SIZE")
    if from_env:
        return from_env
    import torch

    if torch.cuda.is_available() and torch.cuda.device_count() > 0:
        return torch.cuda.device_count()
    hint = load_config_file(config_path).get("launch", {})
    return int(hint.get("nproc_per_node", 1)) if isinstance(hint, dict) else 1


def torchrun_command(args: argparse.Namespace) -> list[str]:
    port = args.master_port or (free_port() if args.nnodes == 1 else 29500)
    return [sys.executable, "-m", "torch.distributed.run",
            "--nproc_per_node", str(args.nproc_per_node), "--nnodes", str(args.nnodes),
            "--node_rank", str(args.node_rank), "--master_addr", args.master_addr, "--master_port", str(port),
            "--rdzv_conf", f"timeout={args.rdzv_timeout}",
            "-m", TRAIN_MODULE, "--config", args.config, "--launcher", "torch", "--seed", str(args.seed),
            *_override_args(args)]


def srun_command(args: argparse.Namespace) -> list[str]:
    port = args.master_port or 29500
    return ["srun", f"--nodes={args.nnodes}", f"--ntasks-per-node={args.nproc_per_node}",
            "--kill-on-bad-exit=1",
            sys.executable, "-m", TRAIN_MODULE, "--config", args.config, "--launcher", "slurm",
            "--port", str(port), "--seed", str(args.seed), *_override_args(args)]


def validate_config(path: str, overrides: Sequence[str]) -> None:
    """Check what can be checked before any process starts: the model shape, the model type and
    the training and validation data folders. Raises UserError naming the key."""
    from rethinktiny.config import MODEL_TYPES, from_internevo
    from rethinktiny.configfiles.load import apply_overrides

    config = load_config_file(path)
    apply_overrides(config, list(overrides))
    model_type = config.get("model_type", "INTERNLM")
    if model_type not in MODEL_TYPES:
        known = internevo_model_types()
        if model_type not in known:
            raise UserError(f"{path}: model_type {model_type!r} is unknown; rethinktiny provides {list(MODEL_TYPES)}, "
                            f"InternEvo {[name for name in known if name not in MODEL_TYPES]}")
    if model_type in MODEL_TYPES:
        if "model" not in config:
            raise UserError(f"{path}: no model=dict(...) entry")
        from_internevo(dict(config["model"]), source=f"{path}: model")
    data = config.get("data", {})
    from rethinktiny.data.tokenized import require_bin_files

    if data.get("train_folder"):
        require_bin_files(data["train_folder"])
    if (data.get("valid_every") or 0) > 0 and data.get("valid_folder"):
        require_bin_files(data["valid_folder"])


def internevo_model_types() -> list[str]:
    """The model types in the installed InternEvo's registry. Imports InternEvo (seconds), so it is
    only asked about a model type that is not one of ours."""
    from rethinktiny.internevo import api

    return api.model_types()


def main(argv: Sequence[str] | None = None) -> int:
    from rethinktiny.cli import run_command

    return run_command(launch, build_parser().parse_args(argv))


def launch(args: argparse.Namespace) -> int:
    """Train in this process when it is a rank, else start the ranks and return their exit status.

    Args:
        args: the flags of `add_arguments`. Raises UserError for a bad config before any rank starts.
    """
    if not os.path.isfile(args.config):
        raise UserError(f"{args.config}: config file not found")
    if in_torchrun() or (args.launcher == "slurm" and in_srun_step()):
        from rethinktiny.internevo.train import main as train_main

        port = args.master_port or 29500
        return train_main(["--config", args.config, "--launcher", "torch" if in_torchrun() else "slurm",
                           "--port", str(port), "--seed", str(args.seed), *_override_args(args)])
    if not in_srun_step():
        validate_config(args.config, args.overrides)
    args.nproc_per_node = args.nproc_per_node or default_nproc(args.config)
    command = torchrun_command(args) if args.launcher == "torch" else srun_command(args)
    if args.dry_run:
        print(" ".join(command))
        return 0
    return subprocess.run(command, check=False).returncode
