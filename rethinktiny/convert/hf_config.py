"""`config.json` / `generation_config.json` of a Hugging Face `LlamaForCausalLM`, both ways.

The files are written as plain JSON (no transformers import) with the keys both transformers 4.x
(`rope_theta`, `torch_dtype`) and 5.x (`rope_parameters`, `dtype`) read, so an export loads with
either; a model with q/k/v biases only is written as `Qwen2ForCausalLM` (Llama has no such
option). Reading accepts the LLaMA family whose forward is exactly ours: RMSNorm, SiLU-gated MLP
without biases, plain RoPE (no scaling), optional q/k/v/o biases, GQA: `llama`, `mistral`
(without a sliding window), `qwen2` (q/k/v biases) and `internlm2` (the remote-code
`InternLM2ForCausalLM`, read from its documented config keys; its code is never run).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rethinktiny.config import ModelConfig
from rethinktiny.convert.keys import HF_INTERNLM2_LAYOUT, HF_LLAMA_LAYOUT, Layout
from rethinktiny.errors import UserError

# Architectures whose forward equals LlamaForCausalLM's (Mistral and Qwen2 only without a sliding
# window, which changes attention). model_type -> architecture.
SUPPORTED: dict[str, str] = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                             "qwen2": "Qwen2ForCausalLM", "internlm2": "InternLM2ForCausalLM"}
SUPPORTED_ARCHITECTURES = tuple(SUPPORTED.values())
SUPPORTED_MODEL_TYPES = tuple(SUPPORTED)


def require_llama_equivalent(cfg: ModelConfig, source: str) -> None:
    """PanGu-π blocks (series-informed activation, augmented shortcuts) have no LLaMA equivalent."""
    if cfg.is_pro:
        return
    extras = []
    if cfg.series_terms:
        extras.append(f"series-informed activation (series_terms={cfg.series_terms})")
    if cfg.aug_shortcuts:
        extras.append(f"augmented shortcuts (aug_shortcuts={cfg.aug_shortcuts})")
    raise UserError(f"{source}: a PANGU_PI model with {' and '.join(extras)} has no LlamaForCausalLM "
                    f"equivalent; only PANGU_PI_PRO / LLAMA2-shaped models can be exported")


def llama_config_dict(cfg: ModelConfig, dtype_name: str, max_position_embeddings: int,
                      bos_id: int | None, eos_id: int | None, pad_id: int | None) -> dict[str, Any]:
    """The `config.json` body for `cfg` as a `LlamaForCausalLM`.

    Args:
        cfg: model shape (must be LLaMA-equivalent).
        dtype_name: torch dtype name of the saved weights ("bfloat16", ...).
        max_position_embeddings: the context length HF tools assume.
        bos_id, eos_id, pad_id: special token ids (None when the tokenizer has none).
    """
    body = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": max_position_embeddings,
        "initializer_range": 0.02,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": None,
        "rope_parameters": {"rope_theta": cfg.rope_theta, "rope_type": "default"},
        "attention_bias": cfg.attention_bias,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "pretraining_tp": 1,
        "tie_word_embeddings": cfg.tie_embeddings,
        "use_cache": True,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "torch_dtype": dtype_name,
        "dtype": dtype_name,
    }
    if cfg.qkv_bias:
        # Qwen2 is Llama with biases on q/k/v and none on o; its sliding window stays off.
        body.update(architectures=["Qwen2ForCausalLM"], model_type="qwen2", use_sliding_window=False,
                    sliding_window=None, max_window_layers=cfg.num_layers)
        body.pop("attention_bias")
        body.pop("mlp_bias")
        body.pop("pretraining_tp")
    return body


def generation_config_dict(bos_id: int | None, eos_id: int | None, pad_id: int | None) -> dict[str, Any]:
    """`generation_config.json`: the special ids `generate` needs; decoding defaults stay HF's."""
    return {"bos_token_id": bos_id, "eos_token_id": eos_id, "pad_token_id": pad_id}


def read_hf_config(folder: Path) -> dict[str, Any]:
    """The parsed `config.json` of an HF model folder, with clear errors."""
    if not folder.is_dir():
        raise UserError(f"{folder}: Hugging Face model folder not found")
    path = folder / "config.json"
    if not path.is_file():
        raise UserError(f"{path}: not found; {folder} is not a Hugging Face model folder")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object")
    return data


def hf_model_type(data: dict[str, Any], source: str) -> str:
    """The supported `model_type` of a config.json body (from `architectures` when it has none)."""
    architectures = data.get("architectures") or []
    model_type = data.get("model_type")
    if model_type is not None and model_type not in SUPPORTED_MODEL_TYPES:
        # transformers builds the model from model_type, whatever `architectures` says
        raise UserError(f"{source}: unsupported architecture model_type={model_type!r}; supported: "
                        f"{', '.join(SUPPORTED_MODEL_TYPES)}")
    if model_type is None:
        known = [t for t, arch in SUPPORTED.items() if arch in architectures]
        if not known:
            found = architectures[0] if architectures else None
            raise UserError(f"{source}: unsupported architecture {found!r}; supported: "
                            f"{', '.join(SUPPORTED_ARCHITECTURES)}")
        model_type = known[0]
    return model_type


