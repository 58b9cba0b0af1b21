"""What a "batch" is: the packing and batching settings of an InternEvo `data=dict(...)` entry.

A batch is what one optimizer step consumes in InternEvo: `micro_num` packed rows of
`micro_bsz * seq_len` tokens per data-parallel rank. `batch_ranks` says how many data-parallel
ranks that step spans (1 by default: the batch of one rank, `micro_num * micro_bsz * seq_len`
tokens, so the selection does not depend on how many ranks train the next round).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from rethinktiny.errors import UserError

# InternEvo's StaticBatchSampler takes `data.seed` with this default (build_dataloader.py).
DEFAULT_SAMPLER_SEED = 1024


def _positive_int(data: dict[str, Any], key: str, source: str) -> int:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{source}: data.{key} must be a positive integer, got {value!r}")
    return value


@dataclass
class BatchSpec:
    """Packing and batching settings (InternEvo's names) that decide every batch's rows.

    Args:
        seq_len: most tokens per sequence piece (`data.seq_len`).
        micro_bsz: sequences per packed row; packed_length = micro_bsz * seq_len.
        micro_num: packed rows per rank per optimizer step.
        seed: InternEvo's batch-sampler seed (`data.seed`, default 1024).
        min_length: documents shorter than this are dropped (`data.min_length`).
        min_length_dict: per-file overrides of min_length, keyed by a path substring.
        pack_sample_into_one: InternEvo's fixed-slot packing (`data.pack_sample_into_one`).
        batch_ranks: data-parallel ranks one batch spans.
    """

    seq_len: int
    micro_bsz: int
    micro_num: int
    seed: int = DEFAULT_SAMPLER_SEED
    min_length: int = 0
    min_length_dict: dict[str, int] | None = field(default=None)
    pack_sample_into_one: bool = False
    batch_ranks: int = 1

    @property
    def packed_length(self) -> int:
        return self.seq_len * self.micro_bsz

    @property
    def rows_per_batch(self) -> int:
        return self.micro_num * self.batch_ranks

    @property
    def tokens_per_batch(self) -> int:
        return self.rows_per_batch * self.packed_length

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BatchSpec":
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def spec_from_data_config(data: dict[str, Any], batch_ranks: int = 1, source: str = "config") -> BatchSpec:
    """The BatchSpec of a config's `data=dict(...)` entry (with InternEvo's defaults).

    Args:
        data: the `data` entry of an InternEvo config.
        batch_ranks: data-parallel ranks one batch spans (>= 1).
        source: named in error messages (the config file).
    """
    if data.get("use_packed_dataset", True) is False:
        raise UserError(f"{source}: data.use_packed_dataset=False is not supported; batches are scored "
                        "as InternEvo's packed rows")
    if data.get("type", "tokenized") != "tokenized":
        raise UserError(f"{source}: data.type {data.get('type')!r} is not supported; only 'tokenized'")
    if isinstance(batch_ranks, bool) or not isinstance(batch_ranks, int) or batch_ranks < 1:
        raise UserError(f"--batch-ranks must be a positive integer, got {batch_ranks!r}")
    min_length = data.get("min_length", 0) or 0
    if not isinstance(min_length, int) or min_length < 0:
        raise UserError(f"{source}: data.min_length must be a non-negative integer, got {min_length!r}")
    return BatchSpec(
        seq_len=_positive_int(data, "seq_len", source),
        micro_bsz=_positive_int(data, "micro_bsz", source),
        micro_num=_positive_int({"micro_num": data.get("micro_num", 1)}, "micro_num", source),
        seed=int(data.get("seed", DEFAULT_SAMPLER_SEED)),
        min_length=min_length,
        min_length_dict=dict(data["min_length_dict"]) if data.get("min_length_dict") else None,
        pack_sample_into_one=bool(data.get("pack_sample_into_one", False)),
        batch_ranks=batch_ranks,
    )
