"""Write complete, commented InternEvo config files for a model shape, so nobody edits 200 lines
by hand. `render_config` is the one template; `configs/LLM1B.py` and `configs/LLM1.5B.py` are its
output for the two presets (regenerate them with the command in their header)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from rethinktiny.artifacts import check_writable, write_file_atomic
from rethinktiny.config import PRESETS, ModelConfig, get_preset, to_internevo
from rethinktiny.errors import UserError


@dataclass
class TrainOptions:
    """The non-model part of a config; defaults are the seed's LLM1B.py values (GPU cluster)."""

    job_name: str = "1b_train"
    seq_len: int = 2048
    micro_num: int = 2
    micro_bsz: int = 15
    total_steps: int = 50000
    lr: float = 1e-4
    min_lr: float = 1e-5
    warmup_ratio: float = 0.03
    weight_decay: float = 0.1
    dtype: str = "torch.bfloat16"
    # <= 0: ZeRO-1 over all data-parallel ranks, whatever their number (InternEvo refuses a size
    # larger than the ranks a run has, so a fixed 8 broke every smaller run).
    zero1_size: int = -1
    checkpoint: bool | float = False  # model.checkpoint: True/False or the share of layers in [0, 1]
    checkpoint_every: int = 50
    valid_every: int = 1000
    min_length: int = 50
    train_folder: str | None = None
    valid_folder: str | None = None
    save_ckpt_folder: str = "local:llm_ckpts"
    inherit: str | None = None  # a `rethinktiny inherit` output folder to start from
    resample: str | None = None  # a `rethinktiny resample` output folder to train on
    distill: str | None = None  # a teacher (any `inherit` source) to distil from (`distill=dict(...)`)
    token_map: str | None = None  # with distill: the compact vocabulary's token_map.json
    cpu_ranks: int = 0  # > 0: a CPU run with this many ranks (fp32, gloo, no overlap, no loader workers)
    extra_comments: list[str] = field(default_factory=list)