def sliding_window(data: dict[str, Any]) -> int | None:
    """The sliding attention window the model really uses, or None. Qwen2 configs carry a
    `sliding_window` value that only `use_sliding_window: true` turns on."""
    window = data.get("sliding_window")
    if "use_sliding_window" in data and not data["use_sliding_window"]:
        window = None
    if "sliding_attention" in (data.get("layer_types") or []):
        window = window or -1
    return window or None


def _check_architecture(data: dict[str, Any], source: str) -> str:
    model_type = hf_model_type(data, source)
    window = sliding_window(data)
    if window is not None:
        raise UserError(f"{source}: sliding_window={data.get('sliding_window')} attention has no equivalent here")
    return model_type


def scaled_rope(data: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """(key, entry) of the first non-default RoPE setting (5.x `rope_parameters` or 4.x
    `rope_scaling`), or None for plain RoPE."""
    for key in ("rope_parameters", "rope_scaling"):
        entry = data.get(key) or {}
        if entry.get("rope_type", entry.get("type", "default")) != "default":
            return key, entry
    return None


def rope_base(data: dict[str, Any]) -> float:
    """RoPE base from 5.x `rope_parameters` or 4.x `rope_theta`."""
    params = data.get("rope_parameters") or {}
    return float(params.get("rope_theta", data.get("rope_theta", 10000.0)))


def _rope_theta(data: dict[str, Any], source: str) -> float:
    """RoPE base; scaled RoPE is refused (the converted model must compute what the source did)."""
    scaled = scaled_rope(data)
    if scaled is not None:
        key, entry = scaled
        kind = entry.get("rope_type", entry.get("type"))
        raise UserError(f"{source}: {key} type {kind!r} (scaled RoPE) is not supported; only plain RoPE")
    return rope_base(data)


def _check_block(data: dict[str, Any], heads: int, source: str) -> None:
    if data.get("hidden_act", "silu") != "silu":
        raise UserError(f"{source}: hidden_act {data['hidden_act']!r} is not supported (only silu)")
    if data.get("mlp_bias", False):
        raise UserError(f"{source}: mlp_bias=true is not supported (our FFN has no biases)")
    head_dim = data.get("head_dim")
    if head_dim is not None and head_dim != data["hidden_size"] // heads:
        raise UserError(f"{source}: head_dim {head_dim} != hidden_size/num_attention_heads "
                        f"({data['hidden_size']}/{heads}) is not supported")


def _biases(model_type: str, data: dict[str, Any]) -> dict[str, bool]:
    """Which attention projections have biases, in each family's own config key."""
    if model_type == "qwen2":
        return {"qkv_bias": True}  # Qwen2Attention: q/k/v always biased, o never
    if model_type == "internlm2":
        return {"attention_bias": bool(data.get("bias", True))}  # InternLM2Config's default
    return {"attention_bias": bool(data.get("attention_bias", False))}


def hf_layout(data: dict[str, Any], source: str) -> Layout:
    """The key layout of an HF folder's weights (InternLM2's fused wqkv or the LLaMA names)."""
    return HF_INTERNLM2_LAYOUT if hf_model_type(data, source) == "internlm2" else HF_LLAMA_LAYOUT


def model_config_from_hf(data: dict[str, Any], source: str) -> ModelConfig:
    """ModelConfig (a PANGU_PI_PRO shape) of an HF LLaMA-family `config.json` body.

    Args:
        data: parsed config.json.
        source: file name for error messages.
    """
    model_type = _check_architecture(data, source)
    try:
        heads = int(data["num_attention_heads"])
        _check_block(data, heads, source)
        return ModelConfig(
            hidden_size=int(data["hidden_size"]),
            num_layers=int(data["num_hidden_layers"]),
            num_attention_heads=heads,
            num_kv_heads=int(data.get("num_key_value_heads") or heads),
            intermediate_size=int(data["intermediate_size"]),
            vocab_size=int(data["vocab_size"]),
            tie_embeddings=bool(data.get("tie_word_embeddings", False)),
            norm_eps=float(data.get("rms_norm_eps", 1e-6)),
            rope_theta=_rope_theta(data, source),
            **_biases(model_type, data),
            name="hf_import",
        )
    except KeyError as err:
        raise UserError(f"{source}: missing key {err.args[0]!r}") from None
    except (TypeError, ValueError) as err:
        raise UserError(f"{source}: bad value ({err})") from None
