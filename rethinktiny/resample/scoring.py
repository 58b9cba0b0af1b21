"""The loss of a batch under a frozen model: the number InternEvo's trainer reports for that step.

InternEvo runs a step as `micro_num` micro-batches of one packed row each and reports the mean
of their token-mean cross-entropies (`FlashGPTLMLoss`, labels -100 ignored). `batch_loss` computes
the same, forward-only, with our `PanGuPi` (`rethinktiny.checkpoint.load_model`) in the config's dtype (logits upcast to float32 for the
loss, as InternEvo's mixed-precision wrapper does).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rethinktiny.resample.packing import IGNORE, PackedRow


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
