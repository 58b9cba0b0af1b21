"""Inheritance test fixtures shared by the inherit, source and GGUF tests: the tiny preset, a random
source checkpoint, calibration data."""

import torch

from rethinktiny.checkpoint import save_model_only
from rethinktiny.config import get_preset
from rethinktiny.data.tokenized import write_documents
from rethinktiny.model import PanGuPi

CFG = get_preset("tiny")  # 4 layers x 128, 4 heads / 2 kv heads of 32, FFN 352, vocab 4096
# inherit() without calibration data: its defaults (activation scores, block influence) need data.
NO_DATA = dict(layers="first-last", width="l2")


def make_source(folder, cfg=CFG, seed=0):
    """A random model with non-trivial norms saved as an InternEvo model-only folder."""
    torch.manual_seed(seed)
    model = PanGuPi(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and "series" not in name:
                p.uniform_(0.5, 1.5) if "norm" in name else p.normal_(0, 0.02)
            elif p.dim() == 2:
                p.normal_(0, 0.1)  # larger than the init so logits differ clearly between plans
    save_model_only(folder, model.state_dict(), cfg)
    return model.eval()


def write_calib(folder, vocab, docs=12, length=70, seed=0):
    gen = torch.Generator().manual_seed(seed)
    write_documents(folder / "en" / "00000.bin",
                    (torch.randint(0, vocab, (length,), generator=gen).tolist() for _ in range(docs)))
    return folder
