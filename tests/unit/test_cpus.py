"""available_cpus(): the CPUs this process may use, not the node's."""

import os

import pytest

from rethinktiny.cpus import available_cpus, cgroup_quota_cpus


def test_affinity_and_slurm_limit_the_count(monkeypatch):
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    assert 1 <= available_cpus() <= len(os.sched_getaffinity(0))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5})
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr("rethinktiny.cpus.cgroup_quota_cpus", lambda: None)
    assert available_cpus() == 6  # taskset / Slurm binding, not the 64 of the node
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "4")
    assert available_cpus() == 4
    monkeypatch.setattr("rethinktiny.cpus.cgroup_quota_cpus", lambda: 2)
    assert available_cpus() == 2


@pytest.mark.parametrize("text, expected", [("max 100000", None), ("250000 100000", 3), ("50000 100000", 1),
                                            ("400000 100000\n", 4)])
def test_cgroup_v2_quota(tmp_path, text, expected):
    (tmp_path / "cpu.max").write_text(text)
    assert cgroup_quota_cpus(tmp_path / "cpu.max", tmp_path / "none", tmp_path / "none") == expected


def test_cgroup_v1_quota(tmp_path):
    (tmp_path / "quota").write_text("-1\n")
    (tmp_path / "period").write_text("100000\n")
    assert cgroup_quota_cpus(tmp_path / "none", tmp_path / "quota", tmp_path / "period") is None
    (tmp_path / "quota").write_text("150000\n")
    assert cgroup_quota_cpus(tmp_path / "none", tmp_path / "quota", tmp_path / "period") == 2
