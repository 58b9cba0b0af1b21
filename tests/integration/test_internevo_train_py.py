"""The seed's literal workflow: InternEvo's own `train.py`, run from the root of an InternEvo tree,
trains a rethinktiny config (PANGU_PI_PRO on CPU through our accelerator), saves a checkpoint that
records its RoPE layout, and a broken config makes it exit non-zero.

The tree comes from `RETHINKTINY_INTERNEVO_ROOT` (set by `make test-internevo-newest`: 9a2a30e's
train.py with the 0.4.9 wheel, 47d0f54's with its own package); without it these tests skip.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rethinktiny.checkpoint import read_qk_interleaved

from .helpers import TINY_CONFIG, explain, metrics, train_tiny

ROOT = os.environ.get("RETHINKTINY_INTERNEVO_ROOT")
pytestmark = pytest.mark.skipif(not ROOT, reason="RETHINKTINY_INTERNEVO_ROOT (an InternEvo tree) not set; "
                                                 "make test-internevo-newest sets it")
STEPS = 3


def _config(tmp_path: Path, train_folder: Path, save: Path, **model) -> Path:
    """configs/tiny_cpu.py with the data, save folder and steps of this test (and model changes)."""
    path = tmp_path / "tiny_train_py.py"
    path.write_text(f"exec(open({str(TINY_CONFIG)!r}).read())\n"
                    f"data['train_folder'] = {str(train_folder)!r}\n"
                    f"data['total_steps'] = {STEPS}\n"
                    f"ckpt['save_ckpt_folder'] = {'local:' + str(save)!r}\n"
                    f"ckpt['checkpoint_every'] = {STEPS}\n"
                    + "".join(f"model[{k!r}] = {v!r}\n" for k, v in model.items()))
    return path


def _internevo_train_py(config: Path) -> subprocess.CompletedProcess:
    root = Path(ROOT)
    assert (root / "train.py").is_file(), f"{root}: no train.py"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(_free_port()), "train.py", "--config", str(config), "--launcher", "torch"]
    return subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=600)


def _free_port() -> int:
    from rethinktiny.launch import free_port

    return free_port()


def test_internevo_train_py_trains_our_config(tmp_path, tokenized_sample):
    save = tmp_path / "ckpt"
    result = _internevo_train_py(_config(tmp_path, tokenized_sample, save))
    assert result.returncode == 0, explain(result)
    log = result.stdout + result.stderr
    assert "building PANGU_PI_PRO tiny" in log
    # InternEvo's trainer logs each step's gradient norm (over all ranks, before clipping).
    theirs = [round(float(x), 6) for x in re.findall(r"grad_norm=\{'0_default': ([0-9.]+)", log)]
    assert len(theirs) == STEPS, log[-3000:]
    step = save / str(STEPS)
    assert (step / "model_tp0_pp0.pt").exists() and (step / "model_config.pt").exists()
    assert read_qk_interleaved(step) is True  # our config's qk_interleaved=True, in InternEvo's own file
    # rethinktiny's training entry trains the same steps: the same gradient norms to 6 places.
    ours = train_tiny(tmp_path / "ours", tokenized_sample, STEPS)
    assert ours.returncode == 0, explain(ours)
    assert [r["grad_norm"] for r in metrics(tmp_path / "ours")] == theirs


def test_broken_config_exits_non_zero(tmp_path, tokenized_sample):
    # InternEvo's script catches the builder's error, logs it and would exit 0 without our patch.
    result = _internevo_train_py(_config(tmp_path, tokenized_sample, tmp_path / "ckpt", num_attention_heads=3))
    assert result.returncode != 0, explain(result)
    assert "hidden_size 128 is not divisible by num_attention_heads 3" in result.stdout + result.stderr
    assert not (tmp_path / "ckpt" / str(STEPS)).exists()
