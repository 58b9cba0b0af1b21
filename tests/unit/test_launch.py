"""The launch layer: options from flags and environment, the port rule, the command lines, and a
launcher that owns its child (signals forwarded, bounded wait, then killed)."""

from __future__ import annotations

import ast
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rethinktiny.errors import UserError
from rethinktiny.launch import (DEFAULT_MASTER_PORT, TRAIN_MODULE, WORKER_MODULE, LaunchOptions, is_writer_node,
                                rank_command)

from tests.conftest import REPO

SLURM_ENV = {"SLURM_NNODES": "4", "SLURM_NODEID": "2", "SLURM_NTASKS_PER_NODE": "8(x4)", "MASTER_ADDR": "node-01",
             "MASTER_PORT": "23456"}


def test_flags_win_and_the_environment_fills_the_rest():
    options = LaunchOptions.from_env(SLURM_ENV, nnodes=None, node_rank=None, master_port=1234)
    assert (options.nnodes, options.node_rank, options.nproc_per_node) == (4, 2, 8)
    assert (options.master_addr, options.master_port) == ("node-01", 1234)
    plain = LaunchOptions.from_env({})
    assert (plain.nnodes, plain.node_rank, plain.master_addr, plain.master_port) == (1, 0, "127.0.0.1", None)
    assert LaunchOptions.from_env({"NODE_RANK": "1", "NNODES": "2"}).node_rank == 1


def test_one_port_rule(monkeypatch):
    monkeypatch.setattr("rethinktiny.launch._gpu_count", lambda: 0)
    assert LaunchOptions(master_port=4321).resolve().master_port == 4321
    assert LaunchOptions(nnodes=2, node_rank=1).resolve().master_port == DEFAULT_MASTER_PORT  # nodes must agree
    assert LaunchOptions(launcher="slurm").resolve().master_port == DEFAULT_MASTER_PORT
    assert LaunchOptions().resolve().master_port not in (None, DEFAULT_MASTER_PORT)  # a free one on one node


def test_rank_count_from_the_config_hint_and_checks(monkeypatch):
    monkeypatch.setattr("rethinktiny.launch._gpu_count", lambda: 0)
    assert LaunchOptions().resolve(3).nproc_per_node == 3
    assert LaunchOptions(nproc_per_node=2).resolve(3).nproc_per_node == 2
    assert LaunchOptions().resolve(None).nproc_per_node == 1
    with pytest.raises(UserError, match="--node-rank 2 is not in 0..1"):
        LaunchOptions(nnodes=2, node_rank=2).resolve()
    with pytest.raises(UserError, match="--launcher"):
        LaunchOptions(launcher="mpi").resolve()
    assert is_writer_node(LaunchOptions(node_rank=0)) and not is_writer_node(LaunchOptions(nnodes=2, node_rank=1))


def test_set_launch_nproc_per_node_decides_the_rank_count(monkeypatch, capsys):
    from rethinktiny.cli import main

    for name in ("SLURM_NTASKS_PER_NODE", "SLURM_GPUS_ON_NODE", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("rethinktiny.launch._gpu_count", lambda: 0)
    config = str(REPO / "configs" / "tiny_cpu.py")
    assert main(["train", "--config", config, "--dry-run", "--set", "launch.nproc_per_node=3"]) == 0
    assert "--nproc_per_node 3 " in capsys.readouterr().out


def test_torchrun_and_srun_commands_for_any_module():
    options = LaunchOptions(nproc_per_node=2, nnodes=2, node_rank=1, master_addr="h", master_port=7).resolve()
    torchrun = " ".join(rank_command(WORKER_MODULE, ["--plan", "p.json"], options))
    assert "-m torch.distributed.run --nproc_per_node 2 --nnodes 2 --node_rank 1 --master_addr h --master_port 7" \
        in torchrun and torchrun.endswith(f"-m {WORKER_MODULE} --plan p.json")
    srun = rank_command(TRAIN_MODULE, ["--config", "c.py"], LaunchOptions(nproc_per_node=4, launcher="slurm").resolve())
    assert srun[:4] == ["srun", "--nodes=1", "--ntasks-per-node=4", "--kill-on-bad-exit=1"]
    assert srun[-4:] == ["-m", TRAIN_MODULE, "--config", "c.py"]


def test_the_default_port_is_written_once():
    hits = [f"{path.relative_to(REPO)}:{number}" for path in sorted((REPO / "rethinktiny").rglob("*.py"))
            for number, line in enumerate(path.read_text().splitlines(), 1) if re.search(r"\b(29500|8888)\b", line)]
    assert hits == ["rethinktiny/launch.py:" + str(_line_of("DEFAULT_MASTER_PORT = "))], hits


def _line_of(text: str) -> int:
    lines = (REPO / "rethinktiny" / "launch.py").read_text().splitlines()
    return next(number for number, line in enumerate(lines, 1) if line.startswith(text))


def _imports(path: Path) -> set[str]:
    """rethinktiny modules a file imports (anywhere in it, functions included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in names if name.startswith("rethinktiny")}


def test_no_import_circles_through_the_launch_modules():
    files = {".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): p
             for p in (REPO / "rethinktiny").rglob("*.py")}
    graph = {name: {m for m in _imports(path) if m in files} for name, path in files.items()}

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), list(graph[start])
        while todo:
            name = todo.pop()
            if name == goal:
                return True
            if name not in seen:
                seen.add(name)
                todo.extend(graph.get(name, ()))
        return False

    mine = ["rethinktiny.launch", "rethinktiny.cli.train", "rethinktiny.cli.multiround",
            "rethinktiny.resample.multiround"]
    assert [name for name in mine if reaches(name, name)] == []


LAUNCHER = """import sys
from rethinktiny.launch import run_ranks
child = [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
         "print('child ready', flush=True); time.sleep(60)"]
sys.exit(run_ranks(child, "sleeping", stop_timeout=1.0))
"""


def test_sigterm_is_forwarded_and_a_child_that_ignores_it_is_killed(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", LAUNCHER], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "child ready"
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode != 0 and "sleeping stopped by SIGTERM" in err
    assert 1.0 <= time.monotonic() - start < 10  # waited the stop timeout, then killed it
    children = subprocess.run(["pgrep", "-f", "child ready"], capture_output=True, text=True).stdout.split()
    assert [pid for pid in children if int(pid) != os.getpid()] == []
