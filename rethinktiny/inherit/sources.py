"""Checkpoints to inherit from, behind one lazy interface with our (InternEvo LLAMA2) names.

Four kinds of source:
- an InternEvo checkpoint folder (our model types or InternEvo LLAMA2, any tp/pp layout), read
  through `rethinktiny.checkpoint.InternEvoCheckpoint`;
- an InternEvo INTERNLM2 / INTERNLM2_PUBLIC checkpoint (fused `attention.wqkv`, any tp/pp
  layout), recognised by that name;
- a Hugging Face LLaMA-family folder (llama, mistral, qwen2, internlm2: `config.json` plus
  `model.safetensors`, sharded safetensors with `model.safetensors.index.json`, or
  `pytorch_model*.bin`), read lazily with `safetensors.safe_open` or
  `torch.load(weights_only=True, mmap=True)` (the converter's `HFWeights`);
- a GGUF file (llama or qwen2 architecture), dequantized tensor by tensor with `gguf`.
Names are mapped to ours, fused wqkv split and q/k rows put from rotate-half RoPE order into our
interleaved pairs with the converter's layouts (`rethinktiny.convert.keys.MappedWeights`).

Both hand out one tensor (or one layer) at a time. Memory-mapped pages stay in the process's
resident set once touched, so after each layer the caller calls `release()`, which tells the
kernel to drop this process's mapped pages of the source files (they are re-read from the page
cache or disk if needed again). That is what keeps a 13 GB source under a few GB of RSS.
"""

from __future__ import annotations

import ctypes
import sys
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch

from rethinktiny.checkpoint import (InternEvoCheckpoint, find_step_folder, load_tensor_file, read_internevo_entry,
                                    read_model_config)
from rethinktiny.config import ModelConfig, from_internevo
from rethinktiny.convert.hf_config import (hf_layout, model_config_from_hf, read_hf_config, rope_base, scaled_rope,
                                           sliding_window)
from rethinktiny.convert.keys import INTERNEVO_INTERNLM2, Layout, MappedWeights
from rethinktiny.convert.safetensors_io import HFWeights
from rethinktiny.errors import UserError
from rethinktiny.model import parameter_shapes


# ---- HF config, leniently --------------------------------------------------------------------------

def hf_config_to_model_config(hf: dict[str, Any], source: str = "config.json") -> tuple[ModelConfig, list[str]]:
    """Our ModelConfig for a HF LLaMA-family `config.json`, plus notes on what was ignored.

    Conversion (`convert from-hf`) refuses scaled RoPE and sliding-window attention because the
    converted model must compute exactly what the source did. Inheriting only borrows weights for
    a student that is trained anew with plain RoPE and full attention, so here both are ignored
    with a note in the report instead.

    Args:
        hf: the parsed config.json.
        source: file name used in error messages.
    """
    notes, relaxed = [], dict(hf)
    scaled = scaled_rope(hf)
    if scaled is not None:
        notes.append(f"source rope scaling {scaled[1]} ignored: the target uses plain RoPE")
        relaxed["rope_scaling"] = None
        relaxed["rope_parameters"] = {"rope_type": "default", "rope_theta": rope_base(hf)}
    if sliding_window(hf) is not None:
        notes.append(f"source sliding_window={hf.get('sliding_window')} ignored: the target uses full attention")
        relaxed.update(sliding_window=None, use_sliding_window=False, layer_types=None)
    return model_config_from_hf(relaxed, source), notes


# ---- releasing mapped pages --------------------------------------------------------------------------

_MADV_DONTNEED = 4


def release_mapped_files(paths: list[Path]) -> int:
    """Drop this process's resident pages of read-only file mappings of `paths` (Linux).

    The mappings stay valid: a later access faults the pages back in from the page cache. Only
    file-backed mappings of exactly these files are touched, never anonymous memory. Returns the
    number of bytes advised (0 where unsupported).
    """
    if not sys.platform.startswith("linux"):
        return 0
    wanted = {str(p.resolve()) for p in paths}
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    advised = 0
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) < 6 or fields[5].strip() not in wanted:
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if libc.madvise(start, end - start, _MADV_DONTNEED) == 0:
                advised += end - start
    return advised


# ---- the common interface --------------------------------------------------------------------------

