"""Model builders InternEvo calls through its registry for `model_type="PANGU_PI_PRO"` / `"PANGU_PI"`.

InternEvo calls the builder with the `model=dict(...)` entries of the config (plus any key of
ours; `checkpoint`, the share of layers recomputed in backward, becomes `ModelConfig.checkpoint`);
the newest tree also passes `first`, `last`, `start_layer_idx` and `device` (its pipeline stage)
and drops `use_flash_attn`, `apply_post_layer_norm`, `embed_split_hidden`. The builder returns the
whole model on the current device with InternEvo's parallel attribute on every parameter (its
ZeRO optimizer asserts one is set).
"""

from __future__ import annotations

from typing import Any

import torch
from internlm.core.context import IS_REPLICA_ZERO_PARALLEL, ParallelMode
from internlm.core.context import global_context as gpc
from internlm.utils.common import get_current_device

from rethinktiny.config import MODEL_TYPE_PANGU_PI, MODEL_TYPE_PRO, ModelConfig, describe, from_internevo
from rethinktiny.errors import UserError
from rethinktiny.model import PanGuPi


def _check_parallel_layout() -> None:
    # The pure-torch model is replicated and ZeRO-1-sharded; tensor/pipeline parallel layouts
    # would need InternEvo's parallel linear layers, which a 1-2B model does not need.
    for mode, name in ((ParallelMode.TENSOR, "tensor"), (ParallelMode.PIPELINE, "pipeline")):
        if gpc.is_initialized(mode) and gpc.get_world_size(mode) > 1:
            raise UserError(f"parallel.{name}.size > 1 is not supported by {MODEL_TYPE_PRO}/{MODEL_TYPE_PANGU_PI}; "
                            "use data parallel with zero1 (parallel.zero1.size)")


# What the newest tree's create_model adds for a pipeline stage; one stage is the whole model here.
_STAGE_KEYS = ("first", "last", "start_layer_idx", "device")


def _check_rotary_layout(entry: dict[str, Any]) -> None:
    # PanGuPi rotates interleaved q/k pairs; InternEvo's newest sanity check fills in
    # qk_interleaved=False when a config omits it, which would describe a layout we do not compute.
    if entry.get("qk_interleaved", True) is False or entry.get("adapt_hf", False):
        raise UserError("model.qk_interleaved=False (or adapt_hf=True): PANGU_PI_PRO/PANGU_PI rotate interleaved "
                        "q/k pairs; set model.qk_interleaved=True")


def config_from_entry(entry: dict[str, Any], model_type: str) -> ModelConfig:
    _check_rotary_layout(entry)
    cfg = from_internevo(entry, source="config model=dict(...)")
    if model_type == MODEL_TYPE_PRO and not cfg.is_pro:
        raise UserError(f"model_type {MODEL_TYPE_PRO} has no series activation or augmented shortcuts; "
                        f"use model_type {MODEL_TYPE_PANGU_PI} for them")
    return cfg


def build_model(model_type: str, **entry: Any) -> torch.nn.Module:
    """Build `PanGuPi` for InternEvo from a `model=dict(...)` entry."""
    _check_parallel_layout()
    if entry.get("first", True) is not True or entry.get("last", True) is not True or entry.get("start_layer_idx", 0):
        raise UserError(f"{model_type} builds the whole model; a pipeline stage was asked for")
    cfg = config_from_entry({k: v for k, v in entry.items() if k not in _STAGE_KEYS}, model_type)
    if gpc.is_rank_for_log():
        print(f"[rethinktiny] building {model_type} {describe(cfg)}, activation checkpointing "
              f"{cfg.checkpoint_layers}/{cfg.num_layers} layers", flush=True)
    model = PanGuPi(cfg).to(get_current_device())
    for param in model.parameters():
        setattr(param, IS_REPLICA_ZERO_PARALLEL, True)
    return model


def build_pangu_pi_pro(**entry: Any) -> torch.nn.Module:
    return build_model(MODEL_TYPE_PRO, **entry)


def build_pangu_pi(**entry: Any) -> torch.nn.Module:
    return build_model(MODEL_TYPE_PANGU_PI, **entry)
