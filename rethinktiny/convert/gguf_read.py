"""GGUF files (llama.cpp's format) read as our model: `convert from-gguf` and `inherit --src x.gguf`.

The file is read with llama.cpp's own Python package `gguf` (memory-mapped `GGUFReader`); each
tensor is dequantized to float32 by `gguf.quants.dequantize` when it is needed, so peak memory is
one tensor. F32 and F16 tensors keep their dtype; every block type `gguf` can dequantize (Q8_0,
Q4_0, Q4_1, Q5_*, the K-quants, ...) comes out as float32; other tensor types are refused.

Architectures: `llama` (also what llama.cpp writes for Mistral) and `qwen2`, whose tensors are
named `token_embd`, `blk.{i}.attn_q`, ... (`TABLE`). The q/k row order differs between them:
llama.cpp's HF converter permutes a `llama` model's q/k rows back to Meta's interleaved pairs
(its RoPE rotates pairs, "NORM" mode), which is our order (transformers' GGUF loader undoes that
permute to get rotate_half); `qwen2` rotates halves ("NEOX" mode) and is stored unpermuted, in HF's
rotate_half order, which we reorder as for an HF folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from rethinktiny.artifacts import check_writable
from rethinktiny.config import ModelConfig
from rethinktiny.convert.keys import Layout, MappedWeights
from rethinktiny.dtypes import parse_dtype
from rethinktiny.errors import UserError
from rethinktiny.model import parameter_shapes

# GGUF name -> ours; "{}" is the layer index.
TABLE: dict[str, str] = {
    "token_embd.weight": "tok_embeddings.weight",
    "output_norm.weight": "norm.weight",
    "output.weight": "output.weight",
    **{f"blk.{{}}.{gguf}.{kind}": f"layers.{{}}.{ours}.{kind}"
       for gguf, ours in (("attn_q", "attention.wq"), ("attn_k", "attention.wk"), ("attn_v", "attention.wv"),
                          ("attn_output", "attention.wo"))
       for kind in ("weight", "bias")},
    "blk.{}.attn_norm.weight": "layers.{}.attention_norm.weight",
    "blk.{}.ffn_norm.weight": "layers.{}.ffn_norm.weight",
    "blk.{}.ffn_gate.weight": "layers.{}.feed_forward.w1.weight",
    "blk.{}.ffn_up.weight": "layers.{}.feed_forward.w3.weight",
    "blk.{}.ffn_down.weight": "layers.{}.feed_forward.w2.weight",
}
# Architecture -> layout: llama.cpp stores llama q/k in interleaved pairs, qwen2 in rotate_half.
LAYOUTS: dict[str, Layout] = {
    "llama": Layout("gguf llama", TABLE, rotate_half=False, ignored_suffixes=("rope_freqs.weight",)),
    "qwen2": Layout("gguf qwen2", TABLE, rotate_half=True, ignored_suffixes=("rope_freqs.weight",)),
}
_KEPT_DTYPES = {"F32": torch.float32, "F16": torch.float16}


class GGUFWeights:
    """The tensors of one GGUF file, read lazily and dequantized one at a time.

    Args:
        path: the .gguf file.
    """

    def __init__(self, path: Path) -> None:
        from gguf import GGUFReader

        if not path.is_file():
            raise UserError(f"{path}: GGUF file not found")
        try:
            self.reader = GGUFReader(path, "r")
        except (ValueError, OSError) as err:
            raise UserError(f"{path}: not a readable GGUF file ({err})") from None
        self.path = path
        self._tensors = {t.name: t for t in self.reader.tensors}

    @property
    def files(self) -> list[Path]:
        return [self.path]

    def keys(self) -> list[str]:
        return list(self._tensors)

    def file_of(self, name: str) -> Path:
        return self.path

    def type_name(self, name: str) -> str:
        return self._tensors[name].tensor_type.name

    def common_dtype(self) -> torch.dtype:
        """One dtype for the whole model: float16 when every tensor is F16, else float32 (llama.cpp
        keeps norms in F32 even in F16 files, and dequantized blocks are float32)."""
        kinds = {t.tensor_type.name for t in self._tensors.values()}
        return torch.float16 if kinds == {"F16"} else torch.float32

    def rows(self, name: str) -> int:
        """The first (row) dimension of `name` in torch order."""
        return int(self._tensors[name].shape[-1])  # GGUF lists dimensions innermost first

    def tensor(self, name: str) -> torch.Tensor:
        """Tensor `name` in torch order: F32/F16 as stored, quantized types dequantized to float32."""
        import numpy as np
        from gguf.quants import dequantize

        info = self._tensors[name]
        kind = info.tensor_type.name
        shape = tuple(int(d) for d in reversed(info.shape))
        if kind in _KEPT_DTYPES:
            return torch.from_numpy(np.array(info.data)).reshape(shape)
        try:
            values = dequantize(info.data, info.tensor_type)
        except NotImplementedError:
            raise UserError(f"{self.path}: tensor {name} has GGUF type {kind}, which gguf cannot dequantize "
                            f"(supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, K-quants, ...)") from None
        return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).reshape(shape)

    def field(self, key: str, default: Any = None) -> Any:
        """A metadata value (scalar, string or list), or `default` when the file has none."""
        found = self.reader.get_field(key)
        if found is None:
            return default
        value = found.contents()
        return value.item() if hasattr(value, "item") else value


def gguf_model_config(weights: GGUFWeights, strict: bool) -> tuple[ModelConfig, Layout, list[str]]:
    """ModelConfig, layout and notes from a GGUF file's metadata and tensor names.

    Args:
        weights: the opened file.
        strict: refuse what changes the function (scaled RoPE) instead of noting it (conversion
            must compute what the source did; inheritance only borrows weights).
    """
    where = str(weights.path)
    arch = weights.field("general.architecture")
    if arch not in LAYOUTS:
        raise UserError(f"{where}: unsupported GGUF architecture general.architecture={arch!r}; "
                        f"supported: {', '.join(LAYOUTS)}")
    notes = []
    scaling = weights.field(f"{arch}.rope.scaling.type", "none")
    if scaling not in ("none", None) or "rope_freqs.weight" in weights.keys():
        what = f"{arch}.rope.scaling.type={scaling!r}" if scaling not in ("none", None) else "rope_freqs.weight"
        if strict:
            raise UserError(f"{where}: {what} (scaled RoPE) is not supported; only plain RoPE")
        notes.append(f"source rope scaling ({what}) ignored: the target uses plain RoPE")
    names = set(weights.keys())
    try:
        heads = int(weights.field(f"{arch}.attention.head_count"))
        hidden = int(weights.field(f"{arch}.embedding_length"))
        _check_head_dim(weights, arch, hidden // heads, where)
        biased = {p for p, g in (("wq", "attn_q"), ("wo", "attn_output")) if f"blk.0.{g}.bias" in names}
        cfg = ModelConfig(
            hidden_size=hidden, num_layers=int(weights.field(f"{arch}.block_count")),
            num_attention_heads=heads,
            num_kv_heads=int(weights.field(f"{arch}.attention.head_count_kv", heads)),
            intermediate_size=int(weights.field(f"{arch}.feed_forward_length")),
            vocab_size=weights.rows("token_embd.weight"), tie_embeddings="output.weight" not in names,
            norm_eps=float(weights.field(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
            rope_theta=float(weights.field(f"{arch}.rope.freq_base", 10000.0)),
            attention_bias="wo" in biased, qkv_bias=biased == {"wq"}, name="gguf_import")
    except (TypeError, ValueError, KeyError) as err:
        raise UserError(f"{where}: missing or bad {arch} metadata ({type(err).__name__}: {err})") from None
    return cfg, LAYOUTS[arch], notes


def _check_head_dim(weights: GGUFWeights, arch: str, head_dim: int, where: str) -> None:
    for key in (f"{arch}.attention.key_length", f"{arch}.rope.dimension_count"):
        value = weights.field(key)
        if value is not None and int(value) != head_dim:
            raise UserError(f"{where}: {key}={value} differs from embedding_length/head_count={head_dim}; "
                            "not supported")


def open_gguf(path: str | os.PathLike, strict: bool) -> tuple[MappedWeights, list[str]]:
    """The GGUF file as our names (`MappedWeights`, with `.cfg`), checked complete, and notes."""
    weights = GGUFWeights(Path(path))
    cfg, layout, notes = gguf_model_config(weights, strict)
    mapped = MappedWeights(weights, layout, cfg, str(path))
    mapped.check_complete(parameter_shapes(cfg), "its metadata")
    return mapped, notes


def from_gguf(src: str | os.PathLike, dst: str | os.PathLike, dtype: str = "auto", force: bool = False,
              progress: bool = True) -> Path:
    """Import a GGUF file (llama or qwen2 architecture) as an InternEvo model-only checkpoint.

    Args:
        src: the .gguf file.
        dst: output folder (written atomically): model_tp0_pp0.pt, model_config.json, manifest.json.
        dtype: "auto" (float16 when every tensor is F16, else float32), "float32", "bfloat16" or
            "float16" (any spelling `rethinktiny.dtypes` accepts).
        force: replace an existing `dst`.
    Returns:
        the output folder.
    """
    from rethinktiny.convert.import_hf import read_mapped_state, save_converted

    src = Path(src)
    check_writable(dst, force)
    target_dtype = parse_dtype(dtype, keep=True)
    mapped, _ = open_gguf(src, strict=True)
    types = sorted({mapped.weights.type_name(k) for k in mapped.weights.keys()})
    state = read_mapped_state(mapped, target_dtype or mapped.weights.common_dtype(), progress, "from-gguf")
    return save_converted(dst, force, state, mapped.cfg, str(src), "convert from-gguf",
                          dict(src=str(src), dtype=dtype), inputs={"gguf_file": src},
                          extra={"ignored_keys": mapped.ignored, "gguf_tensor_types": types,
                                 "architecture": mapped.layout.name})
