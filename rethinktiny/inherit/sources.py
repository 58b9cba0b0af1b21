"""Checkpoints to inherit from, behind one lazy interface with our (InternEvo LLAMA2) names.

Two kinds of source:
- an InternEvo checkpoint folder (our model types or InternEvo LLAMA2, any tp/pp layout), read
  through `rethinktiny.checkpoint.InternEvoCheckpoint`;
- a Hugging Face LLaMA-family folder (`config.json` plus `model.safetensors`, sharded safetensors
  with `model.safetensors.index.json`, or `pytorch_model*.bin`), read lazily with
  `safetensors.safe_open` or `torch.load(weights_only=True, mmap=True)` (the converter's
  `HFWeights`). Names are mapped to ours and the q/k rows permuted from HF's rotate-half RoPE
  layout to our interleaved pairs with the converter's key table (`rethinktiny.convert.keys`).

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

from rethinktiny.checkpoint import InternEvoCheckpoint, find_step_folder, read_model_config
from rethinktiny.config import ModelConfig
from rethinktiny.convert.hf_config import model_config_from_hf, read_hf_config, rope_base, scaled_rope
from rethinktiny.convert.keys import IGNORED_HF_SUFFIXES, half_to_interleaved, hf_to_ours, rotary_heads
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
    if hf.get("sliding_window"):
        notes.append(f"source sliding_window={hf['sliding_window']} ignored: the target uses full attention")
        relaxed["sliding_window"] = None
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


class HFSource(Source):
    """A Hugging Face LLaMA-family folder (safetensors or .bin shards, GQA), read through the
    converter's lazy `HFWeights`, names and q/k rows mapped with its key table.

    Args:
        path: folder with config.json and the weight files.
    """

    kind = "hf"

    def __init__(self, path: str | Path) -> None:
        folder = Path(path)
        config, notes = hf_config_to_model_config(read_hf_config(folder), str(folder / "config.json"))
        self.weights = HFWeights(folder)
        super().__init__(folder, config, self.weights.files, notes)
        self._hf_names: dict[str, str] = {}  # our name -> HF name
        for hf_name in self.weights.keys():
            if hf_name.endswith(IGNORED_HF_SUFFIXES):
                continue
            ours = hf_to_ours(hf_name)
            if ours is None:
                raise UserError(f"{self.weights.file_of(hf_name)}: unknown architecture: parameter {hf_name} "
                                "has no LLaMA counterpart")
            self._hf_names[ours] = hf_name
        if config.tie_embeddings and "output.weight" not in self._hf_names:
            self._hf_names["output.weight"] = "model.embed_tokens.weight"
        self._check_names(set(self._hf_names), str(folder))

    def _read(self, name: str) -> torch.Tensor:
        t = self.weights.tensor(self._hf_names[name])
        heads = rotary_heads(name, self.config.num_attention_heads, self.config.num_kv_heads)
        return t if heads is None else half_to_interleaved(t, heads)


def open_source(path: str | Path, config: ModelConfig | None = None) -> Source:
    """Open an InternEvo checkpoint folder or a Hugging Face folder (told apart by config.json).

    Args:
        path: the source folder.
        config: shape of an InternEvo checkpoint that carries no model config file.
    """
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: source folder not found")
    if (path / "config.json").exists():
        return HFSource(path)
    return InternEvoSource(path, config)
