"""ModelConfig: the one description of a PanGu-π / PanGu-π Pro decoder shape, its presets, and
conversion from/to InternEvo `model=dict(...)` config entries.

Explicit integers are stored (`intermediate_size`, `num_kv_heads`), never ratios, because pruning
produces arbitrary widths. This module does not import torch.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from rethinktiny.errors import UserError

# InternEvo rounds the FFN width `int(hidden * mlp_ratio)` up to a multiple of this.
INTERNEVO_MULTIPLE_OF = 256

MODEL_TYPE_PRO = "PANGU_PI_PRO"
MODEL_TYPE_PANGU_PI = "PANGU_PI"
MODEL_TYPES = (MODEL_TYPE_PRO, MODEL_TYPE_PANGU_PI)


def internevo_ffn_width(hidden_size: int, mlp_ratio: float, multiple_of: int = INTERNEVO_MULTIPLE_OF) -> int:
    """FFN width exactly as InternEvo's FeedForward computes it from `mlp_ratio`."""
    hidden_features = int(hidden_size * mlp_ratio)
    return multiple_of * ((hidden_features + multiple_of - 1) // multiple_of)


@dataclass
class ModelConfig:
    """Shape and options of a decoder-only PanGu-π model (LLaMA-style: RMSNorm, RoPE, GQA, SwiGLU).

    Args:
        hidden_size: model width.
        num_layers: number of decoder blocks.
        num_attention_heads: query heads; `hidden_size` must be divisible by it.
        num_kv_heads: key/value heads (GQA); must divide `num_attention_heads`.
        intermediate_size: FFN width (w1/w3 rows, w2 columns).
        vocab_size: embedding and output rows.
        tie_embeddings: share `tok_embeddings` and `output` weights.
        norm_eps: RMSNorm epsilon.
        rope_theta: RoPE base.
        attention_bias: biases on wq/wk/wv/wo (InternEvo LLAMA2 with `no_bias=False` has them).
        qkv_bias: biases on wq/wk/wv only, none on wo (Qwen2); exclusive with `attention_bias`.
        series_terms: PanGu-π series-informed activation, number of terms n (0 = plain SiLU).
        aug_shortcuts: PanGu-π augmented shortcuts per attention block (0 = off).
        aug_shortcut_dim: bottleneck width of each augmented shortcut.
        checkpoint: activation checkpointing, InternEvo's `model.checkpoint`: the share of decoder
            layers (True = 1, False = 0) whose activations are recomputed in backward; see
            `checkpoint_layers`. A memory setting, not part of the model: equality and `to_dict`
            ignore it, so a checkpoint saved under one share resumes under another.
        name: a label (preset name) carried into reports.
    """

    hidden_size: int
    num_layers: int
    num_attention_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    tie_embeddings: bool = False
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    attention_bias: bool = False
    qkv_bias: bool = False
    series_terms: int = 0
    aug_shortcuts: int = 0
    aug_shortcut_dim: int = 0
    checkpoint: float = field(default=0.0, compare=False)
    name: str = field(default="custom", compare=False)

    def __post_init__(self) -> None:
        self.checkpoint = checkpoint_share(self.checkpoint)
        for key in ("hidden_size", "num_layers", "num_attention_heads", "num_kv_heads",
                    "intermediate_size", "vocab_size"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise UserError(f"model config: {key} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise UserError(
                f"model config: hidden_size {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}")
        if self.num_attention_heads % self.num_kv_heads:
            raise UserError(
                f"model config: num_attention_heads {self.num_attention_heads} is not divisible by "
                f"num_kv_heads {self.num_kv_heads}")
        if self.head_dim % 2:
            raise UserError(f"model config: head_dim {self.head_dim} must be even for RoPE")
        if not (self.norm_eps > 0 and self.rope_theta > 0):
            raise UserError("model config: norm_eps and rope_theta must be positive")
        for key in ("series_terms", "aug_shortcuts", "aug_shortcut_dim"):
            if getattr(self, key) < 0:
                raise UserError(f"model config: {key} must be >= 0")
        if self.aug_shortcuts and not self.aug_shortcut_dim:
            raise UserError("model config: aug_shortcuts > 0 needs aug_shortcut_dim > 0")
        if self.attention_bias and self.qkv_bias:
            raise UserError("model config: qkv_bias is part of attention_bias; set one of them")

    # ---- derived shape -------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def kv_dim(self) -> int:
        return self.head_dim * self.num_kv_heads

    @property
    def biased_projections(self) -> tuple[str, ...]:
        """The attention projections that carry a bias (`wq`, `wk`, `wv`, `wo`)."""
        if self.attention_bias:
            return ("wq", "wk", "wv", "wo")
        return ("wq", "wk", "wv") if self.qkv_bias else ()

    @property
    def is_pro(self) -> bool:
        """Pro models have no PanGu-π block extras, so they are plain LLaMA shapes."""
        return self.series_terms == 0 and self.aug_shortcuts == 0

    @property
    def model_type(self) -> str:
        return MODEL_TYPE_PRO if self.is_pro else MODEL_TYPE_PANGU_PI

    @property
    def checkpoint_layers(self) -> int:
        """How many decoder layers are checkpointed: the first ones, layer i when i < num_layers *
        checkpoint, as the installed InternEvo 0.4.9 LLAMA2 reads it (its newest tree truncates
        instead, `int(num_layers * checkpoint)`: the two differ only when that product is not whole)."""
        return min(self.num_layers, math.ceil(self.num_layers * self.checkpoint))

    # ---- parameter counts ------------------------------------------------------------------
    def layer_params(self) -> int:
        h, kv, ffn = self.hidden_size, self.kv_dim, self.intermediate_size
        attention = h * h + 2 * h * kv + h * h
        bias_rows = {"wq": h, "wk": kv, "wv": kv, "wo": h}
        attention += sum(bias_rows[proj] for proj in self.biased_projections)
        feed_forward = 3 * h * ffn
        norms = 2 * h
        series = 2 * self.series_terms
        shortcuts = self.aug_shortcuts * 2 * h * self.aug_shortcut_dim
        return attention + feed_forward + norms + series + shortcuts

    def embedding_params(self) -> int:
        """Input embedding plus output head (counted once when tied)."""
        rows = self.vocab_size * self.hidden_size
        return rows if self.tie_embeddings else 2 * rows

    def num_params(self) -> int:
        return self.embedding_params() + self.num_layers * self.layer_params() + self.hidden_size

    def non_embedding_params(self) -> int:
        return self.num_params() - self.embedding_params()

    def embedding_share(self) -> float:
        return self.embedding_params() / self.num_params()

    # ---- (de)serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The model's description (saved with checkpoints and manifests), without `checkpoint`."""
        data = dataclasses.asdict(self)
        del data["checkpoint"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"{source}: unknown model config key(s) {unknown}")
        try:
            return cls(**data)
        except TypeError as err:  # missing required keys
            raise UserError(f"{source}: {err}") from None

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


def checkpoint_share(value: Any, where: str = "model config: checkpoint") -> float:
    """InternEvo's `model.checkpoint` (True, False or a share of layers in [0, 1]) as a float."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and 0 <= value <= 1:
        return float(value)
    raise UserError(f"{where} must be True, False or a share of layers in [0, 1], got {value!r}")


def _pro(name: str, hidden: int, layers: int, heads: int, vocab: int, kv_heads: int | None = None,
         mlp_ratio: float = 8 / 3, **extra: Any) -> ModelConfig:
    return ModelConfig(
        hidden_size=hidden, num_layers=layers, num_attention_heads=heads,
        num_kv_heads=kv_heads or heads, intermediate_size=internevo_ffn_width(hidden, mlp_ratio),
        vocab_size=vocab, name=name, **extra)


PRESETS: dict[str, ModelConfig] = {
    # The official model table (the paper's repository, fig/configure.png): PanGu-π-1B Pro is
    # width 1792, depth 21, vocabulary 48,000, initialised from PanGu-π-7B (0.991B parameters here).
    # Heads (14 of 128) and the FFN width are not in the table: FFN from mlp_ratio 8/3 as InternEvo
    # rounds it (4778 -> 4864), as the seed's configs/LLM1B.py does. That shipped config has 20
    # layers (0.952B); configs/LLM1B.py keeps them and says so.
    "pangu_pi_1b_pro": _pro("pangu_pi_1b_pro", 1792, 21, 14, 48000),
    # Same table: PanGu-π-1.5B Pro is width 2048, depth 22, vocabulary 48,000. Its FFN width is NOT
    # published: 5632 (mlp_ratio 8/3, InternEvo rounding) is an assumption, as are 16 heads of 128.
    "pangu_pi_1.5b_pro": _pro("pangu_pi_1.5b_pro", 2048, 22, 16, 48000),
    # The PanGu-π-7B teacher as published (Wang et al. 2023): 30 layers x 4096, 32 heads, FFN 11008,
    # the 100,883-piece tokenizer, series-informed activation (n=2) and augmented shortcuts.
    "pangu_pi_7b": ModelConfig(
        hidden_size=4096, num_layers=30, num_attention_heads=32, num_kv_heads=32,
        intermediate_size=11008, vocab_size=100883, series_terms=2, aug_shortcuts=1,
        aug_shortcut_dim=4096 // 32, name="pangu_pi_7b"),
    # A CPU-sized model for tests and the demo.
    "tiny": ModelConfig(
        hidden_size=128, num_layers=4, num_attention_heads=4, num_kv_heads=2,
        intermediate_size=352, vocab_size=4096, name="tiny"),
}


def get_preset(name: str) -> ModelConfig:
    """Look up a preset by name (`pangu_pi_1b_pro`, `pangu_pi_1.5b_pro`, `pangu_pi_7b`, `tiny`)."""
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; known presets: {sorted(PRESETS)}")
    return PRESETS[name]


# ---- InternEvo `model=dict(...)` ----------------------------------------------------------------

def from_internevo(model: dict[str, Any], source: str = "model") -> ModelConfig:
    """Build a ModelConfig from an InternEvo `model=dict(...)` entry (LLAMA2 or ours).

    `intermediate_size` wins over `mlp_ratio`; `num_kv_attention_heads` defaults to the head count;
    `no_bias` defaults to False as in InternEvo (so attention has biases unless told otherwise).
    """
    # The q/k rotary layout (`qk_interleaved` / `adapt_hf`) is not part of the shape: checkpoint
    # readers reorder rotate-half rows (rethinktiny.checkpoint), the model builder refuses it.
    try:
        hidden = int(model["hidden_size"])
        heads = int(model["num_attention_heads"])
        if "intermediate_size" in model:
            ffn = int(model["intermediate_size"])
        else:
            ffn = internevo_ffn_width(hidden, float(model.get("mlp_ratio", 4.0)),
                                      int(model.get("multiple_of", INTERNEVO_MULTIPLE_OF)))
        return ModelConfig(
            hidden_size=hidden,
            num_layers=int(model["num_layers"]),
            num_attention_heads=heads,
            num_kv_heads=int(model.get("num_kv_attention_heads") or heads),
            intermediate_size=ffn,
            vocab_size=int(model["vocab_size"]),
            tie_embeddings=bool(model.get("tie_embeddings", False)),
            norm_eps=float(model.get("layer_norm_epsilon", 1e-5)),
            rope_theta=float(model.get("rope_base", 10000)),
            # qkv_bias (ours, Qwen2-style) means no wo bias, so it changes no_bias's default
            attention_bias=not bool(model.get("no_bias", bool(model.get("qkv_bias", False)))),
            qkv_bias=bool(model.get("qkv_bias", False)),
            series_terms=int(model.get("series_terms", 0)),
            aug_shortcuts=int(model.get("aug_shortcuts", 0)),
            aug_shortcut_dim=int(model.get("aug_shortcut_dim", 0)),
            checkpoint=checkpoint_share(model.get("checkpoint", False), f"{source}: checkpoint"),
            name=str(model.get("preset", "custom")),
        )
    except KeyError as err:
        raise UserError(f"{source}: missing key {err.args[0]!r} in model=dict(...)") from None
    except (TypeError, ValueError) as err:
        raise UserError(f"{source}: bad value in model=dict(...): {err}") from None


def to_internevo(cfg: ModelConfig, mlp_ratio: float | None = None) -> dict[str, Any]:
    """The shape part of an InternEvo `model=dict(...)` entry for our model types.

    Our builders read `intermediate_size` directly; `mlp_ratio` is written too (when it
    reproduces the width under InternEvo's rounding) so tools that read it keep working.
    """
    entry: dict[str, Any] = {
        "hidden_size": cfg.hidden_size,
        "num_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_kv_attention_heads": cfg.num_kv_heads,
        "intermediate_size": cfg.intermediate_size,
        "vocab_size": cfg.vocab_size,
        "tie_embeddings": cfg.tie_embeddings,
        "layer_norm_epsilon": cfg.norm_eps,
        "rope_base": cfg.rope_theta,
        "no_bias": not cfg.attention_bias,
    }
    ratio = mlp_ratio if mlp_ratio is not None else cfg.intermediate_size / cfg.hidden_size
    if cfg.qkv_bias:  # written only when on, so configs of models without it stay as they were
        entry["qkv_bias"] = True
    if cfg.checkpoint:  # likewise; InternEvo reads a share in [0, 1] as this does
        entry["checkpoint"] = cfg.checkpoint
    if internevo_ffn_width(cfg.hidden_size, ratio) == cfg.intermediate_size:
        entry["mlp_ratio"] = ratio
    if not cfg.is_pro:
        entry.update(series_terms=cfg.series_terms, aug_shortcuts=cfg.aug_shortcuts,
                     aug_shortcut_dim=cfg.aug_shortcut_dim)
    return entry


def describe(cfg: ModelConfig) -> str:
    """One line for logs: shape and parameter count."""
    return (f"{cfg.name}: {cfg.num_layers} layers x {cfg.hidden_size}, heads {cfg.num_attention_heads}"
            f"/{cfg.num_kv_heads} kv, ffn {cfg.intermediate_size}, vocab {cfg.vocab_size}, "
            f"{cfg.num_params() / 1e6:.1f}M params ({100 * cfg.embedding_share():.1f}% embedding+head)")

