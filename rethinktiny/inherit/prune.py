"""Width pruning: gather the kept heads, FFN neurons, hidden channels and vocabulary rows.

Pure functions of tensors. `KeepPlan` says what survives; `prune_layer` / `prune_globals` gather
one layer / the embeddings at a time (so a 7B source streams), `prune_width` does a whole state
dict. Index conventions (all indices are in source numbering, ascending within their group):
- query head h owns rows h*head_dim..(h+1)*head_dim of wq (and of wo's columns); it reads key/value
  head h // group_size, as InternEvo's and HF's repeat-kv do, so the kept query heads are listed
  grouped by their kept kv head;
- FFN neuron n is row n of w1 and w3 and column n of w2;
- hidden channel c is column c of the embedding, output and every input projection, row c of
  every output projection (wo, w2, shortcut up), and entry c of every norm and of wo's bias.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from rethinktiny.config import ModelConfig
from rethinktiny.errors import UserError
from rethinktiny.inherit.layer_choice import top_indices


@dataclass
class LayerKeep:
    """What one target layer keeps of source layer `source_layer`."""

    source_layer: int
    heads: torch.Tensor       # query heads, grouped by kv head (source numbering)
    kv_heads: torch.Tensor    # key/value heads, ascending
    ffn: torch.Tensor         # FFN neurons, ascending
    shortcut_dims: list[torch.Tensor] = field(default_factory=list)  # per kept augmented shortcut


@dataclass
class KeepPlan:
    """Everything the target keeps of the source, plus the target shape it produces."""

    source: ModelConfig
    target: ModelConfig
    hidden: torch.Tensor                 # hidden channels, ascending
    layers: list[LayerKeep]
    vocab: torch.Tensor | None = None    # new id -> old id; None keeps every row
    notes: list[str] = field(default_factory=list)


# ---- checks ----------------------------------------------------------------------------------------

def check_target_fits(source: ModelConfig, target: ModelConfig, token_map_given: bool = False) -> None:
    """Raise a UserError naming the first dimension in which `target` cannot come from `source`.

    Args:
        source: source model shape.
        target: target model shape.
        token_map_given: the vocabulary is chosen by a token map (its length is checked there).
    """
    for key in ("hidden_size", "num_layers", "num_attention_heads", "num_kv_heads", "intermediate_size"):
        if getattr(target, key) > getattr(source, key):
            raise UserError(f"target {key} {getattr(target, key)} is larger than the source's {getattr(source, key)}")
    if not token_map_given and target.vocab_size != source.vocab_size:
        relation = "larger than" if target.vocab_size > source.vocab_size else "different from"
        raise UserError(f"target vocab_size {target.vocab_size} is {relation} the source's {source.vocab_size}; "
                        "pass --token-map to choose the rows")
    if target.head_dim != source.head_dim:
        raise UserError(f"target head_dim {target.head_dim} (hidden {target.hidden_size} / {target.num_attention_heads} "
                        f"heads) differs from the source's {source.head_dim}; whole heads are kept, so it must match")
    source_group = source.num_attention_heads // source.num_kv_heads
    target_group = target.num_attention_heads // target.num_kv_heads
    if target_group > source_group:
        raise UserError(f"target heads do not fit the source's GQA groups: {target_group} query heads per kv head "
                        f"({target.num_attention_heads}/{target.num_kv_heads}) but the source has {source_group} "
                        f"({source.num_attention_heads}/{source.num_kv_heads})")
    if target.series_terms and target.series_terms != source.series_terms:
        raise UserError(f"target series_terms {target.series_terms} != the source's {source.series_terms}")
    if target.aug_shortcuts and (target.aug_shortcuts > source.aug_shortcuts
                                 or target.aug_shortcut_dim > source.aug_shortcut_dim):
        raise UserError(f"target augmented shortcuts {target.aug_shortcuts}x{target.aug_shortcut_dim} exceed the "
                        f"source's {source.aug_shortcuts}x{source.aug_shortcut_dim}")


# ---- choosing indices from scores ----------------------------------------------------------------

def choose_heads(head_scores: torch.Tensor, kv_scores: torch.Tensor, source: ModelConfig,
                 target: ModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Kept kv heads (best groups) and kept query heads (best inside each kept group).

    Args:
        head_scores: [source query heads] scores.
        kv_scores: [source kv heads] scores of whole groups.
        source: source shape.
        target: target shape.
    """
    source_group = source.num_attention_heads // source.num_kv_heads
    target_group = target.num_attention_heads // target.num_kv_heads
    kv_heads = top_indices(kv_scores, target.num_kv_heads)
    heads = [kv * source_group + top_indices(head_scores[kv * source_group:(kv + 1) * source_group], target_group)
             for kv in kv_heads.tolist()]
    return torch.cat(heads), kv_heads


# ---- gathering -----------------------------------------------------------------------------------

def unit_rows(units: torch.Tensor, width: int) -> torch.Tensor:
    """Row indices of whole units (heads) of `width` rows each."""
    return (units[:, None] * width + torch.arange(width)).reshape(-1)


