"""Which source layers the small model keeps: pure functions of layer counts and scores.

The paper's finding is that layers near the beginning and the end matter more than the middle
ones, so the default keeps both ends and fills inward. Block influence (ShortGPT: 1 - cosine
similarity of a layer's input and output on calibration data) measures it instead of assuming it.
"""

from __future__ import annotations

from typing import Sequence

import torch

from rethinktiny.errors import UserError

LAYER_STRATEGIES = ("first-last", "uniform", "block-influence")


def _check_counts(num_layers: int, keep: int) -> None:
    if not 0 < keep <= num_layers:
        raise UserError(f"cannot keep {keep} of {num_layers} source layers")


def first_last_layers(num_layers: int, keep: int) -> list[int]:
    """Keep the first and last layers, filling from both ends inward (0, n-1, 1, n-2, ...).

    Args:
        num_layers: source layers.
        keep: layers to keep.
    """
    _check_counts(num_layers, keep)
    order = []
    for i in range((num_layers + 1) // 2):
        order.append(i)
        if num_layers - 1 - i != i:
            order.append(num_layers - 1 - i)
    return sorted(order[:keep])


def uniform_layers(num_layers: int, keep: int) -> list[int]:
    """`keep` layers evenly spaced over the source, first and last included (keep >= 2).

    Args:
        num_layers: source layers.
        keep: layers to keep.
    """
    _check_counts(num_layers, keep)
    if keep == 1:
        return [0]
    # Exact integer rounding of i * (n-1) / (k-1); distinct because the step is >= 1.
    return [(2 * i * (num_layers - 1) + (keep - 1)) // (2 * (keep - 1)) for i in range(keep)]


def top_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k highest scores, ascending; ties go to the lower index (deterministic).

    Args:
        scores: 1-D scores.
        k: how many to keep.
    """
    if not 0 <= k <= scores.numel():
        raise UserError(f"cannot keep {k} of {scores.numel()} units")
    order = torch.sort(-scores.double(), stable=True).indices[:k]
    return order.sort().values


def select_layers(scores: Sequence[float] | torch.Tensor, k: int) -> list[int]:
    """The k most important layers by score (e.g. block influence), in model order.

    Args:
        scores: one score per source layer, higher = more important.
        k: layers to keep.
    """
    scores = torch.as_tensor(scores, dtype=torch.float64)
    _check_counts(scores.numel(), k)
    return top_indices(scores, k).tolist()


def parse_layer_list(text: str, num_layers: int, keep: int) -> list[int]:
    """An explicit `--layers 0,1,5` list: unique source indices, as many as the target has layers.

    Args:
        text: comma-separated indices.
        num_layers: source layers.
        keep: target layers.
    """
    try:
        indices = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--layers {text!r}: expected a strategy {LAYER_STRATEGIES} or comma-separated "
                        "layer indices") from None
    if len(set(indices)) != len(indices):
        raise UserError(f"--layers {text!r}: a layer is listed twice")
    bad = [i for i in indices if not 0 <= i < num_layers]
    if bad:
        raise UserError(f"--layers {text!r}: layer {bad[0]} is outside the source's 0..{num_layers - 1}")
    if len(indices) != keep:
        raise UserError(f"--layers {text!r}: lists {len(indices)} layers but the target has {keep}")
    return sorted(indices)


def is_explicit_list(text: str) -> bool:
    return text not in LAYER_STRATEGIES


def choose_layers(strategy: str, num_layers: int, keep: int,
                  influence: Sequence[float] | None = None) -> list[int]:
    """Dispatch on `--layers`: a strategy name or an explicit list.

    Args:
        strategy: first-last, uniform, block-influence or "i,j,k".
        num_layers: source layers.
        keep: target layers.
        influence: block-influence score per source layer (needed for block-influence).
    """
    if strategy == "first-last":
        return first_last_layers(num_layers, keep)
    if strategy == "uniform":
        return uniform_layers(num_layers, keep)
    if strategy == "block-influence":
        if influence is None:
            raise UserError("--layers block-influence needs calibration data (--calib)")
        return select_layers(influence, keep)
    return parse_layer_list(strategy, num_layers, keep)
