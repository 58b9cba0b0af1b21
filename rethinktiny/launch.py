"""Start ranks the way InternEvo users do: torchrun on this node, or srun inside a Slurm allocation.

One layer for every entry module (training: `rethinktiny.internevo.train`, scoring:
`rethinktiny.resample.worker`):
- `LaunchOptions.from_env(...)`: flags given on the command line, the rest from the environment
  (the one place that reads SLURM_*/torchrun variables), `resolve()` fills in rank count and port;
- `rank_command(module, args, options)`: the torchrun or srun command line;
- `run_ranks(command, what)`: runs it and owns its processes: SIGTERM/SIGINT are forwarded to
  torchrun/srun, which get `stop_timeout` seconds before SIGKILL; torchrun/srun die with this
  process (Linux parent-death signal) and ranks with torchrun (`exit_with_parent()`);
- `train(config, options)`: InternEvo training of a loaded `TrainingConfig`.

`python -m rethinktiny.launch LAUNCHER_PID COMMAND...` is the tiny wrapper `run_ranks` starts torchrun/srun
through: it sets the parent-death signal and execs COMMAND.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Mapping, Sequence

from rethinktiny.errors import UserError

if TYPE_CHECKING:
    from rethinktiny.configfiles.training import TrainingConfig

TRAIN_MODULE = "rethinktiny.internevo.train"
WORKER_MODULE = "rethinktiny.resample.worker"
DEFAULT_MASTER_PORT = 29500  # torchrun's own default; used where a free port cannot be picked here
STOP_TIMEOUT_S = 30.0  # after a forwarded SIGTERM, torchrun/srun get this long before SIGKILL
LAUNCHERS = ("torch", "slurm")
# set by the wrapper to torchrun's pid: a rank whose parent is no longer that pid lost its launcher
RANKS_PARENT_ENV = "RETHINKTINY_RANKS_PARENT"
_PR_SET_PDEATHSIG = 1


class Stopped(UserError):
    """The ranks were stopped by a signal to the launcher."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


def _env_int(env: Mapping[str, str], *names: str) -> int | None:
    for name in names:
        digits = env.get(name, "").split("(")[0]  # SLURM_TASKS_PER_NODE looks like "2(x3)"
        if digits.isdigit():
            return int(digits)
    return None


@dataclass
class LaunchOptions:
    """How to start the ranks.

    Args:
        nproc_per_node: ranks per node (None: `resolve` picks GPU count or the config's hint).
        nnodes: nodes.
        node_rank: this node's rank (torchrun, multi-node).
        master_addr, master_port: torchrun rendezvous (port None: `resolve` applies the port rule).
        launcher: "torch" (torchrun) or "slurm" (srun inside an allocation).
        rdzv_timeout: seconds torchrun waits for all nodes to join.
        stop_timeout: seconds the ranks get after a forwarded SIGTERM/SIGINT before SIGKILL.
    """

    nproc_per_node: int | None = None
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int | None = None
    launcher: str = "torch"
    rdzv_timeout: int = 5400
    stop_timeout: float = STOP_TIMEOUT_S

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **flags) -> "LaunchOptions":
        """Options from `flags`; a flag left None comes from the Slurm/torchrun environment."""
        env = os.environ if env is None else env
        from_env = {"nproc_per_node": _env_int(env, "SLURM_NTASKS_PER_NODE", "SLURM_GPUS_ON_NODE", "LOCAL_WORLD_SIZE"),
                    "nnodes": _env_int(env, "SLURM_NNODES", "NNODES") or 1,
                    "node_rank": _env_int(env, "SLURM_NODEID", "NODE_RANK") or 0,
                    "master_addr": env.get("MASTER_ADDR") or "127.0.0.1",
                    "master_port": _env_int(env, "MASTER_PORT")}
        given = {k: v for k, v in flags.items() if v is not None}
        return cls(**{**from_env, **given})

    def resolve(self, nproc_hint: int | None = None) -> "LaunchOptions":
        """A copy with the rank count and port decided and every value checked.

        Ranks per node: the option, else the GPU count, else `nproc_hint` (the config's
        `launch=dict(nproc_per_node=...)`), else 1. Port: the option, else a free port for
        torchrun on one node, else DEFAULT_MASTER_PORT (every node must agree on it).
        """
        if self.launcher not in LAUNCHERS:
            raise UserError(f"--launcher must be one of {LAUNCHERS}, got {self.launcher!r}")
        nproc = self.nproc_per_node or _gpu_count() or nproc_hint or 1
        if nproc < 1 or self.nnodes < 1:
            raise UserError("--nproc-per-node and --nnodes must be positive")
        if not 0 <= self.node_rank < self.nnodes:
            raise UserError(f"--node-rank {self.node_rank} is not in 0..{self.nnodes - 1} (--nnodes {self.nnodes})")
        port = self.master_port or (free_port() if self.launcher == "torch" and self.nnodes == 1
                                    else DEFAULT_MASTER_PORT)
        return replace(self, nproc_per_node=nproc, master_port=port)

    @property
    def in_process(self) -> bool:
        """One rank on one node: work that needs no process group can run in the caller."""
        return self.launcher == "torch" and self.nproc_per_node == 1 and self.nnodes == 1


