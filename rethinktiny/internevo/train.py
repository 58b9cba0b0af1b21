"""The training entry run in every rank (under torchrun or srun): InternEvo's real trainer.

Built on InternEvo's public functions (launch, model/optimizer initialisation, data loaders,
checkpoint manager, trainer, validation), not a copy of upstream's script; where InternEvo
versions differ, `rethinktiny.internevo.api` picks the call. Differences that matter:
- an exception in any rank is logged with its rank and exits non-zero (InternEvo's script logs
  it and exits 0, so a scheduler thinks the job succeeded);
- rank 0 prints one line per step (loss, lr, grad norm, tokens/s) and appends it to
  `<save_ckpt_folder>/train_metrics.jsonl`;
- every `data.valid_every` steps, InternEvo's `evaluate_on_val_dls` runs on each data type of
  `data.valid_folder`; its loss, perplexity and accuracy per type are printed and stored in that
  step's record under `"valid"` (loss: mean over rank 0's batches, as InternEvo computes it;
  perplexity and accuracy: over all data-parallel ranks);
- with `enable_tb` (InternEvo's default), rank 0 writes TensorBoard events (`train/*`,
  `valid/<type>/*`) to `tensorboard_folder`, else `<save_ckpt_folder>/tensorboard`;
- every saved step folder also gets `model_config.json`, so tools read the shape without
  unpickling InternEvo's config.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
import warnings
from pathlib import Path

import torch
import torch.distributed as dist

from rethinktiny.configfiles.load import local_path
from rethinktiny.errors import UserError
from rethinktiny.launch import exit_with_parent


DISTILL_FIGURES = ("kd_loss", "ce_loss", "teacher_mass", "cache_hits")  # rethinktiny.internevo.distill


class StepLog:
    """Rank 0's per-step line, the metrics file the demo's plots read, and TensorBoard events."""

    def __init__(self, save_folder: Path | None, tokens_per_step: int, tb_writer=None, start_step: int = 0) -> None:
        """`start_step`: the step training (re)starts from; rows a crashed run wrote after it are dropped,
        so a resumed run's file holds each step once (TensorBoard's purge_step does the same)."""
        self.path = save_folder / "train_metrics.jsonl" if save_folder else None
        self.tokens_per_step = tokens_per_step
        self.tb_writer = tb_writer
        self.last_time = time.time()
        if self.path is not None and self.path.is_file():
            drop_rows_after(self.path, start_step)

    def write(self, step: int, loss: float, lr: float, grad_norm: float, skipped: bool,
              valid: dict[str, dict[str, float]] | None = None, step_end: float | None = None,
              extra: dict[str, float] | None = None) -> None:
        """One step's record; `step_end`: when its update finished (validation time is not training time);
        `extra`: further per-step figures (distillation's kd_loss, ce_loss, teacher_mass)."""
        now = time.time()
        tokens_per_s = self.tokens_per_step / max((step_end or now) - self.last_time, 1e-9)
        self.last_time = now
        record = {"step": step, "loss": round(loss, 6), "lr": lr, "grad_norm": round(grad_norm, 6),
                  "tokens": step * self.tokens_per_step, "tokens_per_s": round(tokens_per_s, 1),
                  "skipped": skipped, **(extra or {})}
        if valid:
            record["valid"] = valid
        print(f"[rethinktiny] step {step:>6} | loss {loss:.4f} | lr {lr:.3e} | grad_norm {grad_norm:.3f} "
              + "".join(f"| {name} {value:.4f} " for name, value in (extra or {}).items())
              + f"| {tokens_per_s:,.0f} tokens/s" + (" | update skipped" if skipped else ""), flush=True)
        for data_type, figures in (valid or {}).items():
            print(f"[rethinktiny] valid  {step:>6} | {data_type} | loss {figures['loss']:.4f} "
                  f"| perplexity {figures['perplexity']:.2f} | acc {figures['acc']:.4f}", flush=True)
        self._tensorboard(record)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def _tensorboard(self, record: dict) -> None:
        if self.tb_writer is None:
            return
        step = record["step"]
        for key in ("loss", "lr", "grad_norm", "tokens_per_s", *DISTILL_FIGURES):
            if key in record:
                self.tb_writer.add_scalar(f"train/{key}", record[key], step)
        for data_type, figures in record.get("valid", {}).items():
            for key, value in figures.items():
                self.tb_writer.add_scalar(f"valid/{data_type}/{key}", value, step)
        self.tb_writer.flush()

    def close(self) -> None:
        if self.tb_writer is not None:
            self.tb_writer.close()


def drop_rows_after(path: Path, step: int) -> int:
    """Keep the rows of a metrics file up to `step` (and no torn last line); atomic. Returns how
    many rows were dropped."""
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row_step = json.loads(line)["step"]
        except (json.JSONDecodeError, KeyError, TypeError):
            row_step = None  # a line cut short when the run was killed
        if isinstance(row_step, int) and row_step <= step:
            kept.append(line + "\n")
        else:
            dropped += 1
    if dropped:
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text("".join(kept), encoding="utf-8")
        os.replace(tmp, path)
        print(f"[rethinktiny] {path}: dropped {dropped} row(s) after step {step}, where training resumes", flush=True)
    return dropped


class ValidationFigures:
    """Stands in for InternEvo's `Writer` in `evaluate_on_val_dls`: collects its scalars
    (`val/<type>_loss`, `_acc`, `_plex`) as {type: {"loss", "acc", "perplexity"}}."""

    NAMES = {"loss": "loss", "acc": "acc", "plex": "perplexity"}

    def __init__(self) -> None:
        self.figures: dict[str, dict[str, float]] = {}

    def add_scalar(self, key: str, value, step: int) -> None:
        if not key.startswith("val/"):
            return
        data_type, _, name = key[len("val/"):].rpartition("_")
        if name in self.NAMES:
            self.figures.setdefault(data_type, {})[self.NAMES[name]] = round(float(value), 6)


def validate(trainer, val_dls, step: int) -> dict[str, dict[str, float]]:
    """InternEvo's validation on every data type; figures on the logging rank, {} elsewhere."""
    import logging

    from internlm.eval.evaluation import evaluate_on_val_dls

    figures = ValidationFigures()
    # InternEvo's own validation log line would repeat ours; its logger here stays quiet.
    evaluate_on_val_dls(trainer=trainer, val_dls=val_dls, writer=figures,
                        logger=logging.getLogger("rethinktiny.internevo.validation"), step_count=step)
    return figures.figures


def _tensorboard_writer(cfg, save_folder: Path | None, start_step: int):
    """rank 0's SummaryWriter when `enable_tb` is on (InternEvo's default), else None."""
    if not cfg.get("enable_tb", True):
        return None
    folder = cfg.get("tensorboard_folder") or (save_folder / "tensorboard" if save_folder else None)
    if folder is None:
        raise UserError("enable_tb=True needs tensorboard_folder (or a local ckpt.save_ckpt_folder)")
    from torch.utils.tensorboard import SummaryWriter

    # purge_step: a resumed run drops events a crashed run wrote after its last checkpoint.
    return SummaryWriter(log_dir=str(folder), purge_step=start_step + 1 if start_step else None)


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

    local = local_path(folder)
    if local is not None and local.is_dir():
        write_model_config(local, model_cfg)


def run(config_path: str, overrides: list[str] = ()) -> None:
    """Train according to the already-launched InternEvo global context (`gpc.config`)."""
    from internlm.core.context import ParallelMode
    from internlm.core.context import global_context as gpc
    from internlm.data import build_train_loader_with_data_type
    from internlm.data.train_state import get_train_state
    from internlm.model.metrics import AccPerplex
    from internlm.train.pipeline import get_scheduler_hooks, initialize_optimizer, load_new_batch
    from internlm.utils.common import get_current_device, launch_time

    from rethinktiny.internevo import api
    from rethinktiny.internevo.builder import config_from_entry

    cfg = gpc.config
    model_cfg = config_from_entry(dict(cfg.model), cfg.model_type) if cfg.model_type in (
        "PANGU_PI_PRO", "PANGU_PI") else None
    _check_data_folder(cfg.data.get("train_folder"))
    valid_every = _check_validation(cfg.data)
    current_time = launch_time()
    model, isp_communicator = api.build_model()
    criterion = api.make_loss(cfg)
    train_dl, dataset_types = build_train_loader_with_data_type()
    val_dls = valid_loaders() if valid_every else {}
    train_state = get_train_state(train_dl)
    optimizer, beta2_scheduler, lr_scheduler = initialize_optimizer(model, isp_communicator)
    ckpt_manager = api.checkpoint_manager(
        optimizer, ckpt_config=cfg.ckpt, model=model, lr_scheduler=lr_scheduler, train_dl=train_dl,
        model_config=cfg.model, model_config_file=_config_text(config_path, overrides))
    ckpt_manager.try_resume_training(train_state, current_time)
    metric = AccPerplex(device=get_current_device(), tp_pg=gpc.get_group(ParallelMode.TENSOR),
                        dp_pg=gpc.get_group(ParallelMode.DATA), dataset_types=dataset_types)
    trainer, train_dl = api.make_trainer(model, optimizer, criterion, train_dl, lr_scheduler, beta2_scheduler,
                                         get_scheduler_hooks(metric, optimizer, isp_communicator))
    save_folder = local_path(cfg.ckpt.get("save_ckpt_folder"))
    tokens_per_step = cfg.data.micro_num * cfg.data.micro_bsz * cfg.data.seq_len * gpc.get_world_size(ParallelMode.DATA)
    log_rank = gpc.is_rank_for_log()
    tb_writer = _tensorboard_writer(cfg, save_folder, train_state.step_count) if log_rank else None
    log = StepLog(save_folder if log_rank else None, tokens_per_step, tb_writer, train_state.step_count)
    if log_rank:
        _log_attention_path(model_cfg)
    try:
        _train_loop(trainer, train_dl, train_state, ckpt_manager, metric, log, model_cfg, load_new_batch,
                    (val_dls or {}, valid_every))
    finally:
        log.close()
    ckpt_manager.wait_async_upload_finish()


def valid_loaders() -> dict:
    """InternEvo's validation loader of each data type, as its `build_valid_loader_with_data_type`
    makes them, except that a type too small for one batch per rank is skipped on every rank: its
    builder skips it on the logging rank only, and the other ranks fail on batch_size=0."""
    from internlm.core.context import ParallelMode
    from internlm.core.context import global_context as gpc
    from internlm.data.build_dataloader import get_tokenized_valid_loader_items
    from internlm.data.tokenized import get_dpsampler_dataloader

    data_cfg = gpc.config.data
    datasets, collate_fn = get_tokenized_valid_loader_items(data_cfg)
    loaders = {}
    for name, dataset in (datasets or {}).items():
        rows = min(data_cfg.valid_micro_num * data_cfg.micro_bsz, len(dataset) // gpc.get_world_size(ParallelMode.DATA))
        batch_size = rows // data_cfg.micro_bsz * data_cfg.micro_bsz
        if batch_size == 0:
            if gpc.is_rank_for_log():
                print(f"[rethinktiny] validation skips {name}: fewer than micro_bsz={data_cfg.micro_bsz} packed "
                      "rows per data-parallel rank", flush=True)
            continue
        loaders[name] = get_dpsampler_dataloader(dataset, shuffle=False, num_workers=data_cfg.get("num_worker", 0),
                                                 batch_size=batch_size, collate_fn=collate_fn, drop_last=True)
    return loaders


def _check_validation(data_cfg) -> int:
    """`data.valid_every` when validation runs, else 0. It needs `data.valid_folder` (checked to
    hold data): InternEvo itself would validate on random tokens without one, which measures nothing."""
    every = int(data_cfg.get("valid_every", 0) or 0)
    folder = data_cfg.get("valid_folder")
    if every <= 0:
        return 0
    if not folder:
        from internlm.core.context import global_context as gpc

        if gpc.is_rank_for_log():
            print(f"[rethinktiny] validation off: data.valid_every={every} but data.valid_folder is not set", flush=True)
        return 0
    _check_data_folder(folder)
    return every


def _train_loop(trainer, train_dl, train_state, ckpt_manager, metric, log, model_cfg, load_new_batch,
                validation) -> None:
    from internlm.core.context import global_context as gpc

    from rethinktiny.internevo.distill import step_figures as distill_step_figures

    val_dls, valid_every = validation
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
        valid, step_end = None, time.time()
        figures = distill_step_figures()  # every rank: it averages over data-parallel ranks
        if valid_every and val_dls and train_state.step_count % valid_every == 0:
            valid = validate(trainer, val_dls, train_state.step_count)  # every rank takes part
        if gpc.is_rank_for_log():
            lr = trainer.engine.optimizer.param_groups[0]["lr"]
            log.write(train_state.step_count, mean_loss, lr, _grad_norm(grad_norm_groups), not success, valid,
                      step_end, figures)
        saved_before = ckpt_manager.storage_manager.latest_save_step
        now_break = ckpt_manager.try_save_checkpoint(train_state)
        if ckpt_manager.storage_manager.latest_save_step != saved_before and gpc.is_rank_for_log() and model_cfg:
            _write_step_model_config(ckpt_manager.storage_manager.latest_save_folder, model_cfg)
        if now_break:
            break


def _log_attention_path(model_cfg) -> None:
    """Which packed-attention kernel our model runs here (flash-attn varlen, SDPA per document, ...)."""
    from internlm.core.context import global_context as gpc
    from internlm.utils.common import get_current_device

    from rethinktiny import model as our_model

    if model_cfg is None or not hasattr(our_model, "attention_path"):
        return
    # model.dtype is a torch dtype once InternEvo's args_sanity_check has run
    path = our_model.attention_path(get_current_device(), gpc.config.model.dtype)
    print(f"[rethinktiny] attention: {path}", flush=True)


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

    require_bin_files(folder, need_meta=True)  # InternEvo asserts on a missing .meta


def _rank() -> str:
    if dist.is_initialized():
        return str(dist.get_rank())
    return os.environ.get("RANK", os.environ.get("SLURM_PROCID", "?"))


def main(argv: list[str] | None = None) -> int:
    exit_with_parent()  # a rank outlives neither torchrun nor the launcher
    from rethinktiny.cli.ranks import training_rank_args

    args = training_rank_args(argv)
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
