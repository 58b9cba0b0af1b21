"""Which batches the next round trains on: a softmax over batch losses, drawn without replacement.

The paper's rule: p_i = exp(l_i) / sum_j exp(l_j), then `torch.multinomial(p, N0,
replacement=False)`. A temperature T generalises it (p_i proportional to exp(l_i / T); T -> inf is
uniform). Probabilities are formed in float64 with the log-sum-exp shift, so losses near 10 or
far above never overflow; batches whose loss is not finite (nan/inf from a diverged model) get
probability 0 and are counted, never drawn.

With a reference model (`resample --reference`, data selection against a reference as in RHO-1 or
Sheared-LLaMA) the draw is by the excess loss l_i - r_i, and the softmax is mixed with the
uniform distribution, p_i = (1 - eps) softmax_i + eps / N, so no batch's probability collapses
to zero however far its excess lies below the others' (the `floor` eps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from rethinktiny.errors import UserError

if TYPE_CHECKING:  # torch is imported where it is used: the CLI reads DEFAULT_FLOOR to declare --floor
    import torch


@dataclass
class Draw:
    """The drawn batches (ascending batch numbers) and what was left out."""

    selected: np.ndarray  # int64, sorted ascending
    probabilities: np.ndarray  # float64 per batch, 0 for non-finite losses
    num_nonfinite: int


def num_to_select(num_batches: int, ratio: float | None = None, count: int | None = None) -> int:
    """N0 from `--ratio` (N0 = round(ratio * N), at least 1) or `--num-batches`.

    Args:
        num_batches: N, the batches available.
        ratio: fraction of batches to keep, in (0, 1].
        count: number of batches to keep, 1..N.
    """
    if (ratio is None) == (count is None):
        raise UserError("give exactly one of --ratio and --num-batches")
    if ratio is not None:
        if not (isinstance(ratio, (int, float)) and 0 < ratio <= 1) or math.isnan(ratio):
            raise UserError(f"--ratio must be in (0, 1], got {ratio}")
        return max(1, int(round(ratio * num_batches)))
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise UserError(f"--num-batches must be a positive integer, got {count!r}")
    if count > num_batches:
        raise UserError(f"--num-batches {count} is more than the {num_batches} batches in the data")
    return count


def scored_subset(num_batches: int, max_batches: int | None = None, fraction: float | None = None,
                  seed: int = 0) -> np.ndarray | None:
    """The batches to score (sorted) when `--max-batches` or `--fraction` asks for fewer than all,
    a random subset seeded by `seed`; None when every batch is scored.

    Args:
        num_batches: N, the batches of the corpus.
        max_batches: score at most this many.
        fraction: score round(fraction * N) of them (at least 1), fraction in (0, 1].
        seed: seed of the subset (the draw's seed; its own stream).
    """
    if max_batches is not None and fraction is not None:
        raise UserError("give at most one of --max-batches and --fraction")
    if max_batches is not None:
        if isinstance(max_batches, bool) or not isinstance(max_batches, int) or max_batches < 1:
            raise UserError(f"--max-batches must be a positive integer, got {max_batches!r}")
        count = max_batches
    elif fraction is not None:
        if not (isinstance(fraction, (int, float)) and 0 < fraction <= 1) or math.isnan(fraction):
            raise UserError(f"--fraction must be in (0, 1], got {fraction}")
        count = max(1, int(round(fraction * num_batches)))
    else:
        return None
    if count >= num_batches:
        return None
    return np.sort(np.random.RandomState(seed).choice(num_batches, count, replace=False)).astype(np.int64)


def check_temperature(temperature: float) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
            temperature > 0 and math.isfinite(temperature)):
        raise UserError(f"--temperature must be a positive finite number, got {temperature}")


DEFAULT_FLOOR = 0.05  # with --reference: at least 5% of the draw's probability mass is spread uniformly


def check_floor(floor: float) -> None:
    if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not 0 <= floor < 1:
        raise UserError(f"--floor must be in [0, 1), got {floor}")


def excess_losses(losses: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """l_i - r_i per batch (nan where either is not finite)."""
    excess = np.asarray(losses, dtype=np.float64) - np.asarray(reference, dtype=np.float64)
    excess[~(np.isfinite(losses) & np.isfinite(reference))] = np.nan
    return excess


def softmax_probabilities(losses: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """p_i proportional to exp(l_i / T) in float64; 0 where l_i is not finite.

    Args:
        losses: per-batch losses (any float dtype).
        temperature: T > 0.
    """
    check_temperature(temperature)
    logits = np.asarray(losses, dtype=np.float64) / temperature
    finite = np.isfinite(logits)
    if not finite.any():
        raise UserError(f"all {len(logits)} batch losses are non-finite (nan/inf); the checkpoint is unusable")
    shifted = np.where(finite, logits - logits[finite].max(), -np.inf)  # log-sum-exp shift: max term is 1
    weights = np.exp(shifted)
    return weights / weights.sum()


def resample(losses: np.ndarray, num: int, generator: torch.Generator, temperature: float = 1.0,
             floor: float = 0.0) -> Draw:
    """Draw `num` distinct batches with probability proportional to exp(loss / temperature).

    Args:
        losses: per-batch losses (or excess losses); non-finite ones are never drawn.
        num: N0, how many batches to draw.
        generator: seeded torch generator (the draw is reproducible from its seed).
        temperature: T > 0 (1 is the paper's rule).
        floor: eps in p = (1 - eps) softmax + eps / N over the N finite batches (0: the paper's rule).
    """
    check_floor(floor)
    probabilities = softmax_probabilities(losses, temperature)
    if floor:
        finite = np.isfinite(np.asarray(losses, dtype=np.float64))
        probabilities = (1 - floor) * probabilities + floor * finite / finite.sum()
    num_nonfinite = int((~np.isfinite(np.asarray(losses, dtype=np.float64))).sum())
    drawable = int((probabilities > 0).sum())
    if num > len(probabilities) - num_nonfinite:
        raise UserError(f"asked for {num} batches but only {len(probabilities) - num_nonfinite} of "
                        f"{len(probabilities)} have a finite loss ({num_nonfinite} non-finite)")
    if num > drawable:
        raise UserError(f"only {drawable} batches have a non-zero probability at temperature {temperature} "
                        f"(the rest underflow float64); raise --temperature")
    import torch

    drawn = torch.multinomial(torch.from_numpy(probabilities), num, replacement=False, generator=generator)
    return Draw(np.sort(drawn.numpy().astype(np.int64)), probabilities, num_nonfinite)


def seeded_generator(seed: int) -> torch.Generator:
    import torch

    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator
