"""`rethinktiny resample`: score every training batch with a frozen checkpoint, keep the hard ones.

Steps (the paper's fourth recipe, one round):
1. pack the data folder into the batches InternEvo's loader draws, once, into an index beside the
   scores that every process memory-maps (`batches.py`);
2. score each batch (or a seeded random subset, `max_batches` / `fraction`) with the frozen
   model, data-parallel, resumable (`worker.py`, `scorefiles.py`); with a `reference` model the
   same ranks then score them with it too;
3. draw N0 of the scored batches without replacement with p_i = softmax(l_i / T), or by the
   excess loss l_i - r_i over the reference with a uniform floor (`sampling.py`);
4. write the chosen batches as InternEvo data plus losses.npy, selected.npy, selection.json,
   losses.png and manifest.json (`writer.py`), all or nothing; the copy resumes file by file.

On several nodes every node's launcher starts its ranks, and node 0's alone packs, gathers,
draws and writes (the scores folder and `dst` must be on a file system all nodes share).
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from rethinktiny.artifacts import check_writable, output_dir, write_manifest
from rethinktiny.checkpoint import open_model_checkpoint
from rethinktiny.config import ModelConfig
from rethinktiny.configfiles.training import TrainingConfig
from rethinktiny.cpus import available_cpus
from rethinktiny.errors import UserError
from rethinktiny.launch import WORKER_MODULE, LaunchOptions, is_writer_node, rank_command, run_ranks
from rethinktiny.resample.batches import PackedCorpus, count_batches, raise_no_batch, scan_files, write_index
from rethinktiny.resample.sampling import (DEFAULT_FLOOR, Draw, check_floor, check_temperature, excess_losses,
                                           num_to_select, resample, scored_subset, seeded_generator)
from rethinktiny.resample.scorefiles import PLAN_NAME, ScorePlan, collect_losses, plan_identity, prepare_folder
from rethinktiny.resample.spec import BatchSpec, spec_from_data_config
from rethinktiny.resample.writer import write_scores_and_selection, write_selected_data

REFERENCE_DIR = "reference"  # the reference model's scores, inside the scores folder


def read_config(path: str | os.PathLike, overrides: Sequence[str] = ()) -> TrainingConfig:
    """The training config (`TrainingConfig.from_file`, `--set` applied, checked); its model must be
    one of ours, which scoring rebuilds. The data folder is checked by the caller (`--data`)."""
    cfg = TrainingConfig.from_file(path, overrides, check_data=False)
    if cfg.model is None:
        raise UserError(f"{path}: model_type {cfg.model_type!r} is InternEvo's own; resample scores with "
                        f"rethinktiny's model types only")
    return cfg


@dataclass
class ResampleResult:
    dst: Path
    num_batches: int
    num_scored: int
    num_selected: int
    num_nonfinite: int
    mean_loss_all: float
    mean_loss_selected: float
    tokens_per_batch: int
    written: dict | None

    def summary(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


def _identity(corpus: PackedCorpus, checkpoint: Path, model: ModelConfig, cfg: TrainingConfig,
              scored: list[int] | None) -> str:
    """Digest of what the scores depend on: data files, checkpoint shards, model, dtype, batches."""
    shards = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in checkpoint.glob("model_tp*_pp*.pt"))
    files = [(f.relpath, f.num_documents, f.num_tokens) for f in corpus.files]
    return plan_identity({"data": str(corpus.folder.resolve()), "files": files, "checkpoint": str(checkpoint.resolve()),
                          "shards": shards, "model": model.to_dict(), "dtype": cfg.dtype,
                          "spec": corpus.spec.to_dict(), "label_smoothing": cfg.label_smoothing, "scored": scored})


def make_score_plan(cfg: TrainingConfig, corpus: PackedCorpus, num_batches: int, checkpoint: Path,
                    scores_dir: Path, model: ModelConfig | None = None, scored: np.ndarray | None = None) -> ScorePlan:
    """The plan the scoring ranks follow (attempt number set by `prepare_folder`).

    Args:
        cfg: the training config (dtype, label smoothing).
        corpus: the packed data, opened from its index (`write_index`).
        num_batches: batches of the corpus.
        checkpoint: the resolved step folder to score with.
        scores_dir: where the score files go.
        model: the checkpoint's shape (default: the config's model).
        scored: the batches to score (default: all).
    """
    if corpus.index is None:
        raise ValueError("make_score_plan needs a corpus opened from its index (write_index)")
    model = model or cfg.model
    subset = None if scored is None else [int(b) for b in scored]
    return ScorePlan(folder=str(scores_dir), data=str(corpus.folder.resolve()), index=str(corpus.index.resolve()),
                     checkpoint=str(checkpoint.resolve()), model=model.to_dict(), dtype=cfg.dtype,
                     spec=corpus.spec.to_dict(), label_smoothing=cfg.label_smoothing, num_batches=num_batches,
                     identity=_identity(corpus, checkpoint, model, cfg, subset), scored=subset)


def open_reference(path: str | os.PathLike, cfg: TrainingConfig) -> tuple[Path, ModelConfig]:
    """(step folder, model shape) of `--reference`: its own saved shape, else the config's; its
    vocabulary must be the scored model's, or the two losses would not be comparable."""
    from rethinktiny.checkpoint import InternEvoCheckpoint

    checkpoint, _ = open_model_checkpoint(path, InternEvoCheckpoint(path).config or cfg.model)
    if checkpoint.config.vocab_size != cfg.model.vocab_size:
        raise UserError(f"--reference {path}: a vocabulary of {checkpoint.config.vocab_size} ids, the scored model "
                        f"has {cfg.model.vocab_size}; excess losses need the same vocabulary")
    return checkpoint.folder, checkpoint.config


