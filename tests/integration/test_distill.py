"""Distillation in InternEvo's real trainer (2 CPU ranks, configs/tiny_cpu.py): a student identical
to its teacher has KD loss 0 at step 1; a random student's KD loss falls; the log line and
train_metrics.jsonl carry kd_loss and ce_loss."""

import pytest
import torch

from rethinktiny.checkpoint import save_model_only
from rethinktiny.config import get_preset
from rethinktiny.model import PanGuPi

from .helpers import explain, metrics, train_tiny


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


def test_random_student_kd_loss_falls(tmp_path, tokenized_sample, teacher):
    save = tmp_path / "random"
    result = train_tiny(save, tokenized_sample, 5, "--set", _distill(teacher), "--set", "ckpt.checkpoint_every=100")
    assert result.returncode == 0, explain(result)
    kd = [record["kd_loss"] for record in metrics(save)]
    assert kd[0] > 1.0 and kd[-1] < kd[0] - 0.2, kd
    assert "teacher_mass" not in metrics(save)[0]  # same vocabulary: no token map, nothing renormalised
