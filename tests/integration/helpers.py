"""Run real 2-process InternEvo trainings of configs/tiny_cpu.py for the integration tests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
TINY_CONFIG = REPO / "configs" / "tiny_cpu.py"


def start_finetune(*args: str, config: Path = TINY_CONFIG, cwd: Path = REPO, timeout: int = 600,
                   script: Path | None = None) -> subprocess.CompletedProcess:
    script = script or REPO / "start_finetune.py"
    command = [sys.executable, str(script), "--config", str(config), *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def train_tiny(save: Path, train_folder: Path, steps: int, *extra: str, **kwargs) -> subprocess.CompletedProcess:
    """A 2-rank tiny run saving to `save` (sets ckpt folder, data folder and steps)."""
    return start_finetune("--set", f"ckpt.save_ckpt_folder=local:{save}", "--set", f"data.train_folder={train_folder}",
                          "--set", f"data.total_steps={steps}", *extra, **kwargs)


def metrics(save: Path) -> list[dict]:
    lines = (save / "train_metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def weights(step_folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(step_folder / "model_tp0_pp0.pt", map_location="cpu", weights_only=True)


def explain(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\n--- stdout ---\n{result.stdout[-4000:]}\n--- stderr ---\n{result.stderr[-6000:]}"
