"""Enumerate decoder shapes that hit a parameter budget, and the table rows describing them.

For every depth in the layer range and every hidden size that is a multiple of the head
dimension, the FFN width is chosen among the widths InternEvo can produce from an `mlp_ratio` in
the expansion range (`internevo_ffn_width`: int(hidden * ratio) rounded up to a multiple of 256);
the width whose total parameter count lands closest to the budget is kept when it is within the
tolerance. So there is at most one row per (depth, hidden) pair. This module does not import torch.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from rethinktiny.arch import costs
from rethinktiny.config import INTERNEVO_MULTIPLE_OF, PRESETS, ModelConfig, internevo_ffn_width
from rethinktiny.errors import UserError

# The paper's recipe models, shown as reference rows when they share the sweep's vocabulary.
PRO_PRESETS = ("pangu_pi_1b_pro", "pangu_pi_1.5b_pro")

_SUFFIXES = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9}


def parse_count(text: str, flag: str) -> int:
    """`1.0e9`, `1e9`, `1000000000`, `1B`, `500M`, `2k` -> int; anything else is a UserError."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kKmMbBgG]?)\s*", str(text))
    if not match:
        raise UserError(f"{flag}: expected a number such as 1.0e9 or 1B, got {text!r}")
    value = int(round(float(match.group(1)) * _SUFFIXES[match.group(2).lower()]))
    if value <= 0:
        raise UserError(f"{flag}: must be positive, got {text!r}")
    return value


def parse_int_range(text: str, flag: str) -> list[int]:
    """`12:32` (inclusive), `12:32:4` (with step) or `20` -> the list of integers."""
    parts = str(text).split(":")
    try:
        if len(parts) > 3 or any(not p.strip() for p in parts):
            raise ValueError
        numbers = [int(p) for p in parts]
    except ValueError:
        raise UserError(f"{flag}: expected START:STOP[:STEP] or one integer, got {text!r}") from None
    start, stop = numbers[0], numbers[1] if len(numbers) > 1 else numbers[0]
    step = numbers[2] if len(numbers) > 2 else 1
    if step <= 0:
        raise UserError(f"{flag}: step must be positive, got {text!r}")
    if start <= 0:
        raise UserError(f"{flag}: values must be positive, got {text!r}")
    values = list(range(start, stop + 1, step))
    if not values:
        raise UserError(f"{flag}: empty range {text!r} (start is after stop)")
    return values


def parse_float_range(text: str, flag: str) -> tuple[float, float]:
    """`2.0:4.0` (inclusive) or `2.75` (a single value) -> (low, high)."""
    parts = str(text).split(":")
    try:
        if len(parts) > 2:
            raise ValueError
        low, high = float(parts[0]), float(parts[-1])
    except ValueError:
        raise UserError(f"{flag}: expected LOW:HIGH or one number, got {text!r}") from None
    if not (math.isfinite(low) and math.isfinite(high)) or low <= 0:
        raise UserError(f"{flag}: values must be positive and finite, got {text!r}")
    if low > high:
        raise UserError(f"{flag}: empty range {text!r} (low is above high)")
    return low, high


