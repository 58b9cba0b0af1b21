"""InternEvo's global context in one process (world size 1, gloo), for tools, tests and benchmarks
that need InternEvo objects (its LLAMA2 model, its datasets) outside a torchrun job."""

from __future__ import annotations

import copy
import socket
from typing import Any

import torch.distributed as dist

import rethinktiny.internevo as plugin

MINIMAL_CONFIG: dict[str, Any] = dict(
    model_type="PANGU_PI_PRO",
    data=dict(seq_len=256, micro_num=1, micro_bsz=1, total_steps=1, use_packed_dataset=True,
              pack_sample_into_one=False, rampup_batch_size="", min_length=0, num_worker=0),
    model=dict(hidden_size=128, num_layers=1, num_attention_heads=4, vocab_size=128, dtype="torch.float32",
               use_flash_attn=True, checkpoint=False),
    parallel=dict(zero1=dict(size=1, fsdp=False), tensor=dict(size=1, mode="mtp"),
                  pipeline=dict(size=1, interleaved_overlap=False), weight=dict(size=1, overlap=False,
                                                                                 memory_pool=False)),
    ckpt=dict(enable_save_ckpt=False, auto_resume=False),
    grad_scaler=dict(fp16=dict(initial_scale=1, min_scale=1, growth_interval=1), growth_factor=2,
                     backoff_factor=0.5, max_scale=1, hysteresis=1),
    hybrid_zero_optimizer=dict(overlap_sync_grad=False, overlap_sync_param=False, clip_grad_norm=1.0),
    adam=dict(lr=1e-3, adam_beta1=0.9, adam_beta2=0.95, adam_beta2_c=0, adam_eps=1e-8, weight_decay=0.0),
    lr_scheduler=dict(total_steps=1, init_steps=0, warmup_ratio=0.0, eta_min=0.0, last_epoch=-1),
    beta2_scheduler=dict(init_beta2=0.95, c=0, cur_iter=-1),
    loss=dict(label_smoothing=0),
    enable_tb=False,
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_local(overrides: dict[str, Any] | None = None, seed: int = 1024) -> None:
    """Initialise InternEvo's `gpc` for a single process (no-op when a process group exists).

    Args:
        overrides: config entries merged into MINIMAL_CONFIG, one level deep (e.g. model=dict(...)
            replaces the given model keys and keeps the others).
        seed: InternEvo's seed.
    """
    plugin.register()
    if dist.is_initialized():
        return
    from internlm.initialize.launch import args_sanity_check, launch

    config = copy.deepcopy(MINIMAL_CONFIG)
    for key, value in copy.deepcopy(overrides or {}).items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key].update(value)
        else:
            config[key] = value
    launch(config=config, rank=0, world_size=1, host="127.0.0.1", port=_free_port(), backend="gloo",
           local_rank=0, seed=seed)
    args_sanity_check()
