"""Temporary folders of `output_dir` do not outlive their command: removed on SIGTERM and SIGINT,
and what SIGKILL left is removed by the next run for the same destination."""

import os
import signal
import subprocess
import sys
import time

import pytest

from rethinktiny.artifacts import sibling_tmp, output_dir, remove_stale_temporaries
from rethinktiny.errors import UserError

from tests.conftest import REPO

# Builds DST in output_dir, says where its temporary is, then waits to be stopped.
WRITER = """
import sys, time
from rethinktiny.artifacts import output_dir
with output_dir(sys.argv[1]) as tmp:
    (tmp / "part.bin").write_bytes(b"x" * 1000)
    print(tmp, flush=True)
    time.sleep(60)
"""


def _this_host() -> str:
    return sibling_tmp(REPO, "tmp").name.rsplit("-", 1)[1]


def _start_writer(dst):
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(dst)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    tmp = proc.stdout.readline().strip()
    assert tmp and os.path.isdir(tmp), proc.stderr.read()
    return proc, tmp


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, -signal.SIGINT)])
def test_a_stopped_command_removes_its_temporary(tmp_path, signum, status):
    proc, tmp = _start_writer(tmp_path / "out")
    proc.send_signal(signum)
    assert proc.wait(timeout=30) == status  # SIGINT: Python re-raises it after the clean-up
    assert not os.path.exists(tmp) and not (tmp_path / "out").exists()
    assert os.listdir(tmp_path) == []


def test_a_later_run_removes_temporaries_of_dead_processes(tmp_path):
    proc, tmp = _start_writer(tmp_path / "out")
    proc.kill()  # SIGKILL: nothing can clean up
    proc.wait(timeout=30)
    assert os.path.isdir(tmp)
    alive = tmp_path / f".out.tmp-{os.getppid()}-1-{_this_host()}"
    alive.mkdir()  # a live process's temporary is kept
    other_host = tmp_path / ".out.tmp-999999999-1-elsewhere"
    other_host.mkdir()  # another host's (shared file system): kept
    unrelated = tmp_path / ".out.partial"
    unrelated.write_text("x")
    with output_dir(tmp_path / "out") as new_tmp:
        (new_tmp / "done").write_text("ok")
    assert not os.path.exists(tmp) and (tmp_path / "out" / "done").read_text() == "ok"
    assert alive.is_dir() and other_host.is_dir() and unrelated.is_file()


def test_a_result_moved_aside_by_a_killed_run_is_put_back(tmp_path):
    with output_dir(tmp_path / "out") as tmp:
        (tmp / "v").write_text("1")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    aside = tmp_path / f".out.old-{int(dead.stdout)}-1-{_this_host()}"
    os.replace(tmp_path / "out", aside)  # killed between the two renames of a --force run
    assert remove_stale_temporaries(tmp_path / "out") == []
    assert (tmp_path / "out" / "v").read_text() == "1" and not aside.exists()
    with pytest.raises(UserError, match="output exists"):
        with output_dir(tmp_path / "out"):
            pass


def test_cli_command_killed_midway_leaves_no_temporary(tmp_path, sample_valid_corpus, tiny_tokenizer):
    """A real command: `data tokenize` stopped with SIGTERM while it writes."""
    corpus = tmp_path / "big.jsonl"
    corpus.write_bytes(sample_valid_corpus.read_bytes() * 40)
    proc = subprocess.Popen([sys.executable, "-m", "rethinktiny", "data", "tokenize", "--input", str(corpus),
                             "--tokenizer", str(tiny_tokenizer), "--dst", str(tmp_path / "out")],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not any(p.name.startswith(".out.tmp-") for p in tmp_path.iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline, "finished before it could be stopped"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 143
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.jsonl"]