class Source(ABC):
    """A checkpoint to inherit from: config, names and lazily read tensors, all in our naming."""

    kind: str = "?"

    def __init__(self, path: Path, config: ModelConfig, files: list[Path], notes: list[str]) -> None:
        self.path = path
        self.config = config
        self.files = files
        self.notes = notes
        self.expected = parameter_shapes(config)

    @abstractmethod
    def _read(self, name: str) -> torch.Tensor:
        """The full tensor `name` (our naming, our layout), unchecked."""

    def tensor(self, name: str) -> torch.Tensor:
        """The full tensor `name`, checked against the shape the config implies."""
        if name not in self.expected:
            raise KeyError(name)
        t = self._read(name)
        if tuple(t.shape) != self.expected[name]:
            raise UserError(f"{self.path}: shape mismatch for {name}: checkpoint {tuple(t.shape)}, "
                            f"config {self.expected[name]}")
        return t

    def layer(self, index: int) -> dict[str, torch.Tensor]:
        """All tensors of decoder layer `index`, keyed by their name inside the layer."""
        prefix = f"layers.{index}."
        return {k[len(prefix):]: self.tensor(k) for k in self.expected if k.startswith(prefix)}

    def release(self) -> int:
        """Drop resident pages of the source files (call after finishing a layer)."""
        return release_mapped_files(self.files)

    @property
    def dtype(self) -> torch.dtype:
        return self.tensor("norm.weight").dtype

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files)

    def describe(self) -> dict[str, Any]:
        return {"path": str(self.path), "kind": self.kind, "config": self.config.to_dict(),
                "dtype": str(self.dtype).replace("torch.", ""), "bytes": self.size_bytes()}

    def _check_names(self, names: set[str], where: str) -> None:
        unknown = sorted(names - set(self.expected))
        if unknown:
            raise UserError(f"{where}: unknown architecture: parameter {unknown[0]} is not a LLaMA/PanGu-π "
                            f"name for this config ({len(unknown)} such names)")
        missing = sorted(set(self.expected) - names)
        if missing:
            raise UserError(f"{where}: missing key {missing[0]} ({len(missing)} missing in total)")


class InternEvoSource(Source):
    """An InternEvo checkpoint folder (step folder or its parent), any tp/pp layout.

    Args:
        path: the folder.
        config: the model shape when the folder has no model_config.json / model_config.pt.
    """

    kind = "internevo"

    def __init__(self, path: str | Path, config: ModelConfig | None = None) -> None:
        folder = find_step_folder(path)
        config = config or read_model_config(folder, required=False)
        if config is None:
            raise UserError(f"{folder}: no model_config.json or model_config.pt; pass --src-config")
        self.ckpt = InternEvoCheckpoint(folder, config=config)
        files = sorted(p for p in folder.iterdir() if p.name.startswith("model_tp") and p.suffix == ".pt")
        super().__init__(folder, config, files, [])
        if config.tie_embeddings and "output.weight" not in self.ckpt:
            self.expected.pop("output.weight")  # tied models may save only the embedding
        self._check_names(set(self.ckpt.keys()), str(folder))

    def _read(self, name: str) -> torch.Tensor:
        return self.ckpt.tensor(name)

    def tensor(self, name: str) -> torch.Tensor:
        if name == "output.weight" and "output.weight" not in self.expected:
            return super().tensor("tok_embeddings.weight")
        return super().tensor(name)


class MappedSource(Source):
    """A source whose tensors come through the converter's `MappedWeights` (foreign names)."""

    def __init__(self, path: Path, mapped: MappedWeights, files: list[Path], notes: list[str]) -> None:
        super().__init__(path, mapped.cfg, files, notes)
        self.mapped = mapped
        self._check_names(set(mapped.names()), str(path))

    def _read(self, name: str) -> torch.Tensor:
        return self.mapped.tensor(name)


class HFSource(MappedSource):
    """A Hugging Face LLaMA-family folder (llama, mistral, qwen2, internlm2; safetensors or .bin
    shards, GQA), read through the converter's lazy `HFWeights` and the folder's key layout.

    Args:
        path: folder with config.json and the weight files.
    """

    kind = "hf"

    def __init__(self, path: str | Path) -> None:
        folder = Path(path)
        data = read_hf_config(folder)
        config, notes = hf_config_to_model_config(data, str(folder / "config.json"))
        weights = HFWeights(folder)
        mapped = MappedWeights(weights, hf_layout(data, str(folder / "config.json")), config, str(folder))
        super().__init__(folder, mapped, weights.files, notes)


