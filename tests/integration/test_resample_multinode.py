"""`rethinktiny resample` on two simulated nodes (two launcher processes on localhost, one rank each):
node 0 alone gathers, draws and writes; node 1's launcher exits 0 and says node 0 writes; the
output is byte for byte what one node gives."""

import subprocess
import sys

from rethinktiny.launch import LaunchOptions, free_port
from rethinktiny.resample.run import resample_data
from tests.unit.resample_helpers import folder_bytes, model_config, write_checkpoint, write_config, write_small_data

from .helpers import REPO


def test_two_nodes_have_one_writer_and_one_nodes_selection(tmp_path, tokenized_sample):
    data = write_small_data(tokenized_sample, tmp_path / "train", tokens_per_file=1500)
    config = write_config(tmp_path / "config.py", data, seq_len=32, micro_bsz=2, micro_num=2)
    ckpt = write_checkpoint(tmp_path / "ckpt", model_config(), seed=5)
    dst, port = tmp_path / "two_nodes", free_port()
    nodes = [subprocess.Popen([sys.executable, "-m", "rethinktiny", "resample", "--config", str(config), "--ckpt",
                               str(ckpt), "--dst", str(dst), "--ratio", "0.5", "--no-progress", "--nnodes", "2",
                               "--node-rank", str(rank), "--nproc-per-node", "1", "--master-addr", "127.0.0.1",
                               "--master-port", str(port)], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs
    assert f"to {dst}" in outputs[0] and "wrote" in outputs[0], outputs[0]
    assert "wrote" not in outputs[1] and "node 0 gathers, draws and writes" in outputs[1], outputs[1]
    # both ranks scored (one on each node), and the result is one node's
    assert "scoring rank 0:" in outputs[0] + outputs[1] and "scoring rank 1:" in outputs[0] + outputs[1]
    one = tmp_path / "one_node"
    resample_data(config, ckpt, one, ratio=0.5, launch=LaunchOptions(nproc_per_node=1), progress=False)
    assert folder_bytes(dst) == folder_bytes(one)
    assert not (tmp_path / ".two_nodes.scores").exists()
