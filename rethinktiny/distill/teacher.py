"""The frozen teacher: any source `rethinktiny inherit` reads, as our pure-torch `PanGuPi`.

InternEvo checkpoints (ours, LLAMA2, INTERNLM2), Hugging Face LLaMA-family folders and GGUF files
all go through `rethinktiny.inherit.sources.open_source`, so the teacher is read exactly as
inheritance reads it. The model is built on the meta device and filled tensor by tensor, so a
teacher costs its weights once, in the training dtype, on the student's device.
"""

from __future__ import annotations

from pathlib import Path

import torch

from rethinktiny.config import ModelConfig
from rethinktiny.errors import UserError


def teacher_config(path: str | Path) -> ModelConfig:
    """The teacher's shape (cheap: reads configs and tensor names, no weights)."""
    from rethinktiny.inherit.sources import open_source

    if not Path(path).exists():
        raise UserError(f"distill.teacher {path}: not found (an InternEvo checkpoint, HF folder or .gguf file)")
    return open_source(path).config


def load_teacher(path: str | Path, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
                 ) -> torch.nn.Module:
    """The teacher in eval mode with every parameter frozen.

    Args:
        path: an InternEvo checkpoint folder, a HF folder or a .gguf file.
        dtype: weight dtype (the training dtype).
        device: where the teacher runs (the student's device).
    """
    from rethinktiny.inherit.sources import open_source
    from rethinktiny.model import PanGuPi

    if not Path(path).exists():
        raise UserError(f"distill.teacher {path}: not found (an InternEvo checkpoint, HF folder or .gguf file)")
    source = open_source(path)
    with torch.device("meta"):
        model = PanGuPi(source.config)
    state = {name: source.tensor(name).to(device=device, dtype=dtype) for name in source.expected}
    if source.config.tie_embeddings:
        state.setdefault("output.weight", state["tok_embeddings.weight"])
    model.load_state_dict(state, strict=True, assign=True)
    if source.config.tie_embeddings:
        model.output.weight = model.tok_embeddings.weight
    source.release()
    model.requires_grad_(False)
    return model.eval()


def teacher_bytes(cfg: ModelConfig, dtype: torch.dtype) -> int:
    """Bytes of the teacher's weights in `dtype` (tied embeddings counted once): what the memory
    plan adds for online distillation (the forward's activations are freed layer by layer under
    no_grad; the logits of one micro-batch come on top, as for the student)."""
    return cfg.num_params() * torch.empty((), dtype=dtype).element_size()
