"""Distillation in InternEvo's real trainer (2 CPU ranks, configs/tiny_cpu.py): a student identical
to its teacher has KD loss 0 at step 1, from the online teacher and from the teacher cache; a random
student's KD loss falls; the log line and train_metrics.jsonl carry kd_loss and ce_loss."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rethinktiny.checkpoint import save_model_only
from rethinktiny.config import get_preset
from rethinktiny.launch import free_port
from rethinktiny.model import PanGuPi

from .helpers import TINY_CONFIG, explain, metrics, train_tiny


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """The tiny shape with random weights and a sharp output layer (a confident teacher)."""
    cfg = get_preset("tiny")
    torch.manual_seed(0)
    model = PanGuPi(cfg)
    with torch.no_grad():
        model.output.weight.mul_(40)
    folder = tmp_path_factory.mktemp("teacher") / "step"
    save_model_only(folder, model.state_dict(), cfg)
    return folder


def _distill(teacher) -> str:
    return f"distill=dict(teacher={str(teacher)!r}, kd_weight=1.0, ce_weight=0.0, temperature=1.0)"


def test_student_identical_to_its_teacher_has_kd_loss_zero(tmp_path, tokenized_sample, teacher):
    save = tmp_path / "same"
    start = f"ckpt.load_ckpt_info=dict(path='local:{teacher}', content=('model',), ckpt_type='internevo')"
    result = train_tiny(save, tokenized_sample, 1, "--set", _distill(teacher), "--set", start,
                        "--set", "ckpt.checkpoint_every=100")
    assert result.returncode == 0, explain(result)
    first = metrics(save)[0]
    assert first["kd_loss"] == pytest.approx(0.0, abs=1e-4), first
    assert first["loss"] == pytest.approx(0.0, abs=1e-4) and first["ce_loss"] > 1.0  # the loss is the KD term
    assert "| kd_loss 0.0000" in result.stdout


def test_identical_student_from_the_teacher_cache_has_kd_loss_zero_and_every_position_hits(
        tmp_path, tokenized_sample, teacher):
    """`rethinktiny distill cache` (2 ranks, the default top-k summary), then training from it alone."""
    from rethinktiny.distill.cache import TeacherCache

    cache = tmp_path / "cache"
    built = subprocess.run([sys.executable, "-m", "rethinktiny", "distill", "cache", "--teacher", str(teacher), "--data",
                            str(tokenized_sample), "--dst", str(cache), "--config", str(TINY_CONFIG),
                            "--nproc-per-node", "2", "--no-progress"], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, explain(built)
    assert TeacherCache(cache).mapped  # the launcher merged the units into the memory-mapped index
    save = tmp_path / "from_cache"
    start = f"ckpt.load_ckpt_info=dict(path='local:{teacher}', content=('model',), ckpt_type='internevo')"
    result = train_tiny(save, tokenized_sample, 2, "--set", f"distill=dict(cache={str(cache)!r})", "--set", start,
                        "--set", "ckpt.checkpoint_every=100")
    assert result.returncode == 0, explain(result)
    first = metrics(save)[0]
    assert first["cache_hits"] == 1.0  # round 1 packs its rows as the cache did: every context is there
    assert first["kd_loss"] == pytest.approx(0.0, abs=2e-3), first  # float16 log-probabilities in the cache


def test_random_student_kd_loss_falls(tmp_path, tokenized_sample, teacher):
    save = tmp_path / "random"
    result = train_tiny(save, tokenized_sample, 5, "--set", _distill(teacher), "--set", "ckpt.checkpoint_every=100")
    assert result.returncode == 0, explain(result)
    kd = [record["kd_loss"] for record in metrics(save)]
    assert kd[0] > 1.0 and kd[-1] < kd[0] - 0.2, kd
    assert "teacher_mass" not in metrics(save)[0]  # same vocabulary: no token map, nothing renormalised


@pytest.mark.skipif(not os.environ.get("RETHINKTINY_INTERNEVO_ROOT"),
                    reason="RETHINKTINY_INTERNEVO_ROOT (an InternEvo tree) not set; make test-internevo-newest sets it")
def test_internevo_own_train_py_distils_through_the_registration(tmp_path, tokenized_sample, teacher):
    """InternEvo's root train.py builds its own loss; the registered builder and Engine.criterion add KD."""
    root = Path(os.environ["RETHINKTINY_INTERNEVO_ROOT"])
    config = tmp_path / "distill_train_py.py"
    config.write_text(f"exec(open({str(TINY_CONFIG)!r}).read())\n"
                      f"data['train_folder'] = {str(tokenized_sample)!r}\n"
                      "data['total_steps'] = 3\n"
                      f"ckpt['save_ckpt_folder'] = {'local:' + str(tmp_path / 'ckpt')!r}\n"
                      "ckpt['checkpoint_every'] = 100\n"
                      f"{_distill(teacher)}\n")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), "train.py", "--config", str(config), "--launcher", "torch"]
    result = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, explain(result)
    log = result.stdout + result.stderr
    assert "distilling from teacher" in log
    losses = [float(x) for x in re.findall(r"loss=([0-9.]+)", log)]
    assert len(losses) >= 3 and losses[-1] < losses[0], losses  # InternEvo's loss is the KD term: it falls
