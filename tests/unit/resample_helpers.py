"""Small real inputs for the resample tests: a slice of the tokenized sample, a config file for it
(configs/tiny_cpu.py with a smaller model and shorter rows), and a random-init checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rethinktiny.checkpoint import save_model_only
from rethinktiny.config import ModelConfig, from_internevo
from rethinktiny.data.tokenized import find_bin_files, iter_documents, write_documents

REPO = Path(__file__).resolve().parents[2]
TINY_CONFIG = REPO / "configs" / "tiny_cpu.py"

SMALL_MODEL = dict(hidden_size=64, num_layers=2, num_attention_heads=4, num_kv_attention_heads=2,
                   intermediate_size=176, vocab_size=2000)


def write_small_data(src: Path, dst: Path, tokens_per_file: int) -> Path:
    """The first documents of every `.bin` under `src` until `tokens_per_file` tokens, same layout."""
    for path in find_bin_files(src):
        documents, total = [], 0
        for tokens in iter_documents(path):
            if total >= tokens_per_file:
                break
            documents.append(tokens[:tokens_per_file])
            total += len(documents[-1])
        out = dst / path.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_documents(out, documents)
    return dst


def write_config(path: Path, train_folder: Path, save: Path | None = None, seq_len: int = 32, micro_bsz: int = 2,
                 micro_num: int = 2, total_steps: int = 4, model: dict | None = None, extra: str = "") -> Path:
    """configs/tiny_cpu.py (a real InternEvo config) with a small model and short rows appended."""
    model = {**SMALL_MODEL, **(model or {})}
    text = TINY_CONFIG.read_text() + f"""
# --- test settings ---
data.update(seq_len={seq_len}, micro_bsz={micro_bsz}, micro_num={micro_num}, total_steps={total_steps},
            train_folder={str(train_folder)!r})
lr_scheduler.update(total_steps={total_steps})
model.update({model!r})
ckpt.update(save_ckpt_folder={('local:' + str(save)) if save else 'local:/nonexistent'!r}, checkpoint_every=1000)
{extra}
"""
    path.write_text(text)
    return path


def model_config(model: dict | None = None) -> ModelConfig:
    entry = {**SMALL_MODEL, "no_bias": True, "layer_norm_epsilon": 1e-5, "rope_base": 10000, "preset": "tiny",
             **(model or {})}
    return from_internevo(entry)


def write_checkpoint(folder: Path, cfg: ModelConfig, seed: int = 0, poison: str | None = None) -> Path:
    """A model-only checkpoint of a seeded random-init PanGuPi (`poison`: a tensor set to nan)."""
    from rethinktiny.model import PanGuPi

    torch.manual_seed(seed)
    state = PanGuPi(cfg).state_dict()
    if poison:
        state[poison] = torch.full_like(state[poison], float("nan"))
    save_model_only(folder, state, cfg)
    return folder


def folder_bytes(folder: Path) -> dict[str, bytes]:
    """Relative path -> bytes of every file below `folder`."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def internevo_single_rank(tmp_path_factory):
    """InternEvo's loader functions need a process group and a global rank: one gloo rank."""
    import torch.distributed as dist

    import rethinktiny.internevo  # noqa: F401
    from internlm.core.context import ParallelMode
    from internlm.core.context import global_context as gpc

    store = tmp_path_factory.mktemp("store") / "store"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    gpc._global_ranks[ParallelMode.GLOBAL] = 0
    # InternEvo's packed datasets read the global config: the newest data.use_shm and
    # use_packed_dataset (its launch's defaults for packed training), 0.4.9 `model is None`.
    config_before = gpc._config
    if config_before is None:
        gpc.load_config(dict(model=None, data=dict(use_shm=False, use_packed_dataset=True)))
    yield
    gpc._config = config_before
    gpc._global_ranks.pop(ParallelMode.GLOBAL, None)
    dist.destroy_process_group()


def internevo_dataset(folder, spec, min_length=None):
    """InternEvo's own packed training dataset of `folder` (needs `internevo_single_rank`)."""
    from internlm.data.tokenized.packed_dataset import get_packed_dataset_without_short_length

    return get_packed_dataset_without_short_length(
        str(folder), max_length_per_sample=spec.seq_len, packed_length=spec.packed_length,
        min_length=spec.min_length if min_length is None else min_length,
        pack_sample_into_one=spec.pack_sample_into_one)
