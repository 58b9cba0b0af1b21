"""How many CPUs this process may use, which on a cluster is rarely `os.cpu_count()`.

`os.cpu_count()` is every core of the node. A Slurm job step or a container usually gets a few of
them: through the affinity mask (taskset, Slurm's task binding), through `SLURM_CPUS_PER_TASK`
(the allocation, also where binding is off), or through a cgroup CPU quota (docker `--cpus`,
Kubernetes limits) that throttles a process running more threads than its quota. Worker counts
sized to the whole node oversubscribe the allocation; the smallest of the three is what we may use.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_V2_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1_QUOTA = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
CGROUP_V1_PERIOD = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")


def _affinity_cpus() -> int | None:
    try:
        return len(os.sched_getaffinity(0)) or None
    except (AttributeError, OSError):  # not on Linux
        return None


def _slurm_cpus() -> int | None:
    value = os.environ.get("SLURM_CPUS_PER_TASK", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def cgroup_quota_cpus(cpu_max: Path = CGROUP_V2_CPU_MAX, v1_quota: Path = CGROUP_V1_QUOTA,
                      v1_period: Path = CGROUP_V1_PERIOD) -> int | None:
    """CPUs a cgroup quota allows (rounded up), or None without a quota.

    Args:
        cpu_max: cgroup v2 `cpu.max` ("<quota> <period>" or "max <period>").
        v1_quota, v1_period: cgroup v1 `cpu.cfs_quota_us` (-1: none) and `cpu.cfs_period_us`.
    """
    try:
        quota, period = cpu_max.read_text().split()[:2]
    except (OSError, ValueError):
        try:
            quota, period = v1_quota.read_text().strip(), v1_period.read_text().strip()
        except OSError:
            return None
    if quota in ("max", "-1") or not quota.lstrip("-").isdigit() or not period.isdigit() or int(period) <= 0:
        return None
    return max(1, math.ceil(int(quota) / int(period))) if int(quota) > 0 else None


def available_cpus() -> int:
    """CPUs this process may use: the smallest of its affinity mask, `SLURM_CPUS_PER_TASK` and the
    cgroup quota (each where set), else `os.cpu_count()`; at least 1."""
    limits = [n for n in (_affinity_cpus(), _slurm_cpus(), cgroup_quota_cpus()) if n]
    return max(1, min(limits) if limits else (os.cpu_count() or 1))