def _gather(t: torch.Tensor, rows: torch.Tensor | None, cols: torch.Tensor | None = None) -> torch.Tensor:
    # index_select always copies, so the result never keeps a (memory-mapped) source alive.
    out = t if rows is None else t.index_select(0, rows)
    out = out if cols is None else out.index_select(1, cols)
    return out.clone() if out is t else out


def prune_layer(tensors: dict[str, torch.Tensor], keep: LayerKeep, plan: KeepPlan) -> dict[str, torch.Tensor]:
    """One target layer from one source layer's tensors (names inside the layer).

    Args:
        tensors: `attention.wq.weight`, ... of the source layer.
        keep: what this layer keeps.
        plan: the whole plan (hidden channels, target options).
    """
    d, hid, target = plan.source.head_dim, plan.hidden, plan.target
    q_rows, kv_rows = unit_rows(keep.heads, d), unit_rows(keep.kv_heads, d)
    out = {
        "attention_norm.weight": _gather(tensors["attention_norm.weight"], hid),
        "ffn_norm.weight": _gather(tensors["ffn_norm.weight"], hid),
        "attention.wq.weight": _gather(tensors["attention.wq.weight"], q_rows, hid),
        "attention.wk.weight": _gather(tensors["attention.wk.weight"], kv_rows, hid),
        "attention.wv.weight": _gather(tensors["attention.wv.weight"], kv_rows, hid),
        "attention.wo.weight": _gather(tensors["attention.wo.weight"], hid, q_rows),
        "feed_forward.w1.weight": _gather(tensors["feed_forward.w1.weight"], keep.ffn, hid),
        "feed_forward.w3.weight": _gather(tensors["feed_forward.w3.weight"], keep.ffn, hid),
        "feed_forward.w2.weight": _gather(tensors["feed_forward.w2.weight"], hid, keep.ffn),
    }
    if target.biased_projections:
        out.update(_attention_biases(tensors, q_rows, kv_rows, hid, target.biased_projections))
    if target.series_terms:
        for name in ("feed_forward.series_scale", "feed_forward.series_shift"):
            out[name] = tensors[name].clone()
    for j, dims in enumerate(keep.shortcut_dims):
        out[f"attention.shortcuts.{j}.down.weight"] = _gather(tensors[f"attention.shortcuts.{j}.down.weight"], dims, hid)
        out[f"attention.shortcuts.{j}.up.weight"] = _gather(tensors[f"attention.shortcuts.{j}.up.weight"], hid, dims)
    return out


def _attention_biases(tensors: dict[str, torch.Tensor], q_rows: torch.Tensor, kv_rows: torch.Tensor,
                      hid: torch.Tensor, projections: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Gathered biases of the target's biased `projections`; a source without biases gives zeros
    (the same function as no bias)."""
    dtype = tensors["attention.wq.weight"].dtype
    rows = {"wq": q_rows, "wk": kv_rows, "wv": kv_rows, "wo": hid}
    out = {}
    for proj in projections:
        index = rows[proj]
        name = f"attention.{proj}.bias"
        out[name] = _gather(tensors[name], index) if name in tensors else torch.zeros(len(index), dtype=dtype)
    return out


def prune_globals(embedding: torch.Tensor, output: torch.Tensor, norm: torch.Tensor,
                  plan: KeepPlan, release: Callable[[], object] | None = None) -> dict[str, torch.Tensor]:
    """Target `tok_embeddings`, `output` and final `norm`: vocabulary rows and hidden columns.

    Args:
        embedding: source `tok_embeddings.weight` [vocab, hidden].
        output: source `output.weight` [vocab, hidden] (the embedding itself when tied).
        norm: source `norm.weight` [hidden].
        plan: the plan.
        release: called between the two big gathers (drops a memory-mapped source's pages).
    """
    tok = _gather(embedding, plan.vocab, plan.hidden)
    if release is not None:
        release()
    # A tied target shares one matrix: it takes the input embedding's rows.
    head = tok.clone() if plan.target.tie_embeddings else _gather(output, plan.vocab, plan.hidden)
    return {"tok_embeddings.weight": tok, "output.weight": head, "norm.weight": _gather(norm, plan.hidden)}


def prune_width(state_dict: dict[str, torch.Tensor], keep: KeepPlan) -> dict[str, torch.Tensor]:
    """The target state dict from a whole source state dict (our names). See module docstring.

    Args:
        state_dict: source parameters.
        keep: the plan.
    """
    out = prune_globals(state_dict["tok_embeddings.weight"],
                        state_dict.get("output.weight", state_dict["tok_embeddings.weight"]),
                        state_dict["norm.weight"], keep)
    for new_index, layer_keep in enumerate(keep.layers):
        prefix = f"layers.{layer_keep.source_layer}."
        tensors = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        for name, t in prune_layer(tensors, layer_keep, keep).items():
            out[f"layers.{new_index}.{name}"] = t
    return out

