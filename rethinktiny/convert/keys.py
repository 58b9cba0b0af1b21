"""The one HF <-> ours key table, plus the rotary permute (torchtitan's `from_hf_map` pattern).

Our parameter names are InternEvo's LLAMA2 names. Rotary layouts differ: InternEvo (like Meta's
original LLaMA) rotates interleaved channel pairs (2i, 2i+1) of each head, Hugging Face's
`rotate_half` rotates (i, i + head_dim/2). Rotating the same pairs in a different channel order
leaves q.k unchanged, so exporting reorders each head's rows of wq/wk (and their biases) from
[x0, x1, x2, x3, ...] to [x0, x2, ..., x1, x3, ...]; importing applies the inverse.
"""

from __future__ import annotations

import re

import torch

from rethinktiny.checkpoint import ROTARY_BUFFER

# HF name -> our name; "{}" is the layer index.
FROM_HF: dict[str, str] = {
    "model.embed_tokens.weight": "tok_embeddings.weight",
    "model.layers.{}.self_attn.q_proj.weight": "layers.{}.attention.wq.weight",
    "model.layers.{}.self_attn.k_proj.weight": "layers.{}.attention.wk.weight",
    "model.layers.{}.self_attn.v_proj.weight": "layers.{}.attention.wv.weight",
    "model.layers.{}.self_attn.o_proj.weight": "layers.{}.attention.wo.weight",
    "model.layers.{}.self_attn.q_proj.bias": "layers.{}.attention.wq.bias",
    "model.layers.{}.self_attn.k_proj.bias": "layers.{}.attention.wk.bias",
    "model.layers.{}.self_attn.v_proj.bias": "layers.{}.attention.wv.bias",
    "model.layers.{}.self_attn.o_proj.bias": "layers.{}.attention.wo.bias",
    "model.layers.{}.mlp.gate_proj.weight": "layers.{}.feed_forward.w1.weight",
    "model.layers.{}.mlp.up_proj.weight": "layers.{}.feed_forward.w3.weight",
    "model.layers.{}.mlp.down_proj.weight": "layers.{}.feed_forward.w2.weight",
    "model.layers.{}.input_layernorm.weight": "layers.{}.attention_norm.weight",
    "model.layers.{}.post_attention_layernorm.weight": "layers.{}.ffn_norm.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "output.weight",
}
TO_HF: dict[str, str] = {ours: hf for hf, ours in FROM_HF.items()}
# HF keys that hold no parameters (older exports saved the rotary buffer).
IGNORED_HF_SUFFIXES = (ROTARY_BUFFER,)

# Our names whose rows carry rotary channels (layer-local part), and which head count splits them.
ROTARY_QUERY = ("attention.wq.weight", "attention.wq.bias")
ROTARY_KEY = ("attention.wk.weight", "attention.wk.bias")

_LAYER_RE = re.compile(r"\.(\d+)\.")


def _template(name: str) -> tuple[str, int | None]:
    """`model.layers.3.mlp...` -> (`model.layers.{}.mlp...`, 3); names without a layer -> (name, None)."""
    match = _LAYER_RE.search(name)
    if match is None:
        return name, None
    return name[:match.start()] + ".{}." + name[match.end():], int(match.group(1))


def _rename(name: str, table: dict[str, str]) -> str | None:
    template, layer = _template(name)
    target = table.get(template)
    if target is None:
        return None
    return target if layer is None else target.format(layer)


def hf_to_ours(name: str) -> str | None:
    """Our name for an HF LLaMA parameter name, or None when the table has no entry."""
    return _rename(name, FROM_HF)


def ours_to_hf(name: str) -> str | None:
    """The HF LLaMA name for one of our parameter names, or None when the table has no entry."""
    return _rename(name, TO_HF)


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
