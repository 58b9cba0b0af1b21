"""`rethinktiny resample`: score every training batch with a frozen checkpoint, keep the hard ones.

Steps (the paper's fourth recipe, one round):
1. rebuild the batches InternEvo's loader draws from the data folder (`batches.py`);
2. score each with the frozen model, data-parallel, resumable (`worker.py`, `scorefiles.py`);
3. draw N0 batches without replacement with p_i = softmax(l_i / T) (`sampling.py`);
4. write the chosen batches as InternEvo data plus losses.npy, selected.npy, selection.json,
   losses.png and manifest.json (`writer.py`), all or nothing.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from rethinktiny.artifacts import check_writable, output_dir, write_manifest
from rethinktiny.checkpoint import open_model_checkpoint
from rethinktiny.config import ModelConfig, from_internevo
from rethinktiny.dtypes import dtype_name
from rethinktiny.errors import UserError
from rethinktiny.resample.batches import PackedCorpus, require_batches
from rethinktiny.resample.launch import LaunchOptions, run_scoring_ranks
from rethinktiny.resample.sampling import Draw, check_temperature, num_to_select, resample, seeded_generator
from rethinktiny.resample.scorefiles import ScorePlan, collect_losses, plan_identity, prepare_folder
from rethinktiny.resample.spec import BatchSpec, spec_from_data_config
from rethinktiny.resample.writer import write_scores_and_selection, write_selected_data


@dataclass
class TrainingConfig:
    """The parts of an InternEvo config that decide batches and scores."""

    path: Path
    model: ModelConfig
    data: dict[str, Any]
    dtype: str
    label_smoothing: float


def read_training_config(path: str | os.PathLike, overrides: Sequence[str] = ()) -> TrainingConfig:
    """Load an InternEvo config file (with `--set` overrides applied) for scoring.

    Args:
        path: InternEvo Python config file.
        overrides: `KEY=VALUE` items, as `start_finetune.py --set` takes them.
    """
    from rethinktiny.configfiles.load import apply_overrides, load_config_file

    config = load_config_file(path)
    apply_overrides(config, list(overrides))
    for key in ("model", "data"):
        if not isinstance(config.get(key), dict):
            raise UserError(f"{path}: no {key}=dict(...) entry")
    model = from_internevo(dict(config["model"]), source=f"{path}: model")
    # InternEvo's default is fp16
    dtype = dtype_name(config["model"].get("dtype", "torch.float16"), flag=f"{path}: model.dtype")
    loss = config.get("loss") or {}
    return TrainingConfig(Path(path), model, dict(config["data"]), dtype, float(loss.get("label_smoothing", 0) or 0))


@dataclass
class ResampleResult:
    dst: Path
    num_batches: int
    num_selected: int
    num_nonfinite: int
    mean_loss_all: float
    mean_loss_selected: float
    tokens_per_batch: int
    written: dict | None

    def summary(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


def _identity(corpus: PackedCorpus, checkpoint: Path, cfg: TrainingConfig) -> str:
    """Digest of what the scores depend on: data files, checkpoint shards, model, dtype, batches."""
    shards = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in checkpoint.glob("model_tp*_pp*.pt"))
    files = [(f.relpath, f.num_documents, f.num_tokens) for f in corpus.files]
    return plan_identity({"data": str(corpus.folder.resolve()), "files": files, "checkpoint": str(checkpoint.resolve()),
                          "shards": shards, "model": cfg.model.to_dict(), "dtype": cfg.dtype,
                          "spec": corpus.spec.to_dict(), "label_smoothing": cfg.label_smoothing})


def make_score_plan(cfg: TrainingConfig, corpus: PackedCorpus, num_batches: int, checkpoint: Path,
                    scores_dir: Path) -> ScorePlan:
    """The plan the scoring ranks follow (attempt number set by `prepare_folder`)."""
    return ScorePlan(folder=str(scores_dir), data=str(corpus.folder.resolve()), checkpoint=str(checkpoint.resolve()),
                     model=cfg.model.to_dict(), dtype=cfg.dtype, spec=corpus.spec.to_dict(),
                     label_smoothing=cfg.label_smoothing, num_batches=num_batches,
                     identity=_identity(corpus, checkpoint, cfg))


def score_batches(cfg: TrainingConfig, corpus: PackedCorpus, num_batches: int, checkpoint: Path,
                  scores_dir: Path, launch: LaunchOptions, restart: bool, progress: bool) -> np.ndarray:
    """Losses of every batch (float64, batch order), scored by the launched ranks; resumable."""
    prepare_folder(make_score_plan(cfg, corpus, num_batches, checkpoint, scores_dir), restart)
    run_scoring_ranks(scores_dir / "plan.json", launch.resolve(cfg.path), progress)
    return collect_losses(scores_dir, num_batches)


def _summary(losses: np.ndarray, draw: Draw, spec: BatchSpec, dst: Path, written: dict | None) -> ResampleResult:
    finite = np.isfinite(losses)
    return ResampleResult(dst=dst, num_batches=len(losses), num_selected=len(draw.selected),
                          num_nonfinite=draw.num_nonfinite, mean_loss_all=float(losses[finite].mean()),
                          mean_loss_selected=float(losses[draw.selected].mean()),
                          tokens_per_batch=spec.tokens_per_batch, written=written)


def _write_output(dst: Path, force: bool, corpus: PackedCorpus, batches: np.ndarray, losses: np.ndarray,
                  draw: Draw, args: dict, progress: bool) -> ResampleResult:
    """The output folder, all or nothing. Execution-only options (ranks, scores folder, dst) stay
    out of the manifest, so equal inputs give byte-identical folders however they were scored."""
    with output_dir(dst, force) as tmp:
        written = write_selected_data(corpus, batches, draw.selected, tmp, progress) if args["copy_data"] else None
        write_scores_and_selection(tmp, corpus, losses, draw.selected)
        result = _summary(losses, draw, corpus.spec, dst, written)
        summary = {k: v for k, v in result.summary().items() if k != "dst"}
        write_manifest(tmp, "rethinktiny resample", args, seed=args["seed"], extra={"summary": summary},
                       inputs={"config": args["config"], "data": args["data"], "checkpoint": args["ckpt"]})
    return result


def resample_data(config: str | os.PathLike, ckpt: str | os.PathLike, dst: str | os.PathLike,
                  data: str | os.PathLike | None = None, ratio: float | None = None, num_batches: int | None = None,
                  seed: int = 0, temperature: float = 1.0, batch_ranks: int = 1, copy_data: bool = True,
                  overrides: Sequence[str] = (), scores_dir: str | os.PathLike | None = None,
                  launch: LaunchOptions | None = None, force: bool = False, progress: bool = True) -> ResampleResult:
    """Score all training batches with a frozen checkpoint and write the next round's data.

    Args:
        config: InternEvo config file (model shape, dtype, seq_len/micro_bsz/micro_num, train_folder).
        ckpt: InternEvo step folder, or its save folder (latest step), of the previous round.
        dst: output folder (written atomically; refused when it exists unless `force`).
        data: data folder to score (default: the config's data.train_folder).
        ratio: keep round(ratio * N) batches, ratio in (0, 1]; or give `num_batches`.
        num_batches: N0, batches to keep.
        seed: seed of the draw.
        temperature: T in p_i ~ exp(l_i / T); 1 is the paper's rule.
        batch_ranks: data-parallel ranks one batch spans (1: a batch is one rank's optimizer step).
        copy_data: write the chosen rows as data (False: only the selection, for `data.sampler`).
        overrides: `--set KEY=VALUE` config overrides.
        scores_dir: where partial scores live until the end (default: `.<dst>.scores` beside dst).
        launch: how to start the scoring ranks (default: the training launcher's rank count).
        force: replace `dst`, and restart a scores folder of a different checkpoint or data.
        progress: progress bars.
    """
    dst = check_writable(dst, force)
    check_temperature(temperature)  # a bad --temperature fails before any work
    cfg = read_training_config(config, overrides)
    data = data if data is not None else cfg.data.get("train_folder")
    if not data:
        raise UserError(f"{config}: no data.train_folder; pass --data")
    corpus = PackedCorpus(data, spec_from_data_config(cfg.data, batch_ranks, source=str(config)))
    batches = require_batches(corpus)
    num_selected = num_to_select(len(batches), ratio, num_batches)
    checkpoint, _ = open_model_checkpoint(ckpt, cfg.model)
    scores_dir = Path(scores_dir) if scores_dir else dst.with_name(f".{dst.name}.scores")
    losses = score_batches(cfg, corpus, len(batches), checkpoint.folder, scores_dir, launch or LaunchOptions(),
                           force, progress)
    try:
        draw = resample(losses, num_selected, seeded_generator(seed), temperature)
    except UserError:
        shutil.rmtree(scores_dir, ignore_errors=True)  # complete scores that cannot be used: nothing to resume
        raise
    args = {"config": str(config), "ckpt": str(checkpoint.folder), "data": str(data), "ratio": ratio,
            "num_batches": num_batches, "seed": seed, "temperature": temperature, "batch_ranks": batch_ranks,
            "copy_data": copy_data, "overrides": list(overrides)}
    result = _write_output(dst, force, corpus, batches, losses, draw, args, progress)
    shutil.rmtree(scores_dir, ignore_errors=True)
    return result
