"""The q/k rotary layouts and the permute between them (torchtitan's rotary permute), shared by
`checkpoint` (reading a rotate-half InternEvo checkpoint) and `convert` (HF and GGUF export/import).

InternEvo 0.4.x (like Meta's original LLaMA) rotates interleaved channel pairs (2i, 2i+1) of each
head: our layout. Hugging Face's `rotate_half` (and the newest InternEvo's LLAMA2 default) rotates
(i, i + head_dim/2). Rotating the same pairs in a different channel order leaves q.k unchanged, so
converting reorders each head's rows of wq/wk (and their biases) from [x0, x1, x2, x3, ...] to
[x0, x2, ..., x1, x3, ...] and back. Which layout a checkpoint folder holds is recorded there
(`checkpoint.read_qk_interleaved`).
"""

from __future__ import annotations

import torch

# Our names whose rows carry rotary channels (layer-local part), and which head count splits them.
ROTARY_QUERY = ("attention.wq.weight", "attention.wq.bias")
ROTARY_KEY = ("attention.wk.weight", "attention.wk.bias")

# Rotary inverse frequencies: InternEvo (and older HF exports) may save them as a buffer, our model
# recomputes them from rope_theta, so every reader of a checkpoint drops names ending in this.
ROTARY_BUFFER = "rotary_emb.inv_freq"


def is_rotary_buffer(name: str) -> bool:
    return name.endswith(ROTARY_BUFFER)


def rotary_heads(our_name: str, num_heads: int, num_kv_heads: int) -> int | None:
    """How many heads split the rows of `our_name` when it carries rotary channels, else None."""
    if our_name.endswith(ROTARY_QUERY):
        return num_heads
    if our_name.endswith(ROTARY_KEY):
        return num_kv_heads
    return None


def interleaved_to_half(tensor: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Reorder each head's rows from interleaved pairs (ours) to rotate_half halves (HF).

    Args:
        tensor: a q/k weight [heads * head_dim, in] or bias [heads * head_dim].
        num_heads: heads the rows are split into (query heads for wq, kv heads for wk).
    """
    rows = tensor.shape[0]
    rest = tensor.shape[1:]
    half = rows // num_heads // 2
    return tensor.reshape(num_heads, half, 2, *rest).transpose(1, 2).reshape(rows, *rest)


def half_to_interleaved(tensor: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Inverse of `interleaved_to_half`: HF rotate_half rows back to interleaved pairs (ours)."""
    rows = tensor.shape[0]
    rest = tensor.shape[1:]
    half = rows // num_heads // 2
    return tensor.reshape(num_heads, 2, half, *rest).transpose(1, 2).reshape(rows, *rest)