class InternLM2Source(MappedSource):
    """An InternEvo INTERNLM2 / INTERNLM2_PUBLIC checkpoint (fused `attention.wqkv`, any tp/pp).

    Its q/k rows are in HF's rotate_half order unless the model entry says `adapt_hf=False`
    (InternEvo 0.4.9) or `qk_interleaved=True` (0.5.x); both default to rotate_half.

    Args:
        path: step folder or its parent.
        config: the model shape when the folder has no model_config.pt (the rotary order is then
            InternEvo's default, rotate_half).
    """

    kind = "internevo-internlm2"

    def __init__(self, path: str | Path, config: ModelConfig | None = None) -> None:
        folder = find_step_folder(path)
        notes = []
        entry = read_internevo_entry(folder)
        if config is None and entry is None:
            raise UserError(f"{folder}: INTERNLM2 checkpoint without model_config.pt; pass --src-config")
        entry = dict(entry or {})
        rotate_half = bool(entry.pop("adapt_hf", True)) and not bool(entry.pop("qk_interleaved", False))
        _check_internlm2_entry(entry, str(folder / "model_config.pt"))
        if entry.pop("use_dynamic_ntk_rope", False):
            notes.append("source dynamic NTK RoPE ignored: the target uses plain RoPE")
        config = config or from_internevo(entry, source=str(folder / "model_config.pt"))
        ckpt = InternEvoCheckpoint(folder, config=config)
        layout = Layout("internevo internlm2", INTERNEVO_INTERNLM2, rotate_half=rotate_half, ignored_suffixes=())
        files = sorted(p for p in folder.iterdir() if p.name.startswith("model_tp") and p.suffix == ".pt")
        super().__init__(folder, MappedWeights(ckpt, layout, config, str(folder)), files, notes)


def _check_internlm2_entry(entry: dict[str, Any], source: str) -> None:
    """Refuse INTERNLM2 options that change the function in ways our model cannot follow."""
    for key, allowed in (("mlp_layer_fusion", False), ("norm_head", False), ("apply_post_layer_norm", False),
                         ("norm_type", "rmsnorm"), ("use_swiglu", True), ("is_reward", False)):
        value = entry.pop(key, allowed)
        if value != allowed:
            raise UserError(f"{source}: INTERNLM2 with {key}={value!r} is not supported (only {key}={allowed!r})")


def is_internlm2_checkpoint(folder: Path) -> bool:
    """InternEvo's INTERNLM2 models fuse q/k/v into `attention.wqkv` (LLAMA2 and ours do not)."""
    first = sorted(p for p in folder.iterdir() if p.name.startswith("model_tp") and p.suffix == ".pt")[0]
    return any(".attention.wqkv." in name for name in load_tensor_file(first))


class GGUFSource(MappedSource):
    """A GGUF file (llama or qwen2 architecture), tensors dequantized one at a time.

    Args:
        path: the .gguf file.
    """

    kind = "gguf"

    def __init__(self, path: str | Path) -> None:
        from rethinktiny.convert.gguf_read import open_gguf

        path = Path(path)
        mapped, notes = open_gguf(path, strict=False)
        super().__init__(path, mapped, [path], notes)
        self._dtype = mapped.weights.common_dtype()

    def _read(self, name: str) -> torch.Tensor:
        return super()._read(name).to(self._dtype)  # one dtype, as the other sources have


def open_source(path: str | Path, config: ModelConfig | None = None) -> Source:
    """Open an InternEvo checkpoint folder, a Hugging Face folder (told apart by config.json) or a
    GGUF file.

    Args:
        path: the source folder or .gguf file.
        config: shape of an InternEvo checkpoint that carries no model config file.
    """
    path = Path(path)
    if path.suffix == ".gguf":
        return GGUFSource(path)
    if not path.is_dir():
        raise UserError(f"{path}: source folder not found")
    if (path / "config.json").exists():
        return HFSource(path)
    if is_internlm2_checkpoint(find_step_folder(path)):
        return InternLM2Source(path, config)
    return InternEvoSource(path, config)