def _gpu_count() -> int:
    import torch  # seconds; only asked when neither the flags nor the environment say

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def is_writer_node(options: LaunchOptions) -> bool:
    """Whether this launcher writes shared outputs: node 0's (srun has one launcher, node 0's)."""
    return options.node_rank == 0


def rank_launcher() -> str | None:
    """"torch" when torchrun started this process, "slurm" in an srun step, else None."""
    if all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")):
        return "torch"
    if "SLURM_PROCID" in os.environ and "SLURM_STEP_ID" in os.environ:
        return "slurm"
    return None


def rank_command(module: str, module_args: Sequence[str], options: LaunchOptions) -> list[str]:
    """The torchrun (or srun) command line starting `python -m module *module_args` in every rank.

    Args:
        module: the rank entry module.
        module_args: its arguments.
        options: resolved launch options (`LaunchOptions.resolve`).
    """
    if options.launcher == "slurm":
        return ["srun", f"--nodes={options.nnodes}", f"--ntasks-per-node={options.nproc_per_node}",
                "--kill-on-bad-exit=1", sys.executable, "-m", module, *module_args]
    return [sys.executable, "-m", "torch.distributed.run",
            "--nproc_per_node", str(options.nproc_per_node), "--nnodes", str(options.nnodes),
            "--node_rank", str(options.node_rank), "--master_addr", options.master_addr,
            "--master_port", str(options.master_port), "--rdzv_conf", f"timeout={options.rdzv_timeout}",
            "-m", module, *module_args]


def run_ranks(command: Sequence[str], what: str, stop_timeout: float = STOP_TIMEOUT_S) -> int:
    """Run a `rank_command` and return its exit status; this process owns its ranks.

    torchrun/srun start in their own session (a Ctrl-C in the terminal reaches only us), through
    the parent-death wrapper. SIGTERM/SIGINT here are forwarded to their process group; after
    `stop_timeout` seconds (or a second signal) the group is killed. Raises `Stopped` then.

    Args:
        command: the command line.
        what: what the ranks do, for the message ("training", "scoring").
        stop_timeout: seconds between the forwarded signal and SIGKILL.
    """
    proc = subprocess.Popen([sys.executable, "-m", __name__, str(os.getpid()), *command], start_new_session=True)
    received: list[int] = []

    def forward(signum, _frame) -> None:
        received.append(signum)
        _signal_group(proc, signal.SIGKILL if len(received) > 1 else signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while proc.poll() is None and not received:
            _wait(proc, None)
        if received and not _wait(proc, stop_timeout):
            _signal_group(proc, signal.SIGKILL)
            proc.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if received:
        name = signal.Signals(received[0]).name
        raise Stopped(f"{what} stopped by {name} (exit {proc.returncode})", received[0])
    return proc.returncode


def _wait(proc: subprocess.Popen, timeout: float | None) -> bool:
    """Wait for `proc` (None: until it exits or a signal arrives); True when it exited."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while proc.poll() is None:
        left = 0.2 if deadline is None else min(0.2, deadline - time.monotonic())
        if left <= 0:
            return False
        try:
            proc.wait(timeout=left)
        except subprocess.TimeoutExpired:
            if deadline is None:
                return False  # back to the caller, which looks at the signals received
    return True


def _signal_group(proc: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(proc.pid, signum)
    except ProcessLookupError:
        pass


def _set_parent_death_signal(signum: int) -> None:
    """Linux: the kernel sends `signum` to this process when its parent dies (kept across exec)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0)


