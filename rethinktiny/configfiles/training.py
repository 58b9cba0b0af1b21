"""TrainingConfig: an InternEvo training config, loaded once with its `--set` overrides and
checked once, before any rank starts.

Checked here (every failure a one-line UserError naming the file and the key):
- known keys per section (did-you-mean; `allow_unknown_keys` keeps extra keys on purpose);
- types and ranges of the values the trainer reads (`data.seq_len`, `adam.lr`, ...);
- the model type (ours, else InternEvo's registry) and, for ours, the model shape;
- the weight dtype, label smoothing and the optional `launch = dict(nproc_per_node=...)` hint;
- the training and validation data folders (every `.bin` against its `.meta`).

What InternEvo itself reads is not importable without importing InternEvo (seconds), so the known
keys are a table: every `gpc.config` path read by the PyPI 0.4.9 wheel, its 9a2a30e tree and the
newest tree (47d0f54), found by an AST walk of their sources (args_sanity_check, the optimizer,
data and checkpoint builders, the root train.py); plus what rethinktiny reads (our model builders'
`model` keys, the multi-round sampler, the launch hint, distillation) and what our shipped configs
and `config export` write. tests/unit/test_training_config.py re-derives the installed InternEvo's
keys and fails when one is missing here.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from rethinktiny.config import MODEL_TYPE_PRO, MODEL_TYPES, ModelConfig, from_internevo
from rethinktiny.configfiles.load import apply_overrides, load_config_file, override_key
from rethinktiny.dtypes import dtype_name
from rethinktiny.errors import UserError

INTERNEVO_DEFAULT_MODEL_TYPE = "INTERNLM"  # what InternEvo's args_sanity_check fills in
INTERNEVO_DEFAULT_DTYPE = "torch.float16"

# Section -> its known keys ("a.b": a nested dict's key). A section or key missing from its parent's
# list is unknown; a dict whose entry lists no keys (data.min_length_dict, moe) is not looked into.
_INTERNEVO_KEYS = {
    "": "JOB_NAME DO_ALERT model_type enable_tb tensorboard_folder resume_tb_folder cudnn_benchmark "
        "cudnn_deterministic metric_dtype reduce_comm_dtype output_tf32 use_apex_adam use_fp32_norm "
        "selective_checkpoint selective_checkpoint_offload isp_num_layers fsdp_wrap_cls gradient_handler "
        "only_load_lr moe hf cpu_offloading model data ckpt adam lr_scheduler beta2_scheduler "
        "grad_scaler hybrid_zero_optimizer parallel loss monitor",
    "adam": "lr adam_beta1 adam_beta2 adam_eps weight_decay",
    "lr_scheduler": "total_steps init_steps warmup_ratio eta_min last_epoch",  # FineTuneCosineAnnealingWarmupLR
    "beta2_scheduler": "init_beta2 c cur_iter",  # Beta2Scheduler
    "ckpt": "enable_save_ckpt save_ckpt_folder checkpoint_every oss_snapshot_freq auto_resume async_upload "
            "async_upload_tmp_folder snapshot_ckpt_folder load_ckpt_folder load_ckpt_info load_given_ckpt "
            "load_model_only_folder load_optimizer stop_file_path need_metadata enable_internevo2hf_ckpt "
            "generate_meta_data generate_meta_data.enable generate_meta_data.path "
            "load_ckpt_info.path load_ckpt_info.content load_ckpt_info.ckpt_type",
    "cpu_offloading": "enable num_layers",
    "data": "seq_len micro_bsz micro_num total_steps packed_length batch_size gradient_accumulation type "
            "min_length min_length_dict train_folder valid_folder valid_micro_num valid_every skip_batches "
            "rampup_batch_size pack_sample_into_one num_worker seed use_packed_dataset fixed_random_dataset_seqlen "
            "empty_cache_and_diag_interval diag_outlier_ratio use_shm shm_path tokenizer_path is_multimodal "
            "image_size image_folder patch_size content_name subset_name",
    "grad_scaler": "fp16 fp16.initial_scale fp16.min_scale fp16.growth_interval growth_factor backoff_factor "
                   "max_scale hysteresis",
    "hf": "cfg cfg_cls cfg_extra_kwargs mod mod_cls",
    "hybrid_zero_optimizer": "overlap_sync_grad overlap_sync_param reduce_bucket_size clip_grad_norm "
                             "zero_overlap_communication all_gather_size use_split_tensor_optim",
    "loss": "label_smoothing moe_loss_coeff op_type",
    "model": "checkpoint dtype hidden_size num_layers num_attention_heads num_kv_attention_heads mlp_ratio "
             "vocab_size embed_split_hidden parallel_output use_flash_attn num_chunks qk_interleaved adapt_hf "
             "mlp_layer_fusion use_fp32_rope num_experts top_k moe_type moe_use_residual moe_layer_kwargs "
             "num_shared_experts num_self_decoder_layers num_cross_decoder_layers inject_info "
             "inject_info.data_helper",
    "monitor": "alert alert.enable_feishu_alert alert.feishu_alert_address alert.light_monitor_address "
               "alert.alert_file_path tensorboard tensorboard.queue_max_length",
    "parallel": "zero1 zero1.size zero1.fsdp tensor tensor.size tensor.mode pipeline pipeline.size "
                "pipeline.interleaved_overlap pipeline.mode weight weight.size weight.overlap weight.memory_pool "
                "weight.early_reduce_scatter_release weight.forward_overlap_per weight.launch_allgather_before "
                "weight.layer_fuse_isp_comm sequence_parallel expert expert.size expert.no_tp expert_weight "
                "expert_weight.size expert_weight.overlap expert_weight.early_reduce_scatter_release "
                "expert_weight.forward_overlap_per expert_weight.launch_allgather_before "
                "expert_weight.layer_fuse_isp_comm fsdp fsdp.enable fsdp.init_method fsdp.mode sequence_2D "
                "sequence_2D.enable sequence_2D.head_size sequence_2D.context_size sequence_2D.window_size "
                "sequence_2D.device_placement_strategy sequence_2D.device_placement_strategy.head_first "
                "sequence_2D.device_placement_strategy.interleaved",
    "tensorboard": "queue_max_length",
}
_RETHINKTINY_KEYS = {
    "": "launch distill",
    "launch": "nproc_per_node",
    "adam": "adam_beta2_c",  # our configs feed beta2_scheduler.c from it
    "data": "sampler selected_batches",  # rethinktiny.internevo.sampler (multi-round data)
    # engineer G's distillation section (rethinktiny.distill.section reads it)
    "distill": "teacher token_map kd_weight ce_weight temperature cache",
}
# The `model` keys of PANGU_PI_PRO / PANGU_PI: what rethinktiny.config.from_internevo and our model
# builder read, plus the InternEvo model-builder keys our shipped and exported configs write.
_OUR_MODEL_KEYS = ("preset intermediate_size multiple_of tie_embeddings layer_norm_epsilon rope_base no_bias "
                   "qkv_bias series_terms aug_shortcuts aug_shortcut_dim first last start_layer_idx device "
                   "embed_grad_scale norm_type apply_post_layer_norm")


def _key_tree(*tables: dict[str, str]) -> dict:
    """{"data": {"seq_len": {}, ...}, ...} from the section tables above."""
    tree: dict = {}
    for table in tables:
        for section, keys in table.items():
            for key in keys.split():
                node = tree
                for part in ([section] if section else []) + key.split("."):
                    node = node.setdefault(part, {})
    return tree


KNOWN_KEYS = _key_tree(_INTERNEVO_KEYS, _RETHINKTINY_KEYS)
OUR_MODEL_KEYS = {**KNOWN_KEYS["model"], **_key_tree({"": _OUR_MODEL_KEYS})}


# ---- values ---------------------------------------------------------------------------------------

def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# (test, what the value must be); a key that is absent is not checked (InternEvo fills in defaults).
_POSITIVE_INT = (lambda v: _is_int(v) and v > 0, "a positive integer")
_NON_NEGATIVE_INT = (lambda v: _is_int(v) and v >= 0, "an integer >= 0")
_NON_NEGATIVE = (lambda v: _is_number(v) and v >= 0, "a number >= 0")
_POSITIVE = (lambda v: _is_number(v) and v > 0, "a number > 0")
_FRACTION = (lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]")
_BETA = (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)")
_BOOL = (lambda v: isinstance(v, bool), "True or False")
_FOLDER = (lambda v: v is None or isinstance(v, str), "a folder path (a string) or None")
_ACTIVATION_CHECKPOINT = (lambda v: isinstance(v, bool) or (_is_number(v) and 0 <= v <= 1),
                          "True, False or the share of layers in [0, 1]")

VALUE_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "data.seq_len": _POSITIVE_INT, "data.micro_bsz": _POSITIVE_INT, "data.micro_num": _POSITIVE_INT,
    "data.total_steps": _POSITIVE_INT, "data.valid_micro_num": _POSITIVE_INT, "data.valid_every": _NON_NEGATIVE_INT,
    "data.min_length": _NON_NEGATIVE_INT, "data.num_worker": _NON_NEGATIVE_INT,
    "data.pack_sample_into_one": _BOOL, "data.train_folder": _FOLDER, "data.valid_folder": _FOLDER,
    "adam.lr": _NON_NEGATIVE, "adam.weight_decay": _NON_NEGATIVE, "adam.adam_eps": _POSITIVE,
    "adam.adam_beta1": _BETA, "adam.adam_beta2": _BETA,
    "lr_scheduler.total_steps": _POSITIVE_INT, "lr_scheduler.init_steps": _NON_NEGATIVE_INT,
    "lr_scheduler.warmup_ratio": _FRACTION, "lr_scheduler.eta_min": _NON_NEGATIVE,
    "hybrid_zero_optimizer.clip_grad_norm": _NON_NEGATIVE,
    "ckpt.checkpoint_every": _POSITIVE_INT, "ckpt.enable_save_ckpt": _BOOL, "ckpt.auto_resume": _BOOL,
    "ckpt.save_ckpt_folder": _FOLDER,
    "loss.label_smoothing": _BETA,
    "model.checkpoint": _ACTIVATION_CHECKPOINT,
    "launch.nproc_per_node": _POSITIVE_INT,
    "enable_tb": _BOOL,
}
SECTIONS = ("model", "data", "ckpt", "adam", "lr_scheduler", "beta2_scheduler", "grad_scaler",
            "hybrid_zero_optimizer", "parallel", "loss", "monitor", "launch", "distill")


@dataclass
class TrainingConfig:
    """One InternEvo training config as every rethinktiny command sees it (see the module docstring).

    Attributes:
        path: the config file.
        overrides: the `--set KEY=VALUE` items applied to it.
        raw: the whole config after the overrides (what the ranks will train with).
        model_type: `model_type` (InternEvo's default INTERNLM when absent).
        model: the model shape for our model types (PANGU_PI_PRO, PANGU_PI); None for InternEvo's own.
        data: the `data` section.
        dtype: weight dtype name (`float32`, `bfloat16`, `float16`, or `tf32`: float32 weights with
            TF32 matmuls, InternEvo's `torch.tf32`).
        label_smoothing: `loss.label_smoothing`.
        nproc_hint: `launch = dict(nproc_per_node=...)`, the ranks a CPU config asks for, or None.
    """

    path: Path
    overrides: list[str]
    raw: dict[str, Any] = field(repr=False)
    model_type: str
    model: ModelConfig | None
    data: dict[str, Any]
    dtype: str
    label_smoothing: float
    nproc_hint: int | None

    @classmethod
    def from_file(cls, path: str | os.PathLike, overrides: Sequence[str] = (), *, allow_unknown_keys: bool = False,
                  check_data: bool = True) -> "TrainingConfig":
        """Load `path`, apply `overrides` once and check everything (see the module docstring).

        Args:
            path: InternEvo Python config file.
            overrides: `KEY=VALUE` items, as `--set` takes them (values are Python literals).
            allow_unknown_keys: keep keys neither InternEvo nor rethinktiny reads (`--allow-unknown-keys`).
            check_data: verify the data folders (False: a caller that reads other data, e.g. `resample --data`).
        """
        path, overrides = Path(path), list(overrides)
        raw = load_config_file(path)
        apply_overrides(raw, overrides)
        source = _Source(path, overrides)
        model_type = raw.get("model_type", INTERNEVO_DEFAULT_MODEL_TYPE)
        if not allow_unknown_keys:
            check_known_keys(raw, model_type, source)
        check_values(raw, source)
        model = _model(raw, model_type, source)
        data = dict(raw.get("data") or {})
        if check_data:
            check_data_folders(data)
        launch = raw.get("launch") or {}
        config = cls(path=path, overrides=overrides, raw=raw, model_type=model_type, model=model, data=data,
                     dtype=_dtype(raw, source), label_smoothing=float((raw.get("loss") or {}).get("label_smoothing", 0)),
                     nproc_hint=launch.get("nproc_per_node"))
        if raw.get("distill") is not None:
            from rethinktiny.distill.section import check_distill_section

            # the teacher (or cache) and the vocabularies, here and not inside every rank
            check_distill_section(config)
        return config

    def section(self, name: str) -> dict[str, Any]:
        """A section of the config (`{}` when absent)."""
        return dict(self.raw.get(name) or {})

    @property
    def total_steps(self) -> int | None:
        return self.data.get("total_steps")


class _Source:
    """Names where a key came from: the file, or the `--set` item that put it there."""

    def __init__(self, path: Path, overrides: list[str]) -> None:
        self.path = path
        self.overrides = [(override_key(text), text) for text in overrides]

    def __call__(self, key: str) -> str:
        parts = key.split(".")
        setters = [text for path, text in self.overrides if parts[:len(path)] == path or path[:len(parts)] == parts]
        return f"{self.path}: --set {setters[-1]}" if setters else str(self.path)


# ---- known keys -----------------------------------------------------------------------------------

def check_known_keys(raw: dict[str, Any], model_type: str, source: Callable[[str], str]) -> None:
    """Raise UserError for the first key neither InternEvo nor rethinktiny reads (with a count of the rest).

    Upper-case top-level names (`SEQ_LEN`, `TRAIN_FOLDER`) are the file's own constants, as in
    InternEvo's configs, and are not checked. `model` is checked for our model types only: InternEvo's
    own builders take their keys as named arguments.
    """
    tree = {**KNOWN_KEYS, "model": OUR_MODEL_KEYS if model_type in MODEL_TYPES else {}}
    unknown = [found for name, value in raw.items() if not _is_constant(name)
               for found in _unknown(name, value, tree)]
    if not unknown:
        return
    key, nearest = unknown[0]
    hint = f" (did you mean {nearest}?)" if nearest else ""
    more = f"; {len(unknown) - 1} more unknown key(s)" if len(unknown) > 1 else ""
    raise UserError(f"{source(key)}: unknown config key {key}{hint}{more}; neither InternEvo nor rethinktiny "
                    "reads it (--allow-unknown-keys keeps it)")


def _is_constant(name: str) -> bool:
    return name.upper() == name and name != name.lower()


def _unknown(key: str, value: Any, siblings: dict, prefix: str = "") -> list[tuple[str, str | None]]:
    """[(dotted key, nearest known sibling or None)] below `key` that the tree does not know."""
    dotted = f"{prefix}{key}"
    if key not in siblings:
        close = difflib.get_close_matches(str(key), list(siblings), n=1)
        return [(dotted, f"{prefix}{close[0]}" if close else None)]
    children = siblings[key]
    if not children or not isinstance(value, dict):
        return []
    return [found for child, child_value in value.items()
            for found in _unknown(child, child_value, children, f"{dotted}.")]


# ---- values ---------------------------------------------------------------------------------------

def _lookup(raw: dict[str, Any], key: str) -> tuple[bool, Any]:
    node: Any = raw
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def check_values(raw: dict[str, Any], source: Callable[[str], str]) -> None:
    """Types and ranges of the values the pre-check and the trainer read (VALUE_RULES)."""
    for name in SECTIONS:
        if name in raw and not isinstance(raw[name], dict):
            raise UserError(f"{source(name)}: {name} must be a dict(...), got {type(raw[name]).__name__}")
    if not isinstance(raw.get("model_type", ""), str):
        raise UserError(f"{source('model_type')}: model_type must be a string, got {raw['model_type']!r}")
    for key, (valid, what) in VALUE_RULES.items():
        present, value = _lookup(raw, key)
        if present and not valid(value):
            raise UserError(f"{source(key)}: {key} must be {what}, got {value!r}")


def _dtype(raw: dict[str, Any], source: Callable[[str], str]) -> str:
    value = (raw.get("model") or {}).get("dtype", INTERNEVO_DEFAULT_DTYPE)
    return dtype_name(value, flag=f"{source('model.dtype')}: model.dtype", tf32=True)


# ---- model ----------------------------------------------------------------------------------------

def _model(raw: dict[str, Any], model_type: str, source: Callable[[str], str]) -> ModelConfig | None:
    """The shape of our model types; InternEvo's registry is asked (seconds) only for other names."""
    if model_type not in MODEL_TYPES:
        known = internevo_model_types()
        if model_type not in known:
            raise UserError(f"{source('model_type')}: model_type {model_type!r} is unknown; rethinktiny provides "
                            f"{list(MODEL_TYPES)}, InternEvo {[name for name in known if name not in MODEL_TYPES]}")
        return None
    if "model" not in raw:
        raise UserError(f"{source('model')}: no model=dict(...) entry")
    where = source("model")
    try:
        model = from_internevo(dict(raw["model"]), source=f"{where}: model")
    except UserError as err:  # ModelConfig's own checks do not know the file
        raise UserError(str(err) if str(err).startswith(where) else f"{where}: {err}") from None
    if model_type == MODEL_TYPE_PRO and not model.is_pro:
        raise UserError(f"{where}: model_type {MODEL_TYPE_PRO} has no series activation or "
                        "augmented shortcuts; use model_type PANGU_PI for them")
    return model


def internevo_model_types() -> list[str]:
    """The model types in the installed InternEvo's registry. Imports InternEvo (seconds), so it is
    only asked about a model type that is not one of ours."""
    from rethinktiny.internevo import api

    return api.model_types()


# ---- data -----------------------------------------------------------------------------------------

def check_data_folders(data: dict[str, Any]) -> None:
    """The training folder, and the validation folder when validation runs: every `.bin` with its
    `.meta` (InternEvo's loader needs both), checked against it."""
    from rethinktiny.data.tokenized import require_bin_files

    if data.get("train_folder"):
        require_bin_files(data["train_folder"], need_meta=True)
    if (data.get("valid_every") or 0) > 0 and data.get("valid_folder"):
        require_bin_files(data["valid_folder"], need_meta=True)