def run_scoring(plan_path: Path, launch: LaunchOptions, progress: bool) -> None:
    """Score the plan and the plans it chains (`next_plan`) with the launched ranks (resolved
    `launch`); one rank on one node scores in this process."""
    if launch.in_process:
        from rethinktiny.resample.worker import plan_chain, score_share, scoring_device

        for plan in plan_chain(plan_path):
            score_share(plan, 0, 1, scoring_device(0), progress)
        return
    command = rank_command(WORKER_MODULE, ["--plan", str(plan_path), *([] if progress else ["--no-progress"])], launch)
    code = run_ranks(command, "scoring")
    if code != 0:
        raise UserError(f"scoring ranks failed (exit {code}); the scores computed so far are kept in "
                        f"{plan_path.parent}, run the command again to continue")


def gather_losses(plan: ScorePlan, launch: LaunchOptions, poll_s: float = 5.0) -> np.ndarray:
    """`collect_losses`; on several nodes, waiting up to `launch.rdzv_timeout` for the last scores of
    the other nodes (torchrun's exit barrier lets node 0's launcher go after 5 minutes)."""
    deadline = time.monotonic() + (launch.rdzv_timeout if launch.nnodes > 1 else 0)
    while True:
        try:
            return collect_losses(plan)
        except UserError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(poll_s)


def _draw(losses: np.ndarray, reference: np.ndarray | None, scored: np.ndarray | None, num: int, seed: int,
          temperature: float, floor: float) -> Draw:
    """The draw among the scored batches (by excess loss with the floor when there is a reference)."""
    values = losses if reference is None else excess_losses(losses, reference)
    subset = np.arange(len(losses)) if scored is None else scored
    draw = resample(values[subset], num, seeded_generator(seed), temperature, 0.0 if reference is None else floor)
    probabilities = np.zeros(len(losses))
    probabilities[subset] = draw.probabilities
    return Draw(subset[draw.selected], probabilities, draw.num_nonfinite)


def _summary(losses: np.ndarray, draw: Draw, num_scored: int, spec: BatchSpec, dst: Path,
             written: dict | None) -> ResampleResult:
    finite = np.isfinite(losses)  # batches not scored are nan too
    return ResampleResult(dst=dst, num_batches=len(losses), num_scored=num_scored, num_selected=len(draw.selected),
                          num_nonfinite=draw.num_nonfinite, mean_loss_all=float(losses[finite].mean()),
                          mean_loss_selected=float(losses[draw.selected].mean()),
                          tokens_per_batch=spec.tokens_per_batch, written=written)


def _write_output(dst: Path, force: bool, corpus: PackedCorpus, losses: np.ndarray, draw: Draw, args: dict,
                  progress: bool, scores_dir: Path, scored: np.ndarray | None,
                  reference: np.ndarray | None) -> ResampleResult:
    """The output folder, all or nothing. Execution-only options (ranks, scores folder, dst) stay
    out of the manifest, so equal inputs give byte-identical folders however they were scored."""
    with output_dir(dst, force) as tmp:
        written = (write_selected_data(corpus, corpus.batches(), draw.selected, tmp, scores_dir / "copy", progress,
                                       workers=available_cpus()) if args["copy_data"] else None)
        write_scores_and_selection(tmp, corpus, losses, draw.selected, scored, reference)
        result = _summary(losses, draw, len(losses) if scored is None else len(scored), corpus.spec, dst, written)
        summary = {k: v for k, v in result.summary().items() if k != "dst"}
        inputs = {"config": args["config"], "data": args["data"], "checkpoint": args["ckpt"],
                  **({"reference": args["reference"]} if args["reference"] else {})}
        write_manifest(tmp, "rethinktiny resample", args, seed=args["seed"], extra={"summary": summary}, inputs=inputs)
    return result