def exit_with_parent() -> None:
    """For rank entry points: die when torchrun dies (SIGKILL from the kernel), and exit now when
    the launcher is already gone (the rank was still starting when its parent died)."""
    _set_parent_death_signal(signal.SIGKILL)
    expected = os.environ.get(RANKS_PARENT_ENV)
    if expected and os.getppid() != int(expected):
        print("[rethinktiny] the launcher is gone; this rank exits", file=sys.stderr, flush=True)
        os._exit(1)


def _exec_with_parent_death(launcher_pid: int, command: Sequence[str]) -> None:
    """The wrapper: torchrun/srun get SIGTERM when the launcher dies (they stop their ranks)."""
    _set_parent_death_signal(signal.SIGTERM)
    if os.getppid() != launcher_pid:  # the launcher died before the signal was set
        sys.exit(1)
    if "torch.distributed.run" in command:  # exec keeps the pid: torchrun is its ranks' parent
        os.environ[RANKS_PARENT_ENV] = str(os.getpid())
    os.execvp(command[0], list(command))


def train_args(config_path: str | os.PathLike, options: LaunchOptions, seed: int,
               overrides: Sequence[str]) -> list[str]:
    """The training entry's arguments in every rank (`--port` for srun: torchrun sets MASTER_PORT)."""
    args = ["--config", str(config_path), "--launcher", options.launcher]
    if options.launcher == "slurm":
        args += ["--port", str(options.master_port or DEFAULT_MASTER_PORT)]
    return [*args, "--seed", str(seed), *[item for text in overrides for item in ("--set", text)]]


def last_checkpoint(config: TrainingConfig) -> str:
    """Where the newest complete checkpoint of a run is, in words."""
    from rethinktiny.checkpoint import find_step_folder
    from rethinktiny.configfiles.load import local_path

    save = local_path((config.raw.get("ckpt") or {}).get("save_ckpt_folder"))
    if save is None:
        return "no local save folder"
    try:
        return f"the last checkpoint is {find_step_folder(save)}"
    except UserError:
        return f"no checkpoint in {save} yet"


def check_memory_plan(config: TrainingConfig, options: LaunchOptions, ignore: bool = False) -> None:
    """Print the per-GPU memory plan of our model types; stop when it exceeds the visible GPU's
    memory, unless `ignore` (`--ignore-memory-plan`)."""
    if config.model is None:  # InternEvo's own model types: no plan
        return
    from rethinktiny.arch.memory import check_fits, device_memory_bytes, memory_plan

    plan = memory_plan(config, options.nproc_per_node * options.nnodes)
    print(f"[rethinktiny] {plan.describe()}", flush=True)
    check_fits(plan, device_memory_bytes(), ignore)


def train(config: TrainingConfig, options: LaunchOptions, seed: int = 1024, extra_overrides: Sequence[str] = (),
          dry_run: bool = False, ignore_memory_plan: bool = False) -> int:
    """Train a loaded config with InternEvo in `options`' ranks; returns their exit status.

    Args:
        config: the training config (loaded with the user's overrides).
        options: launch options (resolved here with the config's rank hint).
        seed: InternEvo's seed.
        extra_overrides: `--set` items on top of the config's own (e.g. a round's data folder);
            the config's values and data are checked again with them (its keys were checked).
        dry_run: print the command instead of running it.
        ignore_memory_plan: start even when the memory plan exceeds the GPU's memory.
    Raises `Stopped` (naming the last checkpoint) when a signal stopped the ranks.
    """
    if extra_overrides:
        from rethinktiny.configfiles.training import TrainingConfig

        config = TrainingConfig.from_file(config.path, [*config.overrides, *extra_overrides], allow_unknown_keys=True)
    options = options.resolve(config.nproc_hint)
    check_memory_plan(config, options, ignore_memory_plan)
    command = rank_command(TRAIN_MODULE, train_args(config.path, options, seed, config.overrides), options)
    if dry_run:
        print(" ".join(command))
        return 0
    try:
        return run_ranks(command, "training", options.stop_timeout)
    except Stopped as stopped:
        raise Stopped(f"{stopped}; {last_checkpoint(config)}", stopped.signum) from None


if __name__ == "__main__":
    _exec_with_parent_death(int(sys.argv[1]), sys.argv[2:])