@dataclass(frozen=True)
class SweepSpec:
    """What to enumerate.

    Args:
        params: parameter budget (total, embedding and head included).
        vocab_size: vocabulary size (sets the embedding and head).
        layers: depths to try.
        expansion: (low, high) FFN `mlp_ratio` range, as InternEvo applies it.
        heads_dim: head dimension; hidden sizes are its multiples.
        tolerance: accepted relative distance of the total from `params`.
        kv_heads: fixed key/value head count (GQA); None means one per query head.
        tie_embeddings: share the embedding and the output head.
    """

    params: int
    vocab_size: int
    layers: tuple[int, ...] = tuple(range(12, 33))
    expansion: tuple[float, float] = (2.0, 4.0)
    heads_dim: int = 128
    tolerance: float = 0.05
    kv_heads: int | None = None
    tie_embeddings: bool = False

    def __post_init__(self) -> None:
        checks = [
            (self.params > 0, f"--params must be positive, got {self.params}"),
            (self.vocab_size > 0, f"--vocab must be positive, got {self.vocab_size}"),
            (len(self.layers) > 0, "--layers: empty range"),
            (self.heads_dim > 0 and self.heads_dim % 2 == 0,
             f"--heads-dim must be a positive even number (RoPE pairs channels), got {self.heads_dim}"),
            (0 < self.tolerance < 1, f"--tolerance must be in (0, 1), got {self.tolerance}"),
            (self.kv_heads is None or self.kv_heads > 0, f"--kv-heads must be positive, got {self.kv_heads}"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)

    def embedding_params(self, hidden: int) -> int:
        rows = self.vocab_size * hidden
        return rows if self.tie_embeddings else 2 * rows

    def within(self, total: int) -> bool:
        return abs(total - self.params) <= self.tolerance * self.params


def config_for(spec: SweepSpec, layers: int, hidden: int, ffn: int) -> ModelConfig | None:
    """The ModelConfig of one shape, or None when `--kv-heads` does not divide its head count."""
    heads = hidden // spec.heads_dim
    kv_heads = spec.kv_heads or heads
    if heads % kv_heads:
        return None
    return ModelConfig(hidden_size=hidden, num_layers=layers, num_attention_heads=heads,
                       num_kv_heads=kv_heads, intermediate_size=ffn, vocab_size=spec.vocab_size,
                       tie_embeddings=spec.tie_embeddings, name=f"l{layers}_h{hidden}_f{ffn}")


def ffn_bounds(spec: SweepSpec, hidden: int) -> tuple[int, int]:
    """Smallest and largest FFN width InternEvo builds from an mlp_ratio in the expansion range."""
    low = max(INTERNEVO_MULTIPLE_OF, internevo_ffn_width(hidden, spec.expansion[0]))
    high = max(low, internevo_ffn_width(hidden, spec.expansion[1]))
    return low, high


def best_ffn(spec: SweepSpec, layers: int, hidden: int) -> int | None:
    """The reachable FFN width whose total parameter count is closest to the budget
    (None when `--kv-heads` does not divide the head count of this hidden size)."""
    low, high = ffn_bounds(spec, hidden)
    at_low = config_for(spec, layers, hidden, low)
    if at_low is None:
        return None
    # The total is linear in the FFN width: each unit adds w1, w2 and w3 entries in every layer.
    ideal = low + (spec.params - at_low.num_params()) / (3 * layers * hidden)
    steps = round((ideal - low) / INTERNEVO_MULTIPLE_OF)
    return min(high, max(low, low + steps * INTERNEVO_MULTIPLE_OF))


def _smallest_total(spec: SweepSpec, layers: int, hidden: int) -> int:
    """A lower bound of any total at this depth and width: narrowest FFN, one key/value head.
    It grows with the hidden size, so the search can stop once it overshoots the budget."""
    return ModelConfig(hidden_size=hidden, num_layers=layers, num_attention_heads=hidden // spec.heads_dim,
                       num_kv_heads=1, intermediate_size=ffn_bounds(spec, hidden)[0],
                       vocab_size=spec.vocab_size, tie_embeddings=spec.tie_embeddings).num_params()


def check_budget(spec: SweepSpec) -> None:
    """Refuse a budget that the embedding and head of the narrowest model already exceed."""
    embedding = spec.embedding_params(spec.heads_dim)
    if embedding >= spec.params * (1 + spec.tolerance):
        raise UserError(
            f"--params {spec.params:,} is smaller than the embedding+head alone "
            f"({embedding:,} at vocab {spec.vocab_size} and the smallest hidden size {spec.heads_dim}); "
            f"raise --params or lower --vocab / --heads-dim")


def enumerate_shapes(spec: SweepSpec) -> list[ModelConfig]:
    """All (depth, hidden) shapes whose best FFN width lands within the tolerance, by depth then width.

    Args:
        spec: budget, vocabulary and ranges; see `SweepSpec`.
    """
    check_budget(spec)
    shapes: list[ModelConfig] = []
    for layers in spec.layers:
        hidden = spec.heads_dim
        while _smallest_total(spec, layers, hidden) <= spec.params * (1 + spec.tolerance):
            ffn = best_ffn(spec, layers, hidden)
            cfg = None if ffn is None else config_for(spec, layers, hidden, ffn)
            if cfg is not None and spec.within(cfg.num_params()):
                shapes.append(cfg)
            hidden += spec.heads_dim
    if not shapes:
        raise UserError(
            f"no shape within {spec.tolerance:.0%} of --params {spec.params:,} for --layers "
            f"{spec.layers[0]}..{spec.layers[-1]}, --expansion {spec.expansion[0]}:{spec.expansion[1]}, "
            f"--heads-dim {spec.heads_dim}" + (f", --kv-heads {spec.kv_heads}" if spec.kv_heads else "")
            + "; widen --tolerance, --layers or --expansion")
    return shapes


def display_expansion(cfg: ModelConfig) -> float:
    """ffn / hidden truncated to 3 decimals, so `internevo_ffn_width(hidden, value)` gives the width back."""
    value = math.floor(cfg.intermediate_size / cfg.hidden_size * 1000) / 1000
    if internevo_ffn_width(cfg.hidden_size, value) != cfg.intermediate_size:
        return cfg.intermediate_size / cfg.hidden_size
    return value


def same_shape(a: ModelConfig, b: ModelConfig) -> bool:
    """Equal shapes and options (ModelConfig equality ignores the name)."""
    return a == b


@dataclass
class Row:
    """One line of the sweep table: a shape, its analytic costs and (optionally) measured speed."""

    cfg: ModelConfig
    budget: int
    seq_len: int
    kv_dtype: str
    preset: str = ""
    prefill_tokens_per_s: float | None = None
    decode_tokens_per_s: float | None = None

    @property
    def params(self) -> int:
        return self.cfg.num_params()

    @property
    def budget_deviation(self) -> float:
        return self.params / self.budget - 1

    @property
    def train_flops_per_token(self) -> int:
        return costs.train_flops_per_token(self.cfg, self.seq_len)

    @property
    def kv_bytes_per_token(self) -> int:
        return costs.kv_cache_bytes_per_token(self.cfg, self.kv_dtype)

    def to_dict(self) -> dict:
        cfg = self.cfg
        return {
            "preset": self.preset, "layers": cfg.num_layers, "hidden_size": cfg.hidden_size,
            "num_attention_heads": cfg.num_attention_heads, "num_kv_heads": cfg.num_kv_heads,
            "intermediate_size": cfg.intermediate_size, "expansion": display_expansion(cfg),
            "vocab_size": cfg.vocab_size, "tie_embeddings": cfg.tie_embeddings,
            "params": self.params, "budget_deviation": round(self.budget_deviation, 6),
            "embedding_params": cfg.embedding_params(), "embedding_share": round(cfg.embedding_share(), 6),
            "non_embedding_params": cfg.non_embedding_params(),
            "train_flops_per_token": self.train_flops_per_token, "seq_len": self.seq_len,
            "kv_cache_bytes_per_token": self.kv_bytes_per_token, "kv_dtype": self.kv_dtype,
            "prefill_tokens_per_s": self.prefill_tokens_per_s,
            "decode_tokens_per_s": self.decode_tokens_per_s,
        }


def preset_configs(spec: SweepSpec) -> list[tuple[str, ModelConfig]]:
    """The Pro presets of the same family (vocabulary, head size, tying) as the sweep."""
    found = []
    for name in PRO_PRESETS:
        cfg = PRESETS[name]
        if (cfg.vocab_size, cfg.head_dim, cfg.tie_embeddings) == (spec.vocab_size, spec.heads_dim,
                                                                  spec.tie_embeddings):
            found.append((name, cfg))
    return found


def closest_per_depth(shapes: list[ModelConfig], budget: int, keep: int) -> list[ModelConfig]:
    """The `keep` shapes of each depth whose totals are closest to the budget (order kept)."""
    if keep <= 0:
        raise UserError(f"--per-depth must be positive, got {keep}")
    chosen: set[int] = set()
    for depth in sorted({cfg.num_layers for cfg in shapes}):
        ranked = sorted((abs(cfg.num_params() - budget), i) for i, cfg in enumerate(shapes)
                        if cfg.num_layers == depth)
        chosen.update(i for _, i in ranked[:keep])
    return [cfg for i, cfg in enumerate(shapes) if i in chosen]


def build_rows(spec: SweepSpec, seq_len: int = 2048, kv_dtype: str = "bf16",
               include_presets: bool = True, per_depth: int | None = None) -> list[Row]:
    """Enumerated shapes plus the matching Pro presets (marked), sorted by depth then width.

    Args:
        spec: what to enumerate.
        seq_len: sequence length for the attention term of the FLOPs.
        kv_dtype: element type of the KV cache for its bytes per token.
        include_presets: add `PRO_PRESETS` of the same vocabulary as reference rows, whatever
            their size; a preset equal to an enumerated shape marks that row instead.
        per_depth: keep only this many shapes per depth, those closest to the budget (None: all).
    """
    costs.dtype_bytes(kv_dtype)
    if seq_len <= 0:
        raise UserError(f"--seq-len must be positive, got {seq_len}")
    shapes = enumerate_shapes(spec)
    if per_depth is not None:
        shapes = closest_per_depth(shapes, spec.params, per_depth)
    rows = [Row(cfg, spec.params, seq_len, kv_dtype) for cfg in shapes]
    for name, preset in preset_configs(spec) if include_presets else []:
        match = next((row for row in rows if same_shape(row.cfg, preset)), None)
        if match is not None:
            match.preset = name
        else:
            rows.append(Row(preset, spec.params, seq_len, kv_dtype, preset=name))
    rows.sort(key=lambda row: (row.cfg.num_layers, row.cfg.hidden_size, row.cfg.intermediate_size))
    return rows
