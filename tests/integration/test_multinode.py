"""Two nodes simulated on one host: two launcher processes (`--nnodes 2 --node-rank 0/1
--master-addr 127.0.0.1 --master-port P`, one rank each) give what one node with two ranks gives."""

from __future__ import annotations

import subprocess
import sys
from typing import Sequence

from rethinktiny.launch import free_port

from .helpers import REPO, TINY_CONFIG, explain, metrics, train_tiny


def start_nodes(*args: str, nnodes: int = 2, script: Sequence[str] | None = None) -> list[subprocess.Popen]:
    """One launcher per simulated node, all on 127.0.0.1 (default: start_finetune.py with `args`)."""
    port = str(free_port())
    script = script or [str(REPO / "start_finetune.py"), "--config", str(TINY_CONFIG)]
    return [subprocess.Popen([sys.executable, *script, *args, "--nnodes", str(nnodes), "--node-rank", str(node),
                              "--master-addr", "127.0.0.1", "--master-port", port, "--nproc-per-node", "1"],
                             cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for node in range(nnodes)]


def finish(nodes: list[subprocess.Popen], timeout: int = 300) -> list[subprocess.CompletedProcess]:
    results = []
    for proc in nodes:
        out, err = proc.communicate(timeout=timeout)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return results


def test_two_nodes_train_the_losses_of_one_node_with_two_ranks(tmp_path, tokenized_sample):
    one_node = tmp_path / "one_node"
    result = train_tiny(one_node, tokenized_sample, 3, "--nproc-per-node", "2")
    assert result.returncode == 0, explain(result)
    two_nodes = tmp_path / "two_nodes"
    sets = ["--set", f"ckpt.save_ckpt_folder='local:{two_nodes}'", "--set", f"data.train_folder='{tokenized_sample}'",
            "--set", "data.total_steps=3"]
    results = finish(start_nodes(*sets))
    for node in results:
        assert node.returncode == 0, explain(node)
    assert "data parallel size: 2" in results[0].stdout + results[0].stderr
    assert [(m["step"], m["loss"]) for m in metrics(two_nodes)] == [(m["step"], m["loss"]) for m in metrics(one_node)]
    assert (two_nodes / "3" / "model_tp0_pp0.pt").exists()


# Resample on two nodes (one writer, the selection of one node): engineer F adds its test below,
# using start_nodes(..., script=["-m", "rethinktiny", "resample", ...]) and finish().
