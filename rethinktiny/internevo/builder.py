"""Model builders InternEvo calls through its registry for `model_type="PANGU_PI_PRO"` / `"PANGU_PI"`.

InternEvo's `initialize_model` calls the builder with the raw `model=dict(...)` entries of the
config (plus any key of ours) and no device; the builder returns the model on the current device
with InternEvo's parallel attribute on every parameter (its ZeRO optimizer asserts one is set).
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


def config_from_entry(entry: dict[str, Any], model_type: str) -> ModelConfig:
    cfg = from_internevo(entry, source="config model=dict(...)")
    if model_type == MODEL_TYPE_PRO and not cfg.is_pro:
        raise UserError(f"model_type {MODEL_TYPE_PRO} has no series activation or augmented shortcuts; "
                        f"use model_type {MODEL_TYPE_PANGU_PI} for them")
    return cfg


def build_model(model_type: str, **entry: Any) -> torch.nn.Module:
    """Build `PanGuPi` for InternEvo from a `model=dict(...)` entry."""
    _check_parallel_layout()
    cfg = config_from_entry(entry, model_type)
    if gpc.is_rank_for_log():
        print(f"[rethinktiny] building {model_type} {describe(cfg)}", flush=True)
    model = PanGuPi(cfg).to(get_current_device())
    for param in model.parameters():
        setattr(param, IS_REPLICA_ZERO_PARALLEL, True)
    return model


def build_pangu_pi_pro(**entry: Any) -> torch.nn.Module:
    return build_model(MODEL_TYPE_PRO, **entry)


def build_pangu_pi(**entry: Any) -> torch.nn.Module:
    return build_model(MODEL_TYPE_PANGU_PI, **entry)
