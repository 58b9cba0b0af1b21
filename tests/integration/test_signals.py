"""A stopped launcher stops its whole run: SIGTERM (Slurm's scancel, `kill`) is forwarded to
torchrun and its ranks, and `kill -9` of the launcher takes torchrun and the ranks with it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .helpers import REPO, TINY_CONFIG


def run_processes(marker: str) -> list[int]:
    """Live processes whose command line names `marker` (the run's save folder)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in cmdline and state != "Z":
            pids.append(int(entry.name))
    return pids


def start_long_run(tmp_path: Path, train_folder: Path) -> tuple[subprocess.Popen, Path]:
    save = tmp_path / "ckpt"
    command = [sys.executable, str(REPO / "start_finetune.py"), "--config", str(TINY_CONFIG), "--stop-timeout", "10",
               "--set", f"ckpt.save_ckpt_folder='local:{save}'", "--set", f"data.train_folder='{train_folder}'",
               "--set", "data.total_steps=5000", "--set", "ckpt.checkpoint_every=2"]
    log = open(tmp_path / "launcher.log", "w")
    return subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True), save


def kill_run(proc: subprocess.Popen, save: Path) -> None:
    """Leave no trainer behind when a test fails."""
    proc.kill()
    for pid in run_processes(str(save)):
        os.kill(pid, signal.SIGKILL)


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def wait_for_first_checkpoint(proc: subprocess.Popen, save: Path, tmp_path: Path) -> None:
    def saved() -> bool:
        assert proc.poll() is None, (tmp_path / "launcher.log").read_text()[-4000:]
        return (save / "2" / "2.step").exists()

    wait_for(saved, 120, "the step-2 checkpoint")


def test_sigterm_stops_every_process_and_names_the_last_checkpoint(tmp_path, tokenized_sample):
    proc, save = start_long_run(tmp_path, tokenized_sample)
    try:
        wait_for_first_checkpoint(proc, save, tmp_path)
        assert len(run_processes(str(save))) >= 4  # launcher, torchrun, 2 ranks
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=20)
        wait_for(lambda: not run_processes(str(save)), 10, "every process of the run to exit")
    finally:
        kill_run(proc, save)
    output = (tmp_path / "launcher.log").read_text()
    last = output.strip().splitlines()[-1]
    assert code != 0, output[-4000:]
    assert last.startswith("error: training stopped by SIGTERM") and f"the last checkpoint is {save}/" in last, last
    step = int(last.rsplit("/", 1)[1])
    assert step >= 2 and step % 2 == 0 and (save / str(step) / f"{step}.step").exists()


def test_kill_9_of_the_launcher_takes_its_ranks_along(tmp_path, tokenized_sample):
    proc, save = start_long_run(tmp_path, tokenized_sample)
    try:
        wait_for_first_checkpoint(proc, save, tmp_path)
        proc.kill()
        proc.wait(timeout=10)
        wait_for(lambda: not run_processes(str(save)), 15, "torchrun and the ranks to exit after kill -9")
    finally:
        kill_run(proc, save)
    steps = sorted(int(p.name) for p in save.iterdir() if p.name.isdigit())
    time.sleep(2)
    assert sorted(int(p.name) for p in save.iterdir() if p.name.isdigit()) == steps  # nothing trains on
