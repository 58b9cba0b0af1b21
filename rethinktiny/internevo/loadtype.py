"""Checkpoint-load type `ckpt_type="inherited"`: start training from a `rethinktiny inherit` folder.

    ckpt = dict(load_ckpt_info=dict(path=FOLDER, content=("model",), ckpt_type="inherited"),
                auto_resume=False, ...)

InternEvo's own model loader uses `strict=False` and only logs missing keys, so a wrong folder
silently trains from random weights. This loader checks every name and shape against the model
being trained first and fails with the key and both shapes. Its reader
(`rethinktiny.checkpoint.InternEvoCheckpoint`) also reorders the q/k rows of a rotate-half
checkpoint (`qk_interleaved=False`) to our layout; InternEvo's own `"internevo"` type, which
cannot, refuses such a checkpoint for our model types (`refusing_rotate_half`).
"""

from __future__ import annotations

import torch

from rethinktiny.checkpoint import InternEvoCheckpoint, model_state_dict
from rethinktiny.configfiles.load import local_path
from rethinktiny.errors import UserError

LOAD_TYPE = "inherited"


def load_inherited(ckpt_mm, load_info, *_args, **_kwargs) -> str:
    """InternEvo load-type function: (checkpoint manager, load_info, train_state) -> loaded contents."""
    content = load_info["content"]  # InternEvo has turned the tuple into a CheckpointLoadMask
    requested = content.load_set if hasattr(content, "load_set") else set(content)
    if requested != {"model"}:
        raise UserError(f"ckpt_type {LOAD_TYPE!r} loads only content=('model',), got {sorted(requested)}")
    folder = local_path(str(load_info["path"]), key=f"ckpt.load_ckpt_info.path (ckpt_type {LOAD_TYPE!r})")
    live = ckpt_mm.model.state_dict()
    expected = {name: tensor.shape for name, tensor in live.items()}
    state = model_state_dict(InternEvoCheckpoint(folder), expected, _ties_head(live),
                             source=f"ckpt.load_ckpt_info.path {folder}")
    with torch.no_grad():
        for name, tensor in live.items():
            tensor.copy_(state[name].to(tensor.dtype))
    return "model, "


def _ties_head(live: dict[str, torch.Tensor]) -> bool:
    """Whether the model being trained shares its head with its embedding (one storage)."""
    head, embedding = live.get("output.weight"), live.get("tok_embeddings.weight")
    return head is not None and embedding is not None and head.data_ptr() == embedding.data_ptr()


def refusing_rotate_half(internevo_loader):
    """Wrap InternEvo's own `ckpt_type="internevo"` loader: for our model types, a checkpoint whose
    q/k rows are in rotate-half order (`qk_interleaved=False`, e.g. the newest InternEvo's LLAMA2)
    is refused with one line, since that loader copies rows as they are (`"inherited"` reorders them)."""
    if getattr(internevo_loader, "__rethinktiny__", False):
        return internevo_loader

    def load_internevo_checked(ckpt_mm, load_info, *args, **kwargs):
        from internlm.core.context import global_context as gpc

        from rethinktiny.checkpoint import QK_LAYOUT_KEY, find_step_folder, read_qk_interleaved
        from rethinktiny.config import MODEL_TYPES

        folder = local_path(str(load_info["path"]))
        if gpc.config.model_type in MODEL_TYPES and folder is not None and folder.is_dir():
            step = find_step_folder(folder)
            if not read_qk_interleaved(step):
                raise UserError(f"ckpt.load_ckpt_info.path {step}: {QK_LAYOUT_KEY}=False (rotate-half q/k rows) but "
                                f"{gpc.config.model_type} rotates interleaved pairs; use ckpt_type={LOAD_TYPE!r}, "
                                "which reorders the rows")
        return internevo_loader(ckpt_mm, load_info, *args, **kwargs)

    load_internevo_checked.__rethinktiny__ = True
    load_internevo_checked.__wrapped__ = internevo_loader
    return load_internevo_checked
