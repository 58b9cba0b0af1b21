# InternEvo config for pangu_pi_1b_pro: 20 layers x 1792, 14 heads (14 kv), FFN 4864, vocabulary 48000, 0.952B parameters (18.1% embedding + head).
#   python start_finetune.py --config THIS_FILE            (torchrun on this node)
#   python start_finetune.py --config THIS_FILE --launcher slurm   (inside an sbatch job)
# Written by: rethinktiny config export --preset pangu_pi_1b_pro --num-layers 20 --job-name 1b_train --micro-bsz 10 --micro-num 3 --dst configs/LLM1B.py --comment 'Depth: the model table of Tang et al. (fig/configure.png) gives PanGu-pi-1B Pro 21 layers; this file keeps' --comment 'the 20 layers the seed repository ships. For the table depth change num_layers=20 to num_layers=21 below.' --comment 'Memory (`rethinktiny arch memory --config configs/LLM1B.py --nproc 8`): 43.2 GB per GPU on 8 ranks (activations 29.3, logits 8.7), 53.2 GB on one;' --comment 'micro_bsz 10 x micro_num 3 keeps the seed'"'"'s 30 sequences of 2048 tokens per rank and step; the seed'"'"'s' --comment '15 x 2 plans 62 GB on 8 ranks and 72 GB on one, at the 90% of 80 GB the launcher allows. Fewer tokens a' --comment 'micro-batch cost no recompute (model.checkpoint=True would: one more forward of every layer).' --force
# Shape differs from preset pangu_pi_1b_pro: num_layers 20 (preset: 21).
# Depth: the model table of Tang et al. (fig/configure.png) gives PanGu-pi-1B Pro 21 layers; this file keeps
# the 20 layers the seed repository ships. For the table depth change num_layers=20 to num_layers=21 below.
# Memory (`rethinktiny arch memory --config configs/LLM1B.py --nproc 8`): 43.2 GB per GPU on 8 ranks (activations 29.3, logits 8.7), 53.2 GB on one;
# micro_bsz 10 x micro_num 3 keeps the seed's 30 sequences of 2048 tokens per rank and step; the seed's
# 15 x 2 plans 62 GB on 8 ranks and 72 GB on one, at the 90% of 80 GB the launcher allows. Fewer tokens a
# micro-batch cost no recompute (model.checkpoint=True would: one more forward of every layer).
import rethinktiny  # noqa: F401  registers PANGU_PI_PRO/PANGU_PI, the "inherited" load type, the multi-round sampler

JOB_NAME = "1b_train"
model_type = "PANGU_PI_PRO"

SEQ_LEN = 2048
TRAIN_FOLDER = None  # InternEvo tokenized data: <folder>/<type>/*.bin + .bin.meta; None = random data
VALID_FOLDER = None
# storage prefix "local:" for a file system path (InternEvo also knows boto3:, oss2:, volc:)
SAVE_CKPT_FOLDER = "local:llm_ckpts"
CHECKPOINT_EVERY = 50

ckpt = dict(
    enable_save_ckpt=True,
    save_ckpt_folder=SAVE_CKPT_FOLDER,
    checkpoint_every=CHECKPOINT_EVERY,
    oss_snapshot_freq=int(CHECKPOINT_EVERY / 2),  # snapshot checkpoints (object storage only)
    # to start from other weights: load_ckpt_info=dict(path=FOLDER, content=("model",),
    #     ckpt_type="internevo" (an InternEvo step folder) or "inherited" (`rethinktiny inherit`)),
    # and auto_resume=False.
    # auto_resume=True continues from the latest step in save_ckpt_folder after a restart.
    auto_resume=True,
    async_upload=True,  # only has an effect for boto3 storage
    async_upload_tmp_folder="/dev/shm/internlm_tmp_ckpt/",
)

data = dict(
    seq_len=SEQ_LEN,
    micro_num=3,  # micro-batches per optimizer step (gradient accumulation)
    micro_bsz=10,  # sequences packed into one micro-batch: packed_length = micro_bsz * seq_len
    valid_micro_num=1,
    valid_every=1000,  # 0 disables validation
    pack_sample_into_one=False,
    total_steps=50000,
    skip_batches="",
    rampup_batch_size="",
    min_length=50,  # documents shorter than this many tokens are dropped
    train_folder=TRAIN_FOLDER,
    valid_folder=VALID_FOLDER,
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

# overlap_sync_grad: reduce gradients bucket by bucket during backward; overlap_sync_param: broadcast
# the updated ZeRO-1 shards block by block during the next forward (both off on CPU: gloo gains nothing).
hybrid_zero_optimizer = dict(
    overlap_sync_grad=True,
    overlap_sync_param=True,
    reduce_bucket_size=512 * 1024 * 1024,
    clip_grad_norm=1.0,
)

loss = dict(label_smoothing=0)

adam = dict(lr=0.0001, adam_beta1=0.9, adam_beta2=0.95, adam_beta2_c=0, adam_eps=1e-8, weight_decay=0.1)

lr_scheduler = dict(
    total_steps=data["total_steps"],
    init_steps=0,
    warmup_ratio=0.03,
    eta_min=1e-05,
    last_epoch=-1,
)

beta2_scheduler = dict(init_beta2=adam["adam_beta2"], c=adam["adam_beta2_c"], cur_iter=-1)

model = dict(
    preset="pangu_pi_1b_pro",  # the shape below starts from this preset
    hidden_size=1792,
    num_layers=20,
    num_attention_heads=14,
    num_kv_attention_heads=14,
    intermediate_size=4864,
    vocab_size=48000,
    tie_embeddings=False,
    layer_norm_epsilon=1e-05,
    rope_base=10000.0,
    no_bias=True,
    mlp_ratio=2.7142857142857144,  # = intermediate_size / hidden_size
    checkpoint=False,  # activation checkpointing: True/False or the share of layers in [0, 1]
    dtype="torch.bfloat16",  # "torch.bfloat16", "torch.float16", "torch.float32", "torch.tf32"
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
    zero1=dict(size=-1, fsdp=False),  # <=0: shard optimizer states over all data-parallel ranks
    tensor=dict(size=1, mode="mtp"),
    # no pipeline and no weight (ISP) parallel: their overlap and memory-pool settings have nothing to act on
    pipeline=dict(size=1, interleaved_overlap=False),
    weight=dict(size=1, overlap=False, memory_pool=False),
)

cudnn_deterministic = False
cudnn_benchmark = False

monitor = dict(
    alert=dict(
        enable_feishu_alert=False,
        feishu_alert_address=None,
        light_monitor_address=None,
        alert_file_path=f"llm_alter/{JOB_NAME}_alert.log",
    ),
    tensorboard=dict(queue_max_length=10),
)
