"""Analytic costs of a decoder shape: parameters, training FLOPs per token, KV-cache bytes.

FLOPs are counted the way `torch.utils.flop_counter.FlopCounterMode` counts our model: only
matrix multiplications, 2 FLOPs per multiply-add.

Forward FLOPs per token, for a sequence of `seq_len` tokens:

    2 * matmul_params + 4 * num_layers * seq_len * hidden_size

- `matmul_params`: every linear weight a token passes through: wq, wk, wv, wo, w1, w2, w3 (and
  PanGu-π's augmented-shortcut down/up) in every layer, plus the output head (hidden x vocab,
  counted even when tied: the embedding lookup costs nothing, the head is a real matmul).
  Biases, norms, RoPE and activations are element-wise and not counted.
- The attention term: q.k^T and the attention-weighted sum of values, each 2 * seq_len * hidden
  per token per layer (GQA does not reduce it: every query head scores every position). Counted
  over the full seq_len x seq_len square as PaLM's MFU formula and torch's counter do; a causal
  kernel that skips the masked half does about half of it.

Training FLOPs per token = 3 x forward (backward computes gradients for both the input and the
weights of every matmul: 2 x forward). That is the familiar `6 N + 12 L S h` (PaLM, appendix B)
with N = matmul_params. This module does not import torch.
"""

from __future__ import annotations

from rethinktiny.config import ModelConfig
from rethinktiny.errors import UserError

# Bytes per element of the KV cache (and of measured weights) by the names the CLI accepts.
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1, "int8": 1}


def layer_matmul_params(cfg: ModelConfig) -> int:
    """Linear-weight elements of one decoder block (no biases, norms or series coefficients)."""
    h, kv, ffn = cfg.hidden_size, cfg.kv_dim, cfg.intermediate_size
    attention = 2 * h * h + 2 * h * kv
    feed_forward = 3 * h * ffn
    shortcuts = cfg.aug_shortcuts * 2 * h * cfg.aug_shortcut_dim
    return attention + feed_forward + shortcuts


def matmul_params(cfg: ModelConfig) -> int:
    """Linear-weight elements a token passes through: all blocks plus the output head."""
    return cfg.num_layers * layer_matmul_params(cfg) + cfg.hidden_size * cfg.vocab_size


def attention_flops_per_token(cfg: ModelConfig, seq_len: int) -> int:
    """Forward FLOPs of q.k^T and probs.v per token, full square (see module docstring)."""
    return 4 * cfg.num_layers * seq_len * cfg.hidden_size


def forward_flops_per_token(cfg: ModelConfig, seq_len: int) -> int:
    """Forward matmul FLOPs per token of a `seq_len`-token sequence.

    Args:
        cfg: the model shape.
        seq_len: training sequence length (sets the attention term).
    """
    if seq_len <= 0:
        raise UserError(f"--seq-len must be positive, got {seq_len}")
    return 2 * matmul_params(cfg) + attention_flops_per_token(cfg, seq_len)


def train_flops_per_token(cfg: ModelConfig, seq_len: int) -> int:
    """Forward + backward FLOPs per token: 3 x forward (6 N + 12 L S h)."""
    return 3 * forward_flops_per_token(cfg, seq_len)


def dtype_bytes(name: str, flag: str = "--kv-dtype") -> int:
    """Bytes per element of a dtype name (`fp32`, `bf16`, `fp16`, `fp8`, `int8`)."""
    if name not in DTYPE_BYTES:
        raise UserError(f"{flag}: unknown dtype {name!r}; choose one of {sorted(DTYPE_BYTES)}")
    return DTYPE_BYTES[name]


def kv_cache_bytes_per_token(cfg: ModelConfig, dtype: str = "bf16") -> int:
    """Bytes the KV cache grows by per generated token: keys and values of every layer.

    Args:
        cfg: the model shape (GQA shrinks it through `num_kv_heads`).
        dtype: cache element type name, see `DTYPE_BYTES`.
    """
    return 2 * cfg.num_layers * cfg.kv_dim * dtype_bytes(dtype)
