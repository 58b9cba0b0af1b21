"""One scoring rank: `python -m rethinktiny.resample.worker --plan SCORES/plan.json`.

Started by `rethinktiny resample` under torchrun or srun (or called in-process for one rank).
Rank r of W scores every W-th batch still unscored by earlier attempts, forward-only and without
gradients, and appends each loss to its own score file as soon as it is computed. Ranks never
communicate: the parent gathers the files in batch order once all ranks have exited.
"""

from __future__ import annotations

import os
import resource
import sys
import time
import traceback

import torch
from tqdm import tqdm

from rethinktiny.checkpoint import load_model
from rethinktiny.config import ModelConfig
from rethinktiny.dtypes import use_matmul_precision
from rethinktiny.errors import UserError
from rethinktiny.launch import exit_with_parent
from rethinktiny.resample.batches import PackedCorpus, RowReader
from rethinktiny.resample.scorefiles import ScoreAppender, ScorePlan, read_scores
from rethinktiny.resample.scoring import batch_loss
from rethinktiny.resample.spec import BatchSpec


def rank_and_world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's or Slurm's environment; (0, 1, 0) alone."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        return int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0))
    return 0, 1, 0


def scoring_device(local_rank: int) -> torch.device:
    """This rank's GPU, made the current device (kernels and allocations not placed explicitly,
    e.g. flash-attn's workspace, would otherwise all land on GPU 0); the CPU without one."""
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


def batches_to_score(plan: ScorePlan, rank: int, world: int) -> list[int]:
    """This rank's share of the plan's batches that no earlier attempt scored."""
    done = read_scores(plan.folder, before_attempt=plan.attempt)
    return [b for b in plan.batch_numbers() if b not in done][rank::world]


def plan_chain(plan_path: str | os.PathLike) -> list[ScorePlan]:
    """The plan and those it names as `next_plan` (the reference model's), in scoring order."""
    plans = [ScorePlan.load(plan_path)]
    while plans[-1].next_plan:
        plans.append(ScorePlan.load(plans[-1].next_plan))
    return plans


def score_share(plan: ScorePlan, rank: int, world: int, device: torch.device | str = "cpu",
                progress: bool = True) -> int:
    """Score this rank's share of the plan's batches; returns how many it scored.

    Args:
        plan: the scoring plan (scores folder, checkpoint, data, batch settings).
        rank, world: this rank and the number of ranks.
        device: where the model runs.
        progress: show a progress bar (rank 0 only).
    """
    spec = BatchSpec.from_dict(plan.spec)
    corpus = PackedCorpus.open_index(plan.index)  # memory-mapped: a rank holds only what it reads
    batches = corpus.batches()
    if len(batches) != plan.num_batches:
        raise UserError(f"{plan.index}: has {len(batches)} batches, the plan {plan.num_batches}; "
                        f"the data changed while scoring")
    todo = batches_to_score(plan, rank, world)
    use_matmul_precision(plan.dtype)
    model = load_model(plan.checkpoint, ModelConfig.from_dict(plan.model), plan.dtype, device)
    start = time.perf_counter()
    with RowReader(corpus) as reader, ScoreAppender(plan.folder, plan.attempt, rank) as out:
        for batch in tqdm(todo, desc=f"scoring ({world} rank{'s' if world > 1 else ''})", unit="batch",
                          disable=not progress or rank != 0):
            rows = [reader.row(int(row)) for row in batches[batch]]
            out.append(batch, batch_loss(model, rows, plan.label_smoothing))
    if todo:  # steady-state rate (model loading excluded); bench/score_throughput.py reads this line
        seconds = time.perf_counter() - start
        tokens = len(todo) * spec.tokens_per_batch
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux; bench/resample_memory.py
        print(f"[rethinktiny] scoring rank {rank}: {len(todo)} batches, {tokens} tokens in {seconds:.2f} s "
              f"({tokens / seconds:.1f} tokens/s), peak RSS {peak:.0f} MiB", flush=True)
    return len(todo)


def main(argv: list[str] | None = None) -> int:
    exit_with_parent()  # a rank outlives neither torchrun nor the launcher
    from rethinktiny.cli.ranks import scoring_rank_args

    args = scoring_rank_args(argv)
    rank, world, local_rank = rank_and_world()
    try:
        device = scoring_device(local_rank)
        for plan in plan_chain(args.plan):
            score_share(plan, rank, world, device, args.progress)
    except UserError as err:
        print(f"[rethinktiny] scoring rank {rank}: error: {err}", file=sys.stderr, flush=True)
        return 2
    except Exception:  # noqa: BLE001 - every failure must reach the exit code, with its rank
        print(f"[rethinktiny] scoring rank {rank} failed:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
