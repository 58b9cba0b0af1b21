"""Checkpoints to inherit from, behind one lazy interface with our (InternEvo LLAMA2) names.

Two kinds of source:
- an InternEvo checkpoint folder (our model types or InternEvo LLAMA2, any tp/pp layout), read
  through `rethinktiny.checkpoint.InternEvoCheckpoint`;
- a Hugging Face LLaMA-family folder (`config.json` plus `model.safetensors`, sharded safetensors
  with `model.safetensors.index.json`, or `pytorch_model*.bin`), read lazily with
  `safetensors.safe_open` or `torch.load(weights_only=True, mmap=True)`. Names are mapped to
  ours and the q/k rows permuted from HF's rotate-half RoPE layout to our interleaved pairs.

Both hand out one tensor (or one layer) at a time. Memory-mapped pages stay in the process's
resident set once touched, so after each layer the caller calls `release()`, which tells the
kernel to drop this process's mapped pages of the source files (they are re-read from the page
cache or disk if needed again). That is what keeps a 13 GB source under a few GB of RSS.
"""

from __future__ import annotations

import ctypes
import json
import re
import sys
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch

from rethinktiny.checkpoint import (LAYER_RE, InternEvoCheckpoint, find_step_folder, load_tensor_file,
                                    read_model_config)
from rethinktiny.config import ModelConfig
from rethinktiny.errors import UserError

HF_ARCHITECTURES = ("llama", "mistral")

# HF name (inside `model.layers.{i}.`) -> our name (inside `layers.{i}.`).
HF_LAYER_NAMES = {
    "self_attn.q_proj": "attention.wq",
    "self_attn.k_proj": "attention.wk",
    "self_attn.v_proj": "attention.wv",
    "self_attn.o_proj": "attention.wo",
    "mlp.gate_proj": "feed_forward.w1",
    "mlp.up_proj": "feed_forward.w3",
    "mlp.down_proj": "feed_forward.w2",
    "input_layernorm": "attention_norm",
    "post_attention_layernorm": "ffn_norm",
}
HF_GLOBAL_NAMES = {
    "model.embed_tokens.weight": "tok_embeddings.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "output.weight",
}
# Buffers some older HF checkpoints saved; they are recomputed, never weights.
HF_IGNORED_RE = re.compile(r"^model\.(layers\.\d+\.self_attn\.)?rotary_emb\.inv_freq$")
HF_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)\.(weight|bias)$")


# ---- HF <-> our names and the rotary permute (public: convert/ needs the same) ---------------------

def hf_to_internevo_name(name: str) -> str | None:
    """Our parameter name for a Hugging Face LLaMA name, or None when it has no counterpart.

    Args:
        name: e.g. `model.layers.3.self_attn.q_proj.weight` -> `layers.3.attention.wq.weight`.
    """
    if name in HF_GLOBAL_NAMES:
        return HF_GLOBAL_NAMES[name]
    m = HF_LAYER_RE.match(name)
    if m and m.group(2) in HF_LAYER_NAMES:
        return f"layers.{m.group(1)}.{HF_LAYER_NAMES[m.group(2)]}.{m.group(3)}"
    return None


def internevo_to_hf_name(name: str) -> str | None:
    """Inverse of `hf_to_internevo_name` (None for names HF LLaMA does not have)."""
    for hf, ours in HF_GLOBAL_NAMES.items():
        if name == ours:
            return hf
    m = LAYER_RE.match(name)
    if not m:
        return None
    inner, _, kind = m.group(2).rpartition(".")
    for hf, ours in HF_LAYER_NAMES.items():
        if inner == ours:
            return f"model.layers.{m.group(1)}.{hf}.{kind}"
    return None