def parse_checkpoint(text: str) -> bool | float:
    """`--checkpoint`: true/false or the share of layers in [0, 1], as InternEvo reads model.checkpoint."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        share = float(lowered)
    except ValueError:
        share = -1.0
    if not 0 <= share <= 1:
        raise UserError(f"--checkpoint {text!r}: expected true, false or a share of layers in [0, 1]")
    return share


def _literal(value) -> str:
    return "None" if value is None else repr(value)


def _model_block(cfg: ModelConfig, opts: TrainOptions) -> str:
    shape = to_internevo(cfg)
    # checkpoint is a training option (opts.checkpoint, written with the other model keys below)
    lines = [f"    {key}={_literal(value)}," for key, value in shape.items() if key not in ("mlp_ratio", "checkpoint")]
    # InternEvo's trainer reads mlp_ratio for its FLOPs figures (KeyError without it); the exact
    # ratio, since our builders take the width from intermediate_size.
    lines.append(f"    mlp_ratio={cfg.intermediate_size / cfg.hidden_size!r},  # = intermediate_size / hidden_size")
    return "\n".join(lines)


def _ckpt_block(opts: TrainOptions) -> str:
    if opts.inherit:
        load = (f"    # start from weights inherited from a larger model (`rethinktiny inherit`); the\n"
                f"    # \"inherited\" type checks every name and shape against this model first.\n"
                f"    load_ckpt_info=dict(path={opts.inherit!r}, content=(\"model\",), ckpt_type=\"inherited\"),\n"
                f"    auto_resume=False,")
    else:
        load = ("    # to start from other weights: load_ckpt_info=dict(path=FOLDER, content=(\"model\",),\n"
                "    #     ckpt_type=\"internevo\" (an InternEvo step folder) or \"inherited\" (`rethinktiny inherit`)),\n"
                "    # and auto_resume=False.\n"
                "    # auto_resume=True continues from the latest step in save_ckpt_folder after a restart.\n"
                "    auto_resume=True,")
    return load


def _sampler_lines(opts: TrainOptions) -> str:
    if not opts.resample:
        return ""
    return ("    # multi-round training: train on the batches `rethinktiny resample` selected, read\n"
            "    # straight from the original data (no copy).\n"
            "    sampler=\"multi_round\",\n"
            f"    selected_batches={str(Path(opts.resample) / 'selected.npy')!r},\n")


def _runtime_lines(opts: TrainOptions) -> dict[str, str]:
    """What differs between a GPU cluster run and a CPU run of the same recipe."""
    if opts.cpu_ranks:
        return dict(launch=f"launch = dict(nproc_per_node={opts.cpu_ranks})  # CPU: no GPUs to count\n",
                    overlap="False", num_worker="    num_worker=0,  # CPU: loader worker processes only add start-up time\n",
                    async_upload="False",
                    enable_tb="enable_tb = False  # True: TensorBoard events in tensorboard_folder "
                              "(default <save_ckpt_folder>/tensorboard)\n")
    return dict(launch="", overlap="True", num_worker="", async_upload="True", enable_tb="")


def _distill_block(opts: TrainOptions) -> str:
    if not opts.distill:
        return ""
    return ("\n# Distillation (rethinktiny.distill): loss = ce_weight * CE + kd_weight * T^2 * KL(teacher || student)\n"
            "# at temperature T; Minitron's recipe is T=1 without CE. token_map: the student's compact\n"
            "# vocabulary (teacher probabilities renormalised on its ids). Offline: distill=dict(cache=FOLDER)\n"
            "# from `rethinktiny distill cache`.\n"
            f"distill = dict(teacher={opts.distill!r}, token_map={_literal(opts.token_map)}, kd_weight=1.0, "
            "ce_weight=0.0, temperature=1.0)\n")


def render_config(cfg: ModelConfig, opts: TrainOptions | None = None, command: str | None = None) -> str:
    """The text of a complete InternEvo config file training `cfg` with `opts`."""
    opts = opts or TrainOptions()
    if opts.cpu_ranks and opts.dtype == TrainOptions.dtype:
        opts = dataclasses.replace(opts, dtype="torch.float32")  # bf16 matmuls are slow on most CPUs
    header = [f"# InternEvo config for {cfg.name}: {cfg.num_layers} layers x {cfg.hidden_size}, "
              f"{cfg.num_attention_heads} heads ({cfg.num_kv_heads} kv), FFN {cfg.intermediate_size}, "
              f"vocabulary {cfg.vocab_size}, {cfg.num_params() / 1e9:.3f}B parameters "
              f"({100 * cfg.embedding_share():.1f}% embedding + head).",
              "#   python start_finetune.py --config THIS_FILE            (torchrun on this node)",
              "#   python start_finetune.py --config THIS_FILE --launcher slurm   (inside an sbatch job)"]
    if command:
        header.append(f"# Written by: {command}")
    header += [f"# {line}" for line in opts.extra_comments]
    return TEMPLATE.format(
        header="\n".join(header), job_name=opts.job_name, model_type=cfg.model_type, seq_len=opts.seq_len,
        train_folder=_literal(opts.train_folder), valid_folder=_literal(opts.valid_folder),
        save_ckpt_folder=opts.save_ckpt_folder, checkpoint_every=opts.checkpoint_every,
        ckpt_load=_ckpt_block(opts), micro_num=opts.micro_num, micro_bsz=opts.micro_bsz,
        valid_every=opts.valid_every, total_steps=opts.total_steps, min_length=opts.min_length,
        sampler=_sampler_lines(opts), lr=opts.lr, weight_decay=opts.weight_decay, warmup_ratio=opts.warmup_ratio,
        min_lr=opts.min_lr, model=_model_block(cfg, opts), dtype=opts.dtype,
        preset=f'    preset="{cfg.name}",  # the shape below starts from this preset\n' if cfg.name in PRESETS else "",
        zero1_size=opts.zero1_size, checkpoint=opts.checkpoint, **_runtime_lines(opts)) + _distill_block(opts)


def export_config(dst: str | Path, preset: str | None = None, cfg: ModelConfig | None = None,
                  opts: TrainOptions | None = None, force: bool = False, command: str | None = None) -> Path:
    """Write `render_config` output to `dst` (atomically; an existing file needs `force`)."""
    if cfg is None:
        if preset is None:
            raise UserError("config export: give a preset or a model config")
        cfg = get_preset(preset)
    check_writable(dst, force)
    return write_file_atomic(dst, render_config(cfg, opts, command))


TEMPLATE = '''{header}
import rethinktiny  # noqa: F401  registers PANGU_PI_PRO/PANGU_PI, the "inherited" load type, the multi-round sampler

JOB_NAME = "{job_name}"
model_type = "{model_type}"
{launch}
SEQ_LEN = {seq_len}
TRAIN_FOLDER = {train_folder}  # InternEvo tokenized data: <folder>/<type>/*.bin + .bin.meta; None = random data
VALID_FOLDER = {valid_folder}
# storage prefix "local:" for a file system path (InternEvo also knows boto3:, oss2:, volc:)
SAVE_CKPT_FOLDER = "{save_ckpt_folder}"
CHECKPOINT_EVERY = {checkpoint_every}

ckpt = dict(
    enable_save_ckpt=True,
    save_ckpt_folder=SAVE_CKPT_FOLDER,
    checkpoint_every=CHECKPOINT_EVERY,
    oss_snapshot_freq=int(CHECKPOINT_EVERY / 2),  # snapshot checkpoints (object storage only)
{ckpt_load}
    async_upload={async_upload},  # only has an effect for boto3 storage
    async_upload_tmp_folder="/dev/shm/internlm_tmp_ckpt/",
)

data = dict(
    seq_len=SEQ_LEN,
    micro_num={micro_num},  # micro-batches per optimizer step (gradient accumulation)
    micro_bsz={micro_bsz},  # sequences packed into one micro-batch: packed_length = micro_bsz * seq_len
    valid_micro_num=1,
    valid_every={valid_every},  # 0 disables validation
    pack_sample_into_one=False,
    total_steps={total_steps},
    skip_batches="",
    rampup_batch_size="",
    min_length={min_length},  # documents shorter than this many tokens are dropped
    train_folder=TRAIN_FOLDER,
    valid_folder=VALID_FOLDER,
    empty_cache_and_diag_interval=10000,
    diag_outlier_ratio=1.1,
{num_worker}{sampler})

grad_scaler = dict(
    fp16=dict(initial_scale=2**16, min_scale=1, growth_interval=1000),
    growth_factor=2,
    backoff_factor=0.5,
    max_scale=2**24,
    hysteresis=2,
)

# overlap_sync_grad: reduce gradients bucket by bucket during backward; overlap_sync_param: broadcast
# the updated ZeRO-1 shards block by block during the next forward (both off on CPU: gloo gains nothing).
hybrid_zero_optimizer = dict(
    overlap_sync_grad={overlap},
    overlap_sync_param={overlap},
    reduce_bucket_size=512 * 1024 * 1024,
    clip_grad_norm=1.0,
)

loss = dict(label_smoothing=0)

adam = dict(lr={lr}, adam_beta1=0.9, adam_beta2=0.95, adam_beta2_c=0, adam_eps=1e-8, weight_decay={weight_decay})

lr_scheduler = dict(
    total_steps=data["total_steps"],
    init_steps=0,
    warmup_ratio={warmup_ratio},
    eta_min={min_lr},
    last_epoch=-1,
)

beta2_scheduler = dict(init_beta2=adam["adam_beta2"], c=adam["adam_beta2_c"], cur_iter=-1)

model = dict(
{preset}{model}
    checkpoint={checkpoint!r},  # activation checkpointing: True/False or the share of layers in [0, 1]
    dtype="{dtype}",  # "torch.bfloat16", "torch.float16", "torch.float32", "torch.tf32"
    embed_split_hidden=True,
    embed_grad_scale=1,
    parallel_output=False,
    norm_type="rmsnorm",
    apply_post_layer_norm=False,  # pre-norm blocks; InternEvo's newest model builder requires the key
    # RoPE layout of wq/wk rows: channels (2i, 2i+1) of a head form a rotated pair. InternEvo's
    # newest default is False (rotate-half); the key also records the layout in every checkpoint.
    qk_interleaved=True,
    # InternEvo ties packed data to this flag. rethinktiny's model keeps attention inside each
    # document of a packed row: flash-attn's varlen kernel when installed, torch SDPA otherwise.
    use_flash_attn=True,
    num_chunks=1,
)

# rethinktiny's models are replicated and ZeRO-1 sharded (tensor/pipeline parallel stay at 1).
parallel = dict(
    zero1=dict(size={zero1_size}, fsdp=False),  # <=0: shard optimizer states over all data-parallel ranks
    tensor=dict(size=1, mode="mtp"),
    # no pipeline and no weight (ISP) parallel: their overlap and memory-pool settings have nothing to act on
    pipeline=dict(size=1, interleaved_overlap=False),
    weight=dict(size=1, overlap=False, memory_pool=False),
)

cudnn_deterministic = False
cudnn_benchmark = False
{enable_tb}
monitor = dict(
    alert=dict(
        enable_feishu_alert=False,
        feishu_alert_address=None,
        light_monitor_address=None,
        alert_file_path=f"llm_alter/{{JOB_NAME}}_alert.log",
    ),
    tensorboard=dict(queue_max_length=10),
)
'''
