"""Shard a full state dict into the tp x pp files InternEvo saves, for merge and conversion tests."""

from pathlib import Path

import torch

# Column-parallel weights are split along their rows, row-parallel ones along their columns.
COLUMN_PARALLEL = ("attention.wq", "attention.wk", "attention.wv", "feed_forward.w1", "feed_forward.w3")
ROW_PARALLEL = ("attention.wo.weight", "feed_forward.w2.weight")


def _local_name(name: str, first: int, num_layers: int, stage: int, stages: int) -> str | None:
    """The name of `name` inside pipeline stage `stage` (None when the stage does not hold it)."""
    if name.startswith("layers."):
        idx = int(name.split(".")[1])
        if not first <= idx < first + num_layers:
            return None
        return f"layers.{idx - first}." + name.split(".", 2)[2]
    if name == "tok_embeddings.weight" and stage != 0:
        return None
    if name in ("norm.weight", "output.weight") and stage != stages - 1:
        return None
    return name


def _tp_part(name: str, local: str, tensor: torch.Tensor, tp: int, rank: int,
             embed_split_hidden: bool) -> torch.Tensor:
    inner = local.split(".", 2)[-1] if local.startswith("layers.") else local
    if inner.startswith(COLUMN_PARALLEL) or name == "output.weight":
        return tensor.chunk(tp, dim=0)[rank]
    if inner in ROW_PARALLEL or (name == "tok_embeddings.weight" and embed_split_hidden):
        return tensor.chunk(tp, dim=1)[rank]
    return tensor


def split_like_internevo(state: dict[str, torch.Tensor], tp: int, layers_per_stage: list[int],
                         embed_split_hidden: bool = False) -> dict[tuple[int, int], dict[str, torch.Tensor]]:
    """{(tp_rank, pp_rank): shard} exactly as InternEvo saves `model_tp{t}_pp{p}.pt`."""
    shards, stages = {}, len(layers_per_stage)
    for p in range(stages):
        first = sum(layers_per_stage[:p])
        for t in range(tp):
            shard = {}
            for name, tensor in state.items():
                local = _local_name(name, first, layers_per_stage[p], p, stages)
                if local is not None:
                    shard[local] = _tp_part(name, local, tensor, tp, t, embed_split_hidden).clone()
            shards[(t, p)] = shard
    return shards


def save_like_internevo(folder: Path, state: dict[str, torch.Tensor], tp: int, layers_per_stage: list[int],
                        embed_split_hidden: bool = False) -> None:
    """Write the shards of `split_like_internevo` as `folder/model_tp{t}_pp{p}.pt`."""
    folder.mkdir(parents=True, exist_ok=True)
    for (t, p), shard in split_like_internevo(state, tp, layers_per_stage, embed_split_hidden).items():
        torch.save(shard, folder / f"model_tp{t}_pp{p}.pt")
