"""The loss of a batch under a frozen model: the number InternEvo's trainer reports for that step.

InternEvo runs a step as `micro_num` micro-batches of one packed row each and reports the mean
of their token-mean cross-entropies (`FlashGPTLMLoss`, labels -100 ignored). `batch_loss` computes
the same, forward-only, with our `PanGuPi` in the config's dtype (logits upcast to float32 for the
loss, as InternEvo's mixed-precision wrapper does).
"""

from __future__ import annotations

import os
import torch
import torch.nn.functional as F

from rethinktiny.checkpoint import InternEvoCheckpoint, check_state_dict, read_model_config
from rethinktiny.config import ModelConfig
from rethinktiny.dtypes import parse_dtype
from rethinktiny.errors import UserError
from rethinktiny.model import PanGuPi, parameter_shapes
from rethinktiny.resample.packing import IGNORE, PackedRow

IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # parameter-free buffers InternEvo may save


def _check_same_model(ckpt: InternEvoCheckpoint, cfg: ModelConfig) -> None:
    """The checkpoint's own model config (when saved) must describe the config's model."""
    saved = read_model_config(ckpt.folder, required=False)
    if saved is None:
        return
    mine, theirs = cfg.to_dict(), saved.to_dict()
    differing = [k for k in mine if k != "name" and mine[k] != theirs.get(k)]
    if differing:
        key = differing[0]
        raise UserError(f"{ckpt.folder}: checkpoint from a different model: {key} is {theirs.get(key)!r} there "
                        f"but {mine[key]!r} in the config ({len(differing)} field(s) differ)")


def open_checked_checkpoint(path: str | os.PathLike, cfg: ModelConfig) -> tuple[InternEvoCheckpoint, dict]:
    """The checkpoint and our expected shapes, after checking every name and shape against `cfg`
    (no tensor is read yet: shards are memory-mapped)."""
    ckpt = InternEvoCheckpoint(path, config=cfg)
    _check_same_model(ckpt, cfg)
    expected = parameter_shapes(cfg)
    names = {k for k in ckpt.keys() if not k.endswith(IGNORED_SUFFIXES)}
    if cfg.tie_embeddings:
        names.add("output.weight")
    shapes = {name: (tuple(ckpt.tensor(name).shape) if name in ckpt else expected[name]) for name in names}
    check_state_dict(shapes_as_tensors(shapes), expected, f"{ckpt.folder} (checkpoint from a different model?)")
    return ckpt, expected


def shapes_as_tensors(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Meta tensors with the given shapes, for `check_state_dict` (which compares `.shape`)."""
    return {name: torch.empty(shape, device="meta") for name, shape in shapes.items()}


def load_scoring_model(path: str | os.PathLike, cfg: ModelConfig, dtype: str = "float32",
                       device: torch.device | str = "cpu"):
    """`PanGuPi(cfg)` with the checkpoint's weights, in eval mode, cast to `dtype`, on `device`.

    Args:
        path: InternEvo step folder, or its save folder (latest step).
        cfg: the model the config describes (the checkpoint must match it).
        dtype: weight dtype (see `rethinktiny.dtypes`).
        device: where to score.
    """
    ckpt, _ = open_checked_checkpoint(path, cfg)
    state = {k: ckpt.tensor(k) for k in ckpt.keys() if not k.endswith(IGNORED_SUFFIXES)}
    if cfg.tie_embeddings:
        state["output.weight"] = state["tok_embeddings.weight"]
    model = PanGuPi(cfg)
    model.load_state_dict(state, strict=True)
    return model.to(device=device, dtype=parse_dtype(dtype)).eval()


@torch.inference_mode()
def row_loss(model, row: PackedRow, label_smoothing: float = 0.0) -> float:
    """Token-mean cross-entropy of one packed row (nan when it has no trained label)."""
    device = next(model.parameters()).device
    tokens = torch.from_numpy(row.tokens).to(device).unsqueeze(0)
    logits = model(tokens, cu_seqlens=torch.from_numpy(row.cu_seqlens).to(device),
                   indexes=torch.from_numpy(row.indexes).to(device))
    labels = torch.from_numpy(row.labels).to(device)
    loss = F.cross_entropy(logits[0].float(), labels, ignore_index=IGNORE, label_smoothing=label_smoothing)
    return float(loss)


def batch_loss(model, rows: list[PackedRow], label_smoothing: float = 0.0) -> float:
    """Mean over the batch's packed rows of each row's token-mean loss (InternEvo's step loss)."""
    return sum(row_loss(model, row, label_smoothing) for row in rows) / len(rows)
