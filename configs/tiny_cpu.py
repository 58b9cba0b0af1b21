# A tiny PanGu-π Pro model trained with InternEvo's real trainer on CPU (2 processes, gloo), on the
# bundled English+Chinese sample. `make install` builds the sample's tokenizer and tokenized data:
#   data/sample/tokenizer/tokenizer.model   (4,096-piece SentencePiece BPE, byte fallback)
#   data/sample/tokenized/{train,valid}/     (InternEvo format: <type>/*.bin + .bin.meta)
#
#   python start_finetune.py --config configs/tiny_cpu.py
#   python start_finetune.py --config configs/tiny_cpu.py --set data.total_steps=60 --set ckpt.auto_resume=True
import os

import rethinktiny  # noqa: F401  registers PANGU_PI_PRO, the CPU accelerator and the "inherited" load type

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

JOB_NAME = "tiny_cpu"
model_type = "PANGU_PI_PRO"
launch = dict(nproc_per_node=2)  # CPU: no GPUs to count, so say how many ranks to start

SEQ_LEN = 256
TRAIN_FOLDER = os.path.join(_ROOT, "data/sample/tokenized/train")
SAVE_CKPT_FOLDER = "local:" + os.path.join(_ROOT, "outputs/tiny_cpu/ckpt")

ckpt = dict(
    enable_save_ckpt=True,
    save_ckpt_folder=SAVE_CKPT_FOLDER,
    checkpoint_every=10,
    auto_resume=False,  # start fresh; set True to continue from the latest step in save_ckpt_folder
    oss_snapshot_freq=0,
)

data = dict(
    seq_len=SEQ_LEN,
    micro_num=2,  # micro-batches per optimizer step (gradient accumulation)
    micro_bsz=2,  # sequences packed into one micro-batch: packed_length = micro_bsz * seq_len
    valid_micro_num=1,
    valid_every=0,
    pack_sample_into_one=False,
    total_steps=30,
    skip_batches="",
    rampup_batch_size="",
    min_length=0,
    train_folder=TRAIN_FOLDER,
    valid_folder=None,
    num_worker=0,  # CPU: loader worker processes only add start-up time here
    empty_cache_and_diag_interval=10000,
    diag_outlier_ratio=1.1,
)

grad_scaler = dict(
    fp16=dict(initial_scale=2**16, min_scale=1, growth_interval=1000),
    growth_factor=2,
    backoff_factor=0.5,
    max_scale=2**24,
    hysteresis=2,
)

hybrid_zero_optimizer = dict(overlap_sync_grad=False, overlap_sync_param=False, reduce_bucket_size=512 * 1024 * 1024,
                             clip_grad_norm=1.0)

loss = dict(label_smoothing=0)

adam = dict(lr=2e-3, adam_beta1=0.9, adam_beta2=0.95, adam_beta2_c=0, adam_eps=1e-8, weight_decay=0.01)

lr_scheduler = dict(total_steps=data["total_steps"], init_steps=0, warmup_ratio=0.1, eta_min=2e-4, last_epoch=-1)

beta2_scheduler = dict(init_beta2=adam["adam_beta2"], c=adam["adam_beta2_c"], cur_iter=-1)

model = dict(
    preset="tiny",
    hidden_size=128,
    num_layers=4,
    num_attention_heads=4,
    num_kv_attention_heads=2,
    intermediate_size=352,
    mlp_ratio=352 / 128,  # InternEvo's FLOPs figure reads it; our builder uses intermediate_size
    vocab_size=4096,
    no_bias=True,
    layer_norm_epsilon=1e-5,
    rope_base=10000,
    checkpoint=False,
    dtype="torch.float32",  # CPU: fp32 is fastest and exact
    embed_split_hidden=True,
    embed_grad_scale=1,
    parallel_output=False,
    norm_type="rmsnorm",
    apply_post_layer_norm=False,  # pre-norm blocks (InternEvo's model builder reads this key)
    # RoPE layout: q/k channels (2i, 2i+1) form a rotated pair. InternEvo's newest default is
    # False (rotate-half); this records our layout in every checkpoint's model_config.pt.
    qk_interleaved=True,
    # InternEvo ties packed data to this flag; rethinktiny's model attends within documents of a
    # packed row with flash-attn when installed and torch SDPA otherwise (so it also runs on CPU).
    use_flash_attn=True,
    num_chunks=1,
)

parallel = dict(
    zero1=dict(size=-1, fsdp=False),  # shard optimizer states over all data-parallel ranks
    tensor=dict(size=1, mode="mtp"),
    pipeline=dict(size=1, interleaved_overlap=False),
    weight=dict(size=1, overlap=False, memory_pool=False),
)

enable_tb = False  # True: TensorBoard events in tensorboard_folder (default <save_ckpt_folder>/tensorboard)
cudnn_deterministic = False
cudnn_benchmark = False
monitor = dict(alert=dict(enable_feishu_alert=False, feishu_alert_address=None, light_monitor_address=None,
                          alert_file_path=None))
