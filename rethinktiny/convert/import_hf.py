"""Hugging Face LLaMA-family folder (llama, mistral, qwen2, internlm2) -> InternEvo model-only
checkpoint of `PANGU_PI_PRO`.

The result is what InternEvo's model-only load reads (`model_tp0_pp0.pt` + `model_config.json`),
so a public model can be a teacher for inheritance or continue training in InternEvo. The HF
folder's tokenizer files (tokenizer.model and/or tokenizer.json with its configs) are copied along,
so `eval ppl`, `inherit --calib TEXT.jsonl` and `data tokenize` find the model's own tokenizer.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from tqdm import tqdm

from rethinktiny.artifacts import check_writable, output_dir, write_manifest
from rethinktiny.checkpoint import check_state_dict, save_model_only
from rethinktiny.config import ModelConfig
from rethinktiny.convert.hf_config import hf_layout, model_config_from_hf, read_hf_config
from rethinktiny.convert.keys import MappedWeights
from rethinktiny.convert.safetensors_io import HFWeights
from rethinktiny.convert.tokenizer_files import copy_tokenizer_files
from rethinktiny.dtypes import parse_dtype
from rethinktiny.model import parameter_shapes


def read_mapped_state(mapped: MappedWeights, dtype: torch.dtype | None, progress: bool,
                      desc: str) -> dict[str, torch.Tensor]:
    """Our state dict from a mapped foreign checkpoint, cast to `dtype` (None keeps it); a tied
    head is the embedding tensor itself."""
    state = {}
    for name in tqdm(sorted(mapped.names()), desc=desc, unit="tensor", disable=not progress):
        if mapped.cfg.tie_embeddings and name == "output.weight":
            continue
        tensor = mapped.tensor(name)
        state[name] = tensor.to(dtype) if dtype is not None else tensor
    if mapped.cfg.tie_embeddings and "tok_embeddings.weight" in state:
        state["output.weight"] = state["tok_embeddings.weight"]
    return state


def save_converted(dst: str | os.PathLike, force: bool, state: dict[str, torch.Tensor], cfg: ModelConfig,
                   source: str, command: str, args: dict, inputs: dict, extra: dict,
                   tokenizer: Path | None = None) -> Path:
    """Check `state` against `cfg` and write the model-only checkpoint folder atomically, with the
    tokenizer files of the folder `tokenizer` (`copy_tokenizer_files`) when given."""
    check_state_dict(state, parameter_shapes(cfg), source)
    with output_dir(dst, force) as tmp:
        save_model_only(tmp, state, cfg)
        if tokenizer is not None:
            copy_tokenizer_files(tokenizer, tmp)
        write_manifest(tmp, command, args, inputs=inputs, extra={"model_config": cfg.to_dict(), **extra})
    return Path(dst)


def from_hf(src: str | os.PathLike, dst: str | os.PathLike, dtype: str = "auto", force: bool = False,
            progress: bool = True) -> Path:
    """Import an HF `LlamaForCausalLM`, Mistral or Qwen2 (without sliding window) or InternLM2 folder.

    Args:
        src: HF model folder (config.json + safetensors or pytorch_model.bin, sharded or not).
        dst: output folder (written atomically): model_tp0_pp0.pt, model_config.json, manifest.json,
            and the tokenizer files `src` has (tokenizer.model, tokenizer.json, ...).
        dtype: "auto" (keep the HF dtype), "float32", "bfloat16" or "float16".
        force: replace an existing `dst`.
    Returns:
        the output folder.
    """
    src = Path(src)
    check_writable(dst, force)
    target_dtype = parse_dtype(dtype, keep=True)
    data = read_hf_config(src)
    cfg = model_config_from_hf(data, str(src / "config.json"))
    mapped = MappedWeights(HFWeights(src), hf_layout(data, str(src / "config.json")), cfg, str(src))
    mapped.check_complete(parameter_shapes(cfg), "config.json")
    state = read_mapped_state(mapped, target_dtype, progress, "from-hf")
    return save_converted(dst, force, state, cfg, str(src), "convert from-hf", dict(src=str(src), dtype=dtype),
                          inputs={"hf_folder": src}, extra={"ignored_keys": mapped.ignored},
                          tokenizer=src)
