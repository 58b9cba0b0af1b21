"""The HF <-> ours key tables and the fused-wqkv split (torchtitan's `from_hf_map` pattern; the
rotary permute lives in `rethinktiny.rotary_layout`).

Our parameter names are InternEvo's LLAMA2 names. Rotary layouts differ (interleaved pairs here,
`rotate_half` halves in HF): exporting reorders each head's q/k rows with
`rotary_layout.interleaved_to_half`, importing applies the inverse.

Foreign checkpoints are described by a `Layout`: a name table (foreign template -> ours) and the
order of their q/k rows. LLaMA, Mistral and Qwen2 share the HF LLaMA names; InternLM2 (the HF
remote-code model and InternEvo's INTERNLM2) fuses q, k and v into one `wqkv` whose rows are
grouped per key/value head: [q of the group's heads, k, v] for each kv head in turn, as its
modeling file's `rearrange(qkv, "b q (h gs d) -> b q h gs d", gs=2 + groups)` reads them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

import torch

from rethinktiny.config import ModelConfig
from rethinktiny.errors import UserError
from rethinktiny.rotary_layout import ROTARY_BUFFER, half_to_interleaved, rotary_heads

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

_LAYER_RE = re.compile(r"\.(\d+)\.")


def _template(name: str) -> tuple[str, int | None]:
    """`model.layers.3.mlp...` -> (`model.layers.{}.mlp...`, 3); names without a layer -> (name, None)."""
    match = _LAYER_RE.search(name)
    if match is None:
        return name, None
    return name[:match.start()] + ".{}." + name[match.end():], int(match.group(1))


def rename(name: str, table: dict[str, str]) -> str | None:
    """`name` through a template table ("{}" is the layer index), or None when the table has no entry."""
    template, layer = _template(name)
    target = table.get(template)
    if target is None:
        return None
    return target if layer is None else target.format(layer)


def hf_to_ours(name: str) -> str | None:
    """Our name for an HF LLaMA parameter name, or None when the table has no entry."""
    return rename(name, FROM_HF)


def ours_to_hf(name: str) -> str | None:
    """The HF LLaMA name for one of our parameter names, or None when the table has no entry."""
    return rename(name, TO_HF)


# ---- foreign layouts -----------------------------------------------------------------------------

# Our fused name: one foreign tensor that holds wq, wk and wv (split with `split_wqkv`).
FUSED_QKV = "attention.wqkv."

# InternEvo INTERNLM2 / INTERNLM2_PUBLIC checkpoints: our names, except the fused wqkv.
_INTERNLM2_LAYER = ("attention.wqkv.weight", "attention.wqkv.bias", "attention.wo.weight", "attention.wo.bias",
                    "feed_forward.w1.weight", "feed_forward.w2.weight", "feed_forward.w3.weight",
                    "attention_norm.weight", "ffn_norm.weight")
INTERNEVO_INTERNLM2: dict[str, str] = {
    **{name: name for name in ("tok_embeddings.weight", "norm.weight", "output.weight")},
    **{f"layers.{{}}.{name}": f"layers.{{}}.{name}" for name in _INTERNLM2_LAYER},
}
# The HF InternLM2ForCausalLM (remote code): the same under `model.`, except the head.
HF_INTERNLM2: dict[str, str] = {("output.weight" if k == "output.weight" else f"model.{k}"): v
                                for k, v in INTERNEVO_INTERNLM2.items()}


@dataclass(frozen=True)
class Layout:
    """How a foreign checkpoint names and orders our tensors.

    Args:
        name: label for messages and reports ("hf llama", "gguf qwen2", ...).
        table: foreign name template -> our name template ("{}" is the layer index).
        rotate_half: q/k rows are in HF's rotate_half order (False: interleaved pairs, ours).
        ignored_suffixes: foreign names that hold no parameters.
    """

    name: str
    table: dict[str, str]
    rotate_half: bool
    ignored_suffixes: tuple[str, ...] = field(default=IGNORED_HF_SUFFIXES)

    def ours(self, foreign: str) -> str | None:
        """Our name (possibly the fused `attention.wqkv.*`) for a foreign name, or None."""
        return rename(foreign, self.table)

    def foreign(self, ours: str) -> str:
        """The foreign name that holds our tensor `ours` (the fused wqkv for wq/wk/wv)."""
        inverse = {v: k for k, v in self.table.items()}
        for name in (ours, re.sub(r"attention\.w[qkv]\.", FUSED_QKV, ours)):
            found = rename(name, inverse)
            if found is not None:
                return found
        return ours


HF_LLAMA_LAYOUT = Layout("hf llama", FROM_HF, rotate_half=True)
HF_INTERNLM2_LAYOUT = Layout("hf internlm2", HF_INTERNLM2, rotate_half=True)


@dataclass(frozen=True)
class Slot:
    """Where one of our tensors lives: a foreign tensor, and which third of a fused wqkv."""

    key: str
    part: str | None = None  # "q", "k" or "v" of a fused wqkv


def plan_slots(foreign_names: list[str], layout: Layout, cfg: ModelConfig,
               where: Callable[[str], str]) -> tuple[dict[str, Slot], list[str]]:
    """Our name -> Slot for every foreign tensor, and the ignored foreign names.

    A tied model's separate head is ignored (the embedding is the head). Unknown names are a
    UserError naming `where(name)` (the file) and the name.
    """
    slots, ignored = {}, []
    for foreign in foreign_names:
        if foreign.endswith(layout.ignored_suffixes):
            ignored.append(foreign)
            continue
        ours = layout.ours(foreign)
        if ours is None:
            raise UserError(f"{where(foreign)}: unknown architecture: tensor {foreign} has no equivalent "
                            f"in our model ({layout.name} names)")
        if cfg.tie_embeddings and ours == "output.weight":
            ignored.append(foreign)
            continue
        if FUSED_QKV in ours:
            prefix, suffix = ours.split(FUSED_QKV)
            for part in "qkv":
                slots[f"{prefix}attention.w{part}.{suffix}"] = Slot(foreign, part)
        else:
            slots[ours] = Slot(foreign)
    if cfg.tie_embeddings and "tok_embeddings.weight" in slots:
        slots["output.weight"] = slots["tok_embeddings.weight"]
    return slots, ignored


def read_slot(tensor: torch.Tensor, name: str, slot: Slot, layout: Layout, cfg: ModelConfig,
              where: str) -> torch.Tensor:
    """Our tensor `name` from the foreign tensor of its slot: its third of a fused wqkv, q/k rows
    put into interleaved pairs.

    Args:
        tensor: the foreign tensor `slot.key`.
        name: our name.
        slot: where `name` lives.
        layout: the foreign layout (for the rotary order).
        cfg: the model shape (heads split the rows).
        where: the file, for error messages.
    """
    if slot.part is not None:
        tensor = split_wqkv(tensor, cfg.num_attention_heads, cfg.num_kv_heads, f"{where}: {slot.key}")[slot.part]
    heads = rotary_heads(name, cfg.num_attention_heads, cfg.num_kv_heads)
    if heads is not None and layout.rotate_half:
        if tensor.shape[0] % (2 * heads):
            raise UserError(f"{where}: {slot.key} has {tensor.shape[0]} rows, not a multiple of 2 x {heads} heads")
        tensor = half_to_interleaved(tensor, heads)
    return tensor


def split_wqkv(tensor: torch.Tensor, num_heads: int, num_kv_heads: int, what: str) -> dict[str, torch.Tensor]:
    """{"q", "k", "v"} rows of an InternLM2 fused wqkv weight [rows, in] or bias [rows].

    Rows run over kv heads; each kv head's block holds its `num_heads / num_kv_heads` query heads,
    then its key head, then its value head. Query head h*groups + g is block h's g-th query head,
    the head our (and HF's) `repeat_kv` pairs with kv head h.
    """
    groups = num_heads // num_kv_heads
    rows, rest = tensor.shape[0], tensor.shape[1:]
    if rows % (num_kv_heads * (groups + 2)):
        raise UserError(f"{what}: {rows} rows do not split into {num_kv_heads} kv groups of "
                        f"{groups} query + 1 key + 1 value heads")
    blocks = tensor.reshape(num_kv_heads, groups + 2, rows // num_kv_heads // (groups + 2), *rest)
    return {"q": blocks[:, :groups].reshape(-1, *rest), "k": blocks[:, groups].reshape(-1, *rest),
            "v": blocks[:, groups + 1].reshape(-1, *rest)}


def fuse_wqkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int, num_kv_heads: int) -> torch.Tensor:
    """Inverse of `split_wqkv`: InternLM2's fused rows from separate q, k, v rows."""
    groups, rest = num_heads // num_kv_heads, q.shape[1:]
    head_dim = q.shape[0] // num_heads
    blocks = torch.cat([q.reshape(num_kv_heads, groups, head_dim, *rest),
                        k.reshape(num_kv_heads, 1, head_dim, *rest), v.reshape(num_kv_heads, 1, head_dim, *rest)],
                       dim=1)
    return blocks.reshape(-1, *rest)


class MappedWeights:
    """Our names over a foreign checkpoint's tensors, read lazily: names mapped with the layout's
    table, fused wqkv split, q/k rows put into interleaved pairs.

    Args:
        weights: the foreign tensors: `keys()`, `tensor(key)` and optionally `file_of(key)`
            (HFWeights, GGUFWeights, InternEvoCheckpoint).
        layout: how they are named and ordered.
        cfg: the model shape.
        where: the checkpoint path, for messages.
    """

    def __init__(self, weights, layout: Layout, cfg: ModelConfig, where: str) -> None:
        self.weights, self.layout, self.cfg, self.where = weights, layout, cfg, where
        self.slots, self.ignored = plan_slots(list(weights.keys()), layout, cfg, self.file_of)

    def file_of(self, key: str) -> str:
        """The file holding foreign tensor `key` (the checkpoint path when unknown)."""
        return str(self.weights.file_of(key)) if hasattr(self.weights, "file_of") else self.where

    def names(self) -> list[str]:
        return list(self.slots)

    def tensor(self, name: str) -> torch.Tensor:
        """Our tensor `name` (KeyError when the checkpoint has none)."""
        slot = self.slots[name]
        return read_slot(self.weights.tensor(slot.key), name, slot, self.layout, self.cfg, self.file_of(slot.key))

    def check_complete(self, expected: dict[str, tuple[int, ...]], config_name: str) -> None:
        """Every parameter the config implies is present (named by its foreign key), nothing extra."""
        missing = [k for k in expected if k not in self.slots]
        if missing:
            raise UserError(f"{self.where}: missing tensor {self.layout.foreign(missing[0])} ({len(missing)} "
                            f"missing) for the shape in {config_name}")
        extra = sorted(set(self.slots) - set(expected))
        if extra:
            raise UserError(f"{self.where}: tensor {self.slots[extra[0]].key} does not fit {config_name} "
                            f"({len(extra)} unexpected; e.g. biases the config does not declare?)")
