"""InternEvo checkpoint (ours or InternEvo LLAMA2) -> Hugging Face `LlamaForCausalLM` folder.

Tensors are read one at a time from the memory-mapped (tp/pp-merged) checkpoint, renamed through
the key table, rotary-permuted, cast, and streamed into safetensors shards, so a 1B export needs
little more memory than the checkpoint itself.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from tqdm import tqdm

from rethinktiny.artifacts import check_writable, output_dir, write_json, write_manifest
from rethinktiny.checkpoint import InternEvoCheckpoint
from rethinktiny.config import ModelConfig
from rethinktiny.convert.context_length import resolve_context_length
from rethinktiny.convert.hf_config import generation_config_dict, llama_config_dict, require_llama_equivalent
from rethinktiny.convert.keys import ours_to_hf
from rethinktiny.convert.safetensors_io import TensorSpec, parse_size, write_sharded
from rethinktiny.convert.tokenizer_files import DEFAULT_SPECIAL_IDS, check_tokenizer, write_tokenizer_files
from rethinktiny.dtypes import parse_dtype
from rethinktiny.errors import UserError
from rethinktiny.model import parameter_shapes
from rethinktiny.rotary_layout import interleaved_to_half, is_rotary_buffer, rotary_heads


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def resolve_model_config(config: ModelConfig | str | os.PathLike | None) -> ModelConfig | None:
    """A ModelConfig as given, read from an InternEvo config file path, or None."""
    if config is None or isinstance(config, ModelConfig):
        return config
    from rethinktiny.configfiles.load import model_config_from_file

    return model_config_from_file(config)


def open_checkpoint(src: str | os.PathLike, config: ModelConfig | str | os.PathLike | None) -> InternEvoCheckpoint:
    """The merged checkpoint with a known model shape (from `config` or the folder's own file)."""
    ckpt = InternEvoCheckpoint(src, config=resolve_model_config(config))
    if ckpt.config is None:
        raise UserError(f"{ckpt.folder}: no model_config.json or model_config.pt; pass the InternEvo "
                        f"config file with --config")
    return ckpt


def check_source_keys(ckpt: InternEvoCheckpoint, expected: dict[str, tuple[int, ...]]) -> list[str]:
    """Every expected key present (a tied output may be absent), nothing unknown; returns the
    ignored parameter-free keys."""
    tied = ckpt.config.tie_embeddings
    required = [k for k in expected if not (tied and k == "output.weight")]
    missing = [k for k in required if k not in ckpt]
    if missing:
        raise UserError(f"{ckpt.folder}: missing key {missing[0]} ({len(missing)} missing) for "
                        f"{ckpt.config.model_type} with {ckpt.config.num_layers} layers")
    ignored = [k for k in ckpt.keys() if is_rotary_buffer(k)]
    unknown = [k for k in ckpt.keys() if k not in expected and k not in ignored]
    if unknown:
        raise UserError(f"{ckpt.folder}: unexpected key {unknown[0]} ({len(unknown)} unexpected); "
                        f"does the model config match the checkpoint?")
    return ignored


def export_specs(expected: dict[str, tuple[int, ...]], cfg: ModelConfig, dtype: torch.dtype) -> list[TensorSpec]:
    """HF tensors to write, in model order; a tied `lm_head` is not stored (HF ties it on load)."""
    specs = []
    for name, shape in expected.items():
        if cfg.tie_embeddings and name == "output.weight":
            continue
        hf_name = ours_to_hf(name)
        if hf_name is None:
            raise UserError(f"{name}: no Hugging Face LLaMA equivalent")
        specs.append(TensorSpec(hf_name, shape, dtype))
    return specs


class _Exporter:
    """Produces each HF tensor from the checkpoint on demand (read, check, permute, cast)."""

    def __init__(self, ckpt: InternEvoCheckpoint, expected: dict[str, tuple[int, ...]], dtype: torch.dtype) -> None:
        self.ckpt, self.expected, self.dtype = ckpt, expected, dtype
        self.cfg = ckpt.config
        self.our_names = {ours_to_hf(name): name for name in expected}

    def __call__(self, spec: TensorSpec) -> torch.Tensor:
        name = self.our_names[spec.name]
        tensor = self.ckpt.tensor(name)
        if tuple(tensor.shape) != self.expected[name]:
            raise UserError(f"{self.ckpt.folder}: shape mismatch for {name}: checkpoint {tuple(tensor.shape)}, "
                            f"model config {self.expected[name]}")
        heads = rotary_heads(name, self.cfg.num_attention_heads, self.cfg.num_kv_heads)
        if heads is not None:
            tensor = interleaved_to_half(tensor, heads)
        return tensor.to(self.dtype)


def _source_dtype(ckpt: InternEvoCheckpoint) -> torch.dtype:
    return ckpt.tensor("tok_embeddings.weight").dtype


def to_hf(src: str | os.PathLike, dst: str | os.PathLike, tokenizer: str | os.PathLike | None = None,
          dtype: str = "auto", max_shard_size: str | int = "5GB",
          config: ModelConfig | str | os.PathLike | None = None, max_position_embeddings: int | None = None,
          add_bos_token: bool = True, force: bool = False, progress: bool = True) -> Path:
    """Export an InternEvo checkpoint as a Hugging Face `LlamaForCausalLM` folder.

    Args:
        src: step folder with `model_tp*_pp*.pt`, or its parent (latest step); any tp/pp layout.
        dst: output folder (written atomically): config.json, generation_config.json,
            model-*.safetensors + model.safetensors.index.json, tokenizer files, manifest.json.
        tokenizer: SentencePiece model file, or folder with tokenizer.model or an HF tokenizer.json
            (copied as it is) (None: no tokenizer files).
        dtype: "auto" (the checkpoint's), "float32", "bfloat16" or "float16".
        max_shard_size: largest safetensors shard, e.g. "5GB".
        config: ModelConfig or InternEvo config file; default: the checkpoint's model config.
        max_position_embeddings: context length written to config.json (default: the training
            sequence length, see `rethinktiny.convert.context_length`).
        add_bos_token: the HF tokenizer prepends <s>, as every training document starts with it
            (default on: `generate`, `pipeline` and lm-eval then see what training saw).
        force: replace an existing `dst`.
    Returns:
        the output folder.
    """
    check_writable(dst, force)  # before any work
    ckpt = open_checkpoint(src, config)
    cfg = ckpt.config
    require_llama_equivalent(cfg, str(ckpt.folder))
    expected = parameter_shapes(cfg)
    ignored = check_source_keys(ckpt, expected)
    loaded, special = (check_tokenizer(tokenizer, cfg.vocab_size) if tokenizer is not None
                       else (None, DEFAULT_SPECIAL_IDS))
    target_dtype = parse_dtype(dtype, keep=True) or _source_dtype(ckpt)
    max_bytes = parse_size(max_shard_size)
    specs = export_specs(expected, cfg, target_dtype)
    context, context_source = resolve_context_length(max_position_embeddings, ckpt.folder, config)
    args = dict(src=str(src), tokenizer=tokenizer and str(tokenizer), config=config and str(config), dtype=dtype,
                max_shard_size=str(max_shard_size), max_position_embeddings=max_position_embeddings,
                add_bos_token=add_bos_token)
    with output_dir(dst, force) as tmp, tqdm(total=len(specs), desc="to-hf", unit="tensor",
                                             disable=not progress) as bar:
        write_sharded(tmp, specs, _Exporter(ckpt, expected, target_dtype), max_bytes,
                      on_tensor=lambda spec: bar.update(1))
        write_json(tmp / "config.json", llama_config_dict(cfg, dtype_name(target_dtype), context,
                                                          special.bos, special.eos, special.pad))
        write_json(tmp / "generation_config.json", generation_config_dict(special.bos, special.eos, special.pad))
        if loaded is not None:
            write_tokenizer_files(loaded, tokenizer, tmp, add_bos_token)
        write_manifest(tmp, "convert to-hf", args, inputs={"checkpoint": ckpt.folder,
                                                               "tokenizer": loaded and loaded.path},
                       extra={"model_config": cfg.to_dict(), "source_step_folder": str(ckpt.folder),
                              "source_tp_pp": [ckpt.tp_size, ckpt.pp_size], "ignored_keys": ignored,
                              "max_position_embeddings": {"value": context, "from": context_source}})
    return Path(dst)