def permute_hf_to_interleaved(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """q/k projection rows (or bias) from HF's rotate-half layout to interleaved RoPE pairs.

    HF rotates channel i with channel i + head_dim/2 of each head; InternEvo (and Meta's
    original LLaMA) rotate channels 2i and 2i+1. Our row 2i is HF row i, our row 2i+1 is HF row
    i + head_dim/2 (the inverse of the permute in HF's convert_llama_weights_to_hf.py).

    Args:
        w: [n_heads * head_dim, ...] weight or [n_heads * head_dim] bias.
        n_heads: query heads for wq, key/value heads for wk.
    """
    rows = w.shape[0]
    head_dim = rows // n_heads
    return w.reshape(n_heads, 2, head_dim // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def permute_interleaved_to_hf(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Inverse of `permute_hf_to_interleaved` (our layout -> HF rotate-half layout)."""
    rows = w.shape[0]
    head_dim = rows // n_heads
    return w.reshape(n_heads, head_dim // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def hf_config_to_model_config(hf: dict[str, Any], source: str = "config.json") -> tuple[ModelConfig, list[str]]:
    """Our ModelConfig for a HF LLaMA-family `config.json`, plus notes on what was ignored.

    Args:
        hf: the parsed config.json.
        source: file name used in error messages.
    """
    model_type = hf.get("model_type")
    if model_type not in HF_ARCHITECTURES:
        raise UserError(f"{source}: unknown architecture model_type={model_type!r} "
                        f"(supported Hugging Face families: {', '.join(HF_ARCHITECTURES)})")
    if hf.get("hidden_act", "silu") != "silu" or hf.get("mlp_bias", False):
        raise UserError(f"{source}: only SiLU-gated MLPs without bias are supported "
                        f"(hidden_act={hf.get('hidden_act')!r}, mlp_bias={hf.get('mlp_bias')!r})")
    try:
        heads = int(hf["num_attention_heads"])
        hidden = int(hf["hidden_size"])
        if hf.get("head_dim") not in (None, hidden // heads):
            raise UserError(f"{source}: head_dim {hf['head_dim']} != hidden_size / num_attention_heads; "
                            "decoupled head sizes are not supported")
        rope = hf.get("rope_parameters") or {}
        cfg = ModelConfig(
            hidden_size=hidden, num_layers=int(hf["num_hidden_layers"]), num_attention_heads=heads,
            num_kv_heads=int(hf.get("num_key_value_heads") or heads),
            intermediate_size=int(hf["intermediate_size"]), vocab_size=int(hf["vocab_size"]),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
            attention_bias=bool(hf.get("attention_bias", False)), name=f"hf-{model_type}")
    except KeyError as err:
        raise UserError(f"{source}: missing key {err.args[0]!r}") from None
    notes = []
    scaling = hf.get("rope_scaling") or ({} if rope.get("rope_type", "default") == "default" else rope)
    if scaling:
        notes.append(f"source rope scaling {scaling} ignored: the target uses plain RoPE")
    if hf.get("sliding_window"):
        notes.append(f"source sliding_window={hf['sliding_window']} ignored: the target uses full attention")
    return cfg, notes


# ---- expected names and shapes -------------------------------------------------------------------

def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter name of our model for `cfg` with its shape (built on the meta device)."""
    from rethinktiny.model import PanGuPi

    with torch.device("meta"):
        model = PanGuPi(cfg)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


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
        self.expected = expected_shapes(config)

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
    """A Hugging Face LLaMA-family folder (safetensors or .bin shards, GQA).

    Args:
        path: folder with config.json and the weight files.
    """

    kind = "hf"

    def __init__(self, path: str | Path) -> None:
        folder = Path(path)
        config_path = folder / "config.json"
        try:
            hf_config = json.loads(config_path.read_text())
        except json.JSONDecodeError as err:
            raise UserError(f"{config_path}: not valid JSON ({err.msg})") from None
        config, notes = hf_config_to_model_config(hf_config, str(config_path))
        self._weight_map = _hf_weight_map(folder)  # HF name -> file
        files = sorted(set(self._weight_map.values()))
        super().__init__(folder, config, files, notes)
        self._handles: dict[Path, Any] = {}
        self._hf_names: dict[str, str] = {}
        for hf_name in self._weight_map:
            ours = hf_to_internevo_name(hf_name)
            if ours is None and not HF_IGNORED_RE.match(hf_name):
                raise UserError(f"{self._weight_map[hf_name]}: unknown architecture: parameter {hf_name} "
                                "has no LLaMA counterpart")
            if ours is not None:
                self._hf_names[ours] = hf_name
        if config.tie_embeddings and "output.weight" not in self._hf_names:
            self._hf_names["output.weight"] = "model.embed_tokens.weight"
        self._check_names(set(self._hf_names), str(folder))

    def _open(self, file: Path) -> Any:
        if file not in self._handles:
            if file.suffix == ".safetensors":
                from safetensors import safe_open

                try:
                    self._handles[file] = safe_open(str(file), framework="pt")
                except Exception as err:  # safetensors raises its own SafetensorError type
                    raise UserError(f"{file}: cannot open as safetensors ({err})") from None
            else:
                self._handles[file] = load_tensor_file(file)
        return self._handles[file]

    def _read(self, name: str) -> torch.Tensor:
        hf_name = self._hf_names[name]
        handle = self._open(self._weight_map[hf_name])
        t = handle[hf_name] if isinstance(handle, dict) else handle.get_tensor(hf_name)
        if name.endswith(("attention.wq.weight", "attention.wq.bias")):
            t = permute_hf_to_interleaved(t, self.config.num_attention_heads)
        elif name.endswith(("attention.wk.weight", "attention.wk.bias")):
            t = permute_hf_to_interleaved(t, self.config.num_kv_heads)
        return t


def _hf_weight_map(folder: Path) -> dict[str, Path]:
    """HF parameter name -> the file holding it, from the index or the single weight file."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index_path = folder / index_name
        if index_path.exists():
            try:
                weight_map = json.loads(index_path.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise UserError(f"{index_path}: no valid weight_map ({err})") from None
            files = {name: folder / file for name, file in weight_map.items()}
            for file in sorted(set(files.values())):
                if not file.exists():
                    raise UserError(f"{index_path}: missing shard {file.name}")
            return files
    for single in ("model.safetensors", "pytorch_model.bin"):
        file = folder / single
        if file.exists():
            return {name: file for name in _names_in_file(file)}
    raise UserError(f"{folder}: no model.safetensors, pytorch_model.bin or their index files")


def _names_in_file(file: Path) -> list[str]:
    if file.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(file), framework="pt") as f:
                return list(f.keys())
        except Exception as err:  # SafetensorError is not importable by a stable name
            raise UserError(f"{file}: cannot open as safetensors ({err})") from None
    return list(load_tensor_file(file))


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
