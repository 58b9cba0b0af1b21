"""Hugging Face LLaMA-family folder -> InternEvo model-only checkpoint of `PANGU_PI_PRO`.

The result is what InternEvo's model-only load reads (`model_tp0_pp0.pt` + `model_config.json`),
so a public model can be a teacher for inheritance or continue training in InternEvo. The
SentencePiece `tokenizer.model` is copied along when the HF folder has one.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from tqdm import tqdm

from rethinktiny.artifacts import check_writable, output_dir, write_manifest
from rethinktiny.checkpoint import check_state_dict, save_model_only
from rethinktiny.config import ModelConfig
from rethinktiny.convert.hf_config import model_config_from_hf, read_hf_config
from rethinktiny.convert.keys import IGNORED_HF_SUFFIXES, half_to_interleaved, hf_to_ours, ours_to_hf, rotary_heads
from rethinktiny.convert.safetensors_io import HFWeights
from rethinktiny.dtypes import parse_dtype
from rethinktiny.errors import UserError
from rethinktiny.model import parameter_shapes



def map_hf_keys(weights: HFWeights, cfg: ModelConfig, source: str) -> tuple[dict[str, str], list[str]]:
    """our name -> HF name for every HF tensor, and the ignored HF keys; unknown keys are errors."""
    mapping, ignored = {}, []
    for hf_name in weights.keys():
        if hf_name.endswith(IGNORED_HF_SUFFIXES):
            ignored.append(hf_name)
            continue
        ours = hf_to_ours(hf_name)
        if ours is None:
            raise UserError(f"{source}: tensor {hf_name} has no equivalent in our model")
        if cfg.tie_embeddings and ours == "output.weight":
            ignored.append(hf_name)  # tied: the embedding is the head
            continue
        mapping[ours] = hf_name
    return mapping, ignored


def check_complete(mapping: dict[str, str], expected: dict[str, tuple[int, ...]], cfg: ModelConfig,
                   source: str) -> None:
    """Every parameter the config implies is present in the HF files (named by its HF key)."""
    needed = [k for k in expected if not (cfg.tie_embeddings and k == "output.weight")]
    missing = [k for k in needed if k not in mapping]
    if missing:
        raise UserError(f"{source}: missing tensor {ours_to_hf(missing[0])} ({len(missing)} missing) for "
                        f"the shape in config.json")
    extra = sorted(set(mapping) - set(expected))
    if extra:
        raise UserError(f"{source}: tensor {mapping[extra[0]]} does not fit config.json "
                        f"({len(extra)} unexpected; e.g. biases with attention_bias=false?)")


def read_hf_state(weights: HFWeights, mapping: dict[str, str], cfg: ModelConfig,
                  dtype: torch.dtype | None, progress: bool) -> dict[str, torch.Tensor]:
    """Our state dict from the HF tensors: renamed, rotary rows put back to interleaved pairs, cast."""
    state = {}
    for ours, hf_name in tqdm(sorted(mapping.items()), desc="from-hf", unit="tensor", disable=not progress):
        tensor = weights.tensor(hf_name)
        heads = rotary_heads(ours, cfg.num_attention_heads, cfg.num_kv_heads)
        if heads is not None:
            if tensor.shape[0] % (2 * heads):
                raise UserError(f"{weights.folder}: {hf_name} has {tensor.shape[0]} rows, not a multiple of "
                                f"2 x {heads} heads")
            tensor = half_to_interleaved(tensor, heads)
        state[ours] = tensor.to(dtype) if dtype is not None else tensor
    if cfg.tie_embeddings and "tok_embeddings.weight" in state:
        state["output.weight"] = state["tok_embeddings.weight"]
    return state


def from_hf(src: str | os.PathLike, dst: str | os.PathLike, dtype: str = "auto", force: bool = False,
            progress: bool = True) -> Path:
    """Import an HF `LlamaForCausalLM` (or Mistral without sliding window) folder.

    Args:
        src: HF model folder (config.json + safetensors or pytorch_model.bin, sharded or not).
        dst: output folder (written atomically): model_tp0_pp0.pt, model_config.json, manifest.json,
            and tokenizer.model when `src` has one.
        dtype: "auto" (keep the HF dtype), "float32", "bfloat16" or "float16".
        force: replace an existing `dst`.
    Returns:
        the output folder.
    """
    src = Path(src)
    check_writable(dst, force)
    target_dtype = parse_dtype(dtype, keep=True)
    cfg = model_config_from_hf(read_hf_config(src), str(src / "config.json"))
    weights = HFWeights(src)
    mapping, ignored = map_hf_keys(weights, cfg, str(src))
    expected = parameter_shapes(cfg)
    check_complete(mapping, expected, cfg, str(src))
    state = read_hf_state(weights, mapping, cfg, target_dtype, progress)
    check_state_dict(state, expected, str(src))
    with output_dir(dst, force) as tmp:
        save_model_only(tmp, state, cfg)
        tokenizer = src / "tokenizer.model"
        if tokenizer.is_file():
            shutil.copyfile(tokenizer, tmp / "tokenizer.model")
        write_manifest(tmp, "convert from-hf", dict(src=str(src), dtype=dtype),
                       inputs={"hf_folder": src},
                       extra={"model_config": cfg.to_dict(), "ignored_keys": ignored})
    return Path(dst)