def resample_data(config: str | os.PathLike, ckpt: str | os.PathLike, dst: str | os.PathLike,
                  data: str | os.PathLike | None = None, ratio: float | None = None, num_batches: int | None = None,
                  seed: int = 0, temperature: float = 1.0, batch_ranks: int = 1, copy_data: bool = True,
                  overrides: Sequence[str] = (), scores_dir: str | os.PathLike | None = None,
                  launch: LaunchOptions | None = None, force: bool = False, progress: bool = True,
                  max_batches: int | None = None, fraction: float | None = None,
                  reference: str | os.PathLike | None = None, floor: float = DEFAULT_FLOOR) -> ResampleResult | None:
    """Score the training batches with a frozen checkpoint and write the next round's data.

    Args:
        config: InternEvo config file (model shape, dtype, seq_len/micro_bsz/micro_num, train_folder).
        ckpt: InternEvo step folder, or its save folder (latest step), of the previous round.
        dst: output folder (written atomically; refused when it exists unless `force`).
        data: data folder to score (default: the config's data.train_folder).
        ratio: keep round(ratio * N) of the N scored batches, ratio in (0, 1]; or give `num_batches`.
        num_batches: N0, batches to keep.
        seed: seed of the draw (and of the scored subset).
        temperature: T in p_i ~ exp(l_i / T); 1 is the paper's rule.
        batch_ranks: data-parallel ranks one batch spans (1: a batch is one rank's optimizer step).
        copy_data: write the chosen rows as data (False: only the selection, for `data.sampler`).
        overrides: `--set KEY=VALUE` config overrides.
        scores_dir: where the index and partial scores live until the end (default: `.<dst>.scores`
            beside dst).
        launch: how to start the scoring ranks (default: the training launcher's rank count).
        force: replace `dst`, and restart a scores folder of a different checkpoint or data.
        progress: progress bars.
        max_batches: score only this many batches, a seeded random subset; the draw is among them.
        fraction: score only this fraction of the batches (instead of `max_batches`).
        reference: a reference model's checkpoint (same vocabulary); draw by the excess loss.
        floor: with `reference`, eps in p = (1 - eps) softmax + eps / N.

    Returns:
        The result on node 0; None on the other nodes (their ranks scored; node 0 writes).
    """
    launch = launch or LaunchOptions.from_env()
    writer = is_writer_node(launch)
    dst = check_writable(dst, force) if writer else Path(dst)
    check_temperature(temperature)  # bad flags fail before any work
    check_floor(floor)
    cfg = read_config(config, overrides)
    data = data if data is not None else cfg.data.get("train_folder")
    if not data:
        raise UserError(f"{config}: no data.train_folder; pass --data")
    checkpoint, _ = open_model_checkpoint(ckpt, cfg.model)
    reference_checkpoint = open_reference(reference, cfg) if reference else None
    scores_dir = Path(scores_dir) if scores_dir else dst.with_name(f".{dst.name}.scores")
    if not writer:  # node 0 writes the plan before its ranks join the rendezvous, so ours find it
        run_scoring(scores_dir / PLAN_NAME, launch.resolve(cfg.nproc_hint), progress)
        return None
    spec = spec_from_data_config(cfg.data, batch_ranks, source=str(config))
    if not Path(data).is_dir():
        raise UserError(f"{data}: data folder not found")
    files = scan_files(Path(data), spec)
    total = count_batches(files, spec)
    if total == 0:
        raise_no_batch(Path(data), sum(f.num_tokens // spec.packed_length for f in files),
                       sum(f.num_tokens for f in files), spec)
    scored = scored_subset(total, max_batches, fraction, seed)
    num_selected = num_to_select(total if scored is None else len(scored), ratio, num_batches)
    corpus = write_index(data, spec, scores_dir / "index", files)
    plan = _prepare_plans(cfg, corpus, total, checkpoint.folder, reference_checkpoint, scores_dir, scored, force)
    run_scoring(Path(plan.folder) / PLAN_NAME, launch.resolve(cfg.nproc_hint), progress)
    losses = gather_losses(plan, launch)
    reference_losses = gather_losses(ScorePlan.load(plan.next_plan), launch) if plan.next_plan else None
    try:
        draw = _draw(losses, reference_losses, scored, num_selected, seed, temperature, floor)
    except UserError:
        shutil.rmtree(scores_dir, ignore_errors=True)  # complete scores that cannot be used: nothing to resume
        raise
    args = {"config": str(config), "ckpt": str(checkpoint.folder), "data": str(data), "ratio": ratio,
            "num_batches": num_batches, "seed": seed, "temperature": temperature, "batch_ranks": batch_ranks,
            "copy_data": copy_data, "overrides": list(overrides), "max_batches": max_batches, "fraction": fraction,
            "reference": str(reference_checkpoint[0]) if reference else None, "floor": floor if reference else None}
    result = _write_output(dst, force, corpus, losses, draw, args, progress, scores_dir, scored, reference_losses)
    shutil.rmtree(scores_dir, ignore_errors=True)
    return result


def _prepare_plans(cfg: TrainingConfig, corpus: PackedCorpus, num_batches: int, checkpoint: Path,
                   reference: tuple[Path, ModelConfig] | None, scores_dir: Path, scored: np.ndarray | None,
                   restart: bool) -> ScorePlan:
    """The scoring plan in `scores_dir` (and the reference model's, chained after it)."""
    plan = make_score_plan(cfg, corpus, num_batches, checkpoint, scores_dir, scored=scored)
    if reference is not None:
        folder = scores_dir / REFERENCE_DIR
        prepare_folder(make_score_plan(cfg, corpus, num_batches, reference[0], folder, reference[1],
                                                scored), restart)
        plan.next_plan = str(folder / PLAN_NAME)
    return prepare_folder(plan, restart)
