"""Real InternEvo trainings on CPU: 2 processes over gloo, InternEvo's launch, ZeRO optimizer, data
loader and checkpoint manager, with rethinktiny's PANGU_PI_PRO model on packed data."""

import shutil

import pytest
import torch

from rethinktiny.checkpoint import read_model_config, save_model_only
from rethinktiny.config import get_preset

from .helpers import explain, metrics, train_tiny, weights


@pytest.fixture(scope="module")
def run_a(tmp_path_factory, tokenized_sample):
    """24 steps from random init, checkpoints at steps 20 and 24."""
    save = tmp_path_factory.mktemp("run_a")
    result = train_tiny(save, tokenized_sample, 24, "--set", "ckpt.checkpoint_every=20")
    assert result.returncode == 0, explain(result)
    return save, result


def test_trains_with_internevo_and_loss_decreases(run_a):
    save, result = run_a
    rows = metrics(save)
    assert [r["step"] for r in rows] == list(range(1, 25))
    first, last = sum(r["loss"] for r in rows[:4]) / 4, sum(r["loss"] for r in rows[-4:]) / 4
    assert last < first - 1.0, rows
    assert "step     24 | loss" in result.stdout and "training finished" in result.stdout
    # InternEvo's real components ran: its ZeRO optimizer partitioned the parameters over 2 ranks.
    assert "_partition_param_list" in result.stderr + result.stdout


def test_checkpoints_are_saved_with_model_config(run_a):
    save, _ = run_a
    for step in (20, 24):
        folder = save / str(step)
        assert (folder / "model_tp0_pp0.pt").exists() and (folder / f"{step}.step").exists()
        assert read_model_config(folder).hidden_size == 128
    state = weights(save / "24")
    assert state["tok_embeddings.weight"].shape == (4096, 128)


def test_full_resume_continues_exactly(run_a, tmp_path, tokenized_sample):
    save_a, _ = run_a
    save_b = tmp_path / "resumed"
    save_b.mkdir()
    shutil.copytree(save_a / "20", save_b / "20")
    # the metrics of a run that logged past its last checkpoint (step 20) before it died
    shutil.copy(save_a / "train_metrics.jsonl", save_b / "train_metrics.jsonl")
    result = train_tiny(save_b, tokenized_sample, 24, "--set", "ckpt.checkpoint_every=20",
                        "--set", "ckpt.auto_resume=True")
    assert result.returncode == 0, explain(result)
    assert [r["step"] for r in metrics(save_b)] == list(range(1, 25))  # each step once
    resumed = metrics(save_b)[20:]
    assert [r["step"] for r in resumed] == [21, 22, 23, 24]
    original = {r["step"]: r["loss"] for r in metrics(save_a)}
    assert [r["loss"] for r in resumed] == [original[s] for s in (21, 22, 23, 24)]


def _zero_lr_one_step(save, data, load_info):
    # lr 0 and one step: the saved step-1 weights are exactly what the run started from.
    return train_tiny(save, data, 1, "--set", f"ckpt.load_ckpt_info={load_info}", "--set", "adam.lr=0.0",
                      "--set", "lr_scheduler.eta_min=0.0", "--set", "adam.weight_decay=0.0")


def test_model_only_reload_starts_from_saved_weights(run_a, tmp_path, tokenized_sample):
    save_a, _ = run_a
    save_c = tmp_path / "reload"
    info = dict(path=f"local:{save_a / '20'}", content=("model",), ckpt_type="internevo")
    result = _zero_lr_one_step(save_c, tokenized_sample, info)
    assert result.returncode == 0, explain(result)
    loaded, saved = weights(save_c / "1"), weights(save_a / "20")
    for name in saved:
        torch.testing.assert_close(loaded[name], saved[name], rtol=0, atol=0)
    # Trained weights beat random init on the same first batch.
    assert metrics(save_c)[0]["loss"] < metrics(save_a)[0]["loss"] - 1.0


def test_inherited_load_type_checks_and_loads(run_a, tmp_path, tokenized_sample):
    save_a, _ = run_a
    cfg = read_model_config(save_a / "24")
    folder = tmp_path / "inherited"
    save_model_only(folder, weights(save_a / "24"), cfg)
    info = dict(path=str(folder), content=("model",), ckpt_type="inherited")
    result = _zero_lr_one_step(tmp_path / "from_inherited", tokenized_sample, info)
    assert result.returncode == 0, explain(result)
    loaded = weights(tmp_path / "from_inherited" / "1")
    torch.testing.assert_close(loaded["layers.3.feed_forward.w2.weight"],
                               weights(save_a / "24")["layers.3.feed_forward.w2.weight"], rtol=0, atol=0)

    wrong = tmp_path / "wrong_shape"
    small = get_preset("tiny").replace(intermediate_size=256)
    from rethinktiny.model import PanGuPi
    save_model_only(wrong, PanGuPi(small).state_dict(), small)
    info = dict(path=str(wrong), content=("model",), ckpt_type="inherited")
    result = _zero_lr_one_step(tmp_path / "from_wrong", tokenized_sample, info)
    assert result.returncode != 0
    assert "shape mismatch for layers.0.feed_forward.w1.weight: checkpoint (256, 128), model (352, 128)" in result.stderr
    assert not (tmp_path / "from_wrong" / "1").exists()
