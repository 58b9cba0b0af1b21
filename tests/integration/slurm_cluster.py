"""A single-node Slurm cluster on localhost, started from Debian's packages for one test session.

Works without systemd or cgroups: proctrack/linuxproc, task/none, select/cons_tres. munged runs
as the `munge` user with /run/munge created first; slurmctld and slurmd write PID files in the
cluster's own folder, and only those processes are stopped afterwards.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
MUNGED_PID = "/run/munge/rethinktiny-test-munged.pid"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_packages() -> None:
    """Install the Slurm and munge packages if missing (needs root and Debian's package mirror)."""
    if shutil.which("slurmctld") and shutil.which("slurmd") and shutil.which("sbatch") and shutil.which("munged"):
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=600)
    subprocess.run(["apt-get", "install", "-y", "-qq", *PACKAGES], check=True, env=env, timeout=900)


SLURM_CONF = """\
ClusterName=rethinktiny
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


class LocalSlurm:
    def __init__(self, root: Path, cpus: int = 2) -> None:
        self.root = root
        self.conf = root / "slurm.conf"
        self.cpus = cpus
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self._started_munged = False

    def start(self) -> "LocalSlurm":
        for sub in ("state", "spool"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.conf.write_text(SLURM_CONF.format(root=self.root, cpus=self.cpus, ctld_port=_free_port(),
                                               slurmd_port=_free_port()))
        self._start_munged()
        subprocess.run(["slurmctld", "-c", "-f", str(self.conf)], check=True, env=self.env, timeout=60)
        subprocess.run(["slurmd", "-N", "localhost", "-f", str(self.conf)], check=True, env=self.env, timeout=60)
        self._wait_for_idle_node()
        return self

    def _start_munged(self) -> None:
        if subprocess.run(["munge", "-n"], capture_output=True).returncode == 0:
            return  # a munged is already running; leave it alone
        Path("/run/munge").mkdir(parents=True, exist_ok=True)
        shutil.chown("/run/munge", "munge", "munge")
        # munged runs as `munge`, which cannot read root's temporary folders: its PID file lives in
        # its own run directory.
        subprocess.run(["runuser", "-u", "munge", "--", "munged", "--pid-file", MUNGED_PID], check=True, timeout=60)
        self._started_munged = True

    def _wait_for_idle_node(self, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            state = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env=self.env)
            if state.stdout.strip() == "idle":
                return
            time.sleep(0.5)
        raise RuntimeError(f"slurm node never became idle; slurmctld log:\n{self.log('slurmctld')}")

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text()[-4000:] if path.exists() else "(no log)"

    def sbatch(self, script: Path, *args: str, cwd: Path, env: dict | None = None, options: tuple[str, ...] = ()) -> int:
        """Submit `script` with `args`; `options` are sbatch's own (they override the #SBATCH lines)."""
        result = subprocess.run(["sbatch", "--parsable", f"--chdir={cwd}", f"--output={self.root}/job-%j.out",
                                 *options, str(script), *args], capture_output=True, text=True, check=True,
                                env={**self.env, **(env or {})}, cwd=cwd)
        return int(result.stdout.strip().split(";")[0])

    def wait(self, job_id: int, timeout: float) -> str:
        """The job's final state (COMPLETED, FAILED, ...); cancels it on timeout."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            out = subprocess.run(["scontrol", "show", "job", str(job_id)], capture_output=True, text=True,
                                 env=self.env).stdout
            state = next((f.split("=", 1)[1] for f in out.split() if f.startswith("JobState=")), "UNKNOWN")
            if state not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "UNKNOWN"):
                return state
            time.sleep(1)
        subprocess.run(["scancel", str(job_id)], env=self.env)
        return "TIMEOUT"

    def job_output(self, job_id: int) -> str:
        path = self.root / f"job-{job_id}.out"
        return path.read_text() if path.exists() else "(no output)"

    def stop(self) -> None:
        pid_files = [self.root / "slurmd.pid", self.root / "slurmctld.pid"]
        if self._started_munged:
            pid_files.append(Path(MUNGED_PID))
        for pid_file in pid_files:
            if pid_file.exists():
                try:
                    os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)
                except (ProcessLookupError, ValueError):
                    pass
