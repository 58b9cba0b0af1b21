"""The training entry run in every rank (under torchrun or srun): InternEvo's real trainer.

Built on InternEvo's public functions (launch, model/optimizer initialisation, data loader,
checkpoint manager, trainer), not a copy of upstream's script. Differences that matter:
- an exception in any rank is logged with its rank and exits non-zero (InternEvo's script logs
  it and exits 0, so a scheduler thinks the job succeeded);
- rank 0 prints one line per step (loss, lr, grad norm, tokens/s) and appends it to
  `<save_ckpt_folder>/train_metrics.jsonl`;
- every saved step folder also gets `model_config.json`, so tools read the shape without
  unpickling InternEvo's config.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
import warnings
from pathlib import Path

import torch
import torch.distributed as dist

from rethinktiny.errors import UserError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="rethinktiny training entry (one rank)")
    parser.add_argument("--config", required=True, help="InternEvo Python config file")
    parser.add_argument("--launcher", choices=["torch", "slurm"], default="torch")
    parser.add_argument("--port", type=int, default=int(os.environ.get("MASTER_PORT", 8888)),
                        help="master port (slurm launcher; torchrun sets MASTER_PORT itself)")
    parser.add_argument("--seed", type=int, default=1024)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set data.total_steps=40 (repeatable)")
    return parser.parse_args(argv)


def _local_folder(path: str | None) -> Path | None:
    if not path:
        return None
    if path.startswith("local:"):
        return Path(path[len("local:"):])
    return None if ":" in path.split("/")[0] else Path(path)


class StepLog:
    """Rank 0's per-step line and the metrics file the demo's plots read."""

    def __init__(self, save_folder: Path | None, tokens_per_step: int) -> None:
        self.path = save_folder / "train_metrics.jsonl" if save_folder else None
        self.tokens_per_step = tokens_per_step
        self.last_time = time.time()

    def write(self, step: int, loss: float, lr: float, grad_norm: float, skipped: bool) -> None:
        now = time.time()
        tokens_per_s = self.tokens_per_step / max(now - self.last_time, 1e-9)
        self.last_time = now
        record = {"step": step, "loss": round(loss, 6), "lr": lr, "grad_norm": round(grad_norm, 6),
                  "tokens": step * self.tokens_per_step, "tokens_per_s": round(tokens_per_s, 1),
                  "skipped": skipped}
        print(f"[rethinktiny] step {step:>6} | loss {loss:.4f} | lr {lr:.3e} | grad_norm {grad_norm:.3f} "
              f"| {tokens_per_s:,.0f} tokens/s" + (" | update skipped" if skipped else ""), flush=True)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")


def _mean_over_data_parallel(value: torch.Tensor) -> float:
    from internlm.core.context import ParallelMode
    from internlm.core.context import global_context as gpc

    value = value.detach().float().clone()
    dist.all_reduce(value, group=gpc.get_group(ParallelMode.DATA))
    return value.item() / gpc.get_world_size(ParallelMode.DATA)


def _grad_norm(grad_norm_groups) -> float:
    values = [v for v in grad_norm_groups.values() if v is not None] if isinstance(grad_norm_groups, dict) else []
    return float(sum(v * v for v in values) ** 0.5) if values else float("nan")


def _write_step_model_config(folder: str, model_cfg) -> None:
    from rethinktiny.checkpoint import write_model_config

    local = _local_folder(folder)
    if local is not None and local.is_dir():
        write_model_config(local, model_cfg)


def run(config_path: str, overrides: list[str] = ()) -> None:
    """Train according to the already-launched InternEvo global context (`gpc.config`)."""
    from internlm.checkpoint import CheckpointManager
    from internlm.core.context import ParallelMode
    from internlm.core.context import global_context as gpc
    from internlm.data import build_train_loader_with_data_type
    from internlm.data.train_state import get_train_state
    from internlm.initialize import initialize_trainer
    from internlm.model.losses import FlashGPTLMLoss
    from internlm.model.metrics import AccPerplex
    from internlm.train import get_scheduler_hooks, initialize_model, initialize_optimizer, load_new_batch
    from internlm.utils.common import get_current_device, launch_time

    from rethinktiny.internevo.builder import config_from_entry

    cfg = gpc.config
    model_cfg = config_from_entry(dict(cfg.model), cfg.model_type) if cfg.model_type in (
        "PANGU_PI_PRO", "PANGU_PI") else None
    _check_data_folder(cfg.data.get("train_folder"))
    current_time = launch_time()
    model = initialize_model()
    criterion = FlashGPTLMLoss(parallel_output=False, label_smoothing=cfg.loss.get("label_smoothing", 0))
    train_dl, dataset_types = build_train_loader_with_data_type()
    train_state = get_train_state(train_dl)
    optimizer, beta2_scheduler, lr_scheduler = initialize_optimizer(model)
    ckpt_manager = CheckpointManager(
        ckpt_config=cfg.ckpt, model=model, optimizer=optimizer, lr_scheduler=lr_scheduler,
        train_dl=train_dl, model_config=cfg.model, model_config_file=_config_text(config_path, overrides))
    ckpt_manager.try_resume_training(train_state, current_time)
    metric = AccPerplex(device=get_current_device(), tp_pg=gpc.get_group(ParallelMode.TENSOR),
                        dp_pg=gpc.get_group(ParallelMode.DATA), dataset_types=dataset_types)
    trainer, train_dl, _, _ = initialize_trainer(
        model=model, optimizer=optimizer, criterion=criterion, train_dataloader=train_dl,
        lr_scheduler=lr_scheduler, beta2_scheduler=beta2_scheduler,
        scheduler_hooks=get_scheduler_hooks(metric, optimizer, None))
    save_folder = _local_folder(cfg.ckpt.get("save_ckpt_folder"))
    tokens_per_step = cfg.data.micro_num * cfg.data.micro_bsz * cfg.data.seq_len * gpc.get_world_size(ParallelMode.DATA)
    log = StepLog(save_folder if gpc.is_rank_for_log() else None, tokens_per_step)
    _train_loop(trainer, train_dl, train_state, ckpt_manager, metric, log, model_cfg, load_new_batch)
    ckpt_manager.wait_async_upload_finish()


def _train_loop(trainer, train_dl, train_state, ckpt_manager, metric, log, model_cfg, load_new_batch) -> None:
    from internlm.core.context import global_context as gpc

    total_steps = gpc.config.data.total_steps
    trainer.train()
    train_iter = iter(train_dl)
    for batch_count in range(train_state.batch_count, total_steps):
        gpc.config.batch_count = batch_count
        batch, train_iter = load_new_batch(train_dl=train_dl, train_iter=train_iter, train_state=train_state)
        train_state.batch_count = batch_count
        train_state.num_consumed_samples_in_epoch += len(batch[1])
        trainer.zero_grad()
        if batch[0].get("type_ids", None) is not None:
            metric.set_current_type_ids(type_ids=batch[0].pop("type_ids", None))
        _, _, loss = trainer.execute_schedule(batch, forward_only=False, return_loss=True, return_output_label=False)
        success, grad_norm_groups = trainer.step()
        if success:
            train_state.step_count += 1
        else:
            train_state.inf_nan_skip_batches += 1
        mean_loss = _mean_over_data_parallel(loss)
        if not torch.isfinite(torch.tensor(mean_loss)):
            raise FloatingPointError(f"loss is {mean_loss} at step {batch_count + 1}")
        if gpc.is_rank_for_log():
            lr = trainer.engine.optimizer.param_groups[0]["lr"]
            log.write(train_state.step_count, mean_loss, lr, _grad_norm(grad_norm_groups), not success)
        saved_before = ckpt_manager.storage_manager.latest_save_step
        now_break = ckpt_manager.try_save_checkpoint(train_state)
        if ckpt_manager.storage_manager.latest_save_step != saved_before and gpc.is_rank_for_log() and model_cfg:
            _write_step_model_config(ckpt_manager.storage_manager.latest_save_folder, model_cfg)
        if now_break:
            break


def _config_text(config_path: str, overrides) -> str:
    """The config file as saved into checkpoints, with the command-line overrides appended."""
    text = Path(config_path).read_text()
    if overrides:
        text += "\n# overridden on the command line (--set):\n" + "".join(f"# {item}\n" for item in overrides)
    return text


def _check_data_folder(folder: str | None) -> None:
    if folder is None:
        return
    from rethinktiny.data.tokenized import require_bin_files

    require_bin_files(folder)


def _rank() -> str:
    if dist.is_initialized():
        return str(dist.get_rank())
    return os.environ.get("RANK", os.environ.get("SLURM_PROCID", "?"))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # InternEvo asks its DataLoader for pinned memory, which means nothing without a GPU.
    warnings.filterwarnings("ignore", message=".*pin_memory.*no accelerator is found.*")
    import rethinktiny.internevo as plugin

    plugin.register()
    from internlm.core.context import global_context as gpc
    from internlm.initialize import initialize_distributed_env
    from internlm.initialize.launch import args_sanity_check

    from rethinktiny.configfiles.load import apply_overrides

    try:
        initialize_distributed_env(config=args.config, launcher=args.launcher, master_port=args.port, seed=args.seed,
                                   args_check=False)
        apply_overrides(gpc.config, args.overrides)  # before InternEvo fills in its defaults
        args_sanity_check()
        run(args.config, args.overrides)
    except UserError as err:
        rank = _rank()
        print(f"[rethinktiny] rank {rank}: error: {err}", file=sys.stderr, flush=True)
        return 2
    except Exception:  # noqa: BLE001 - every failure must reach the exit code, with its rank
        rank = _rank()
        print(f"[rethinktiny] rank {rank} failed:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if gpc.is_rank_for_log():
        print("[rethinktiny] training finished", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
