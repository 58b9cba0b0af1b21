"""Safetensors shards written one tensor at a time, and HF weight files read one tensor at a time.

`safetensors.torch.save_file` needs a whole shard in memory. An export instead plans the shards
from shapes alone, writes each file's header first and then streams tensors into it, so peak
memory is one tensor (plus what the source maps), not one shard. The format is the documented
one: an 8-byte little-endian header length, a JSON header (padded with spaces to 8 bytes) giving
dtype, shape and [begin, end) byte offsets per tensor, then the raw little-endian bytes.
"""

from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

from rethinktiny.artifacts import write_json
from rethinktiny.checkpoint import load_tensor_file
from rethinktiny.errors import UserError

SAFETENSORS_DTYPES: dict[torch.dtype, str] = {
    torch.float64: "F64", torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}
INDEX_NAME = "model.safetensors.index.json"
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(text: str | int) -> int:
    """`"5GB"` -> 5e9, `"512MiB"` -> 512 * 2**20, `1000` -> 1000 (HF's `max_shard_size` spelling)."""
    if isinstance(text, int):
        value = text
    else:
        match = _SIZE_RE.match(str(text))
        if match is None:
            raise UserError(f"--max-shard-size: cannot read {text!r} (use e.g. 5GB, 500MB, 2GiB)")
        value = int(float(match.group(1)) * _UNITS[(match.group(2) or "B").upper()])
    if value <= 0:
        raise UserError(f"--max-shard-size: must be positive, got {text!r}")
    return value


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and dtype of a tensor to be written, known before its data exists."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count * torch.empty((), dtype=self.dtype).element_size()


def plan_shards(specs: list[TensorSpec], max_bytes: int) -> list[list[TensorSpec]]:
    """Split `specs` (in order) into shards of at most `max_bytes` (a larger tensor gets its own)."""
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        if shards[-1] and size + spec.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += spec.nbytes
    return shards if shards[0] else []


def _header_bytes(specs: list[TensorSpec], metadata: dict[str, str]) -> bytes:
    header: dict = {"__metadata__": metadata}
    offset = 0
    for spec in specs:
        header[spec.name] = {"dtype": SAFETENSORS_DTYPES[spec.dtype], "shape": list(spec.shape),
                             "data_offsets": [offset, offset + spec.nbytes]}
        offset += spec.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    return struct.pack("<Q", len(raw)) + raw


def write_streamed_safetensors(path: Path, specs: list[TensorSpec],
                               produce: Callable[[TensorSpec], torch.Tensor], on_tensor=None) -> None:
    """Write one safetensors file, asking `produce(spec)` for each tensor in turn.

    Args:
        path: file to write.
        specs: the tensors, in file order.
        produce: returns the tensor for a spec; its shape and dtype must match the spec.
        on_tensor: optional callback per written tensor (progress bars).
    """
    with open(path, "wb") as f:
        f.write(_header_bytes(specs, {"format": "pt"}))
        for spec in specs:
            tensor = produce(spec)
            if tuple(tensor.shape) != spec.shape or tensor.dtype != spec.dtype:
                raise UserError(f"{spec.name}: got {tuple(tensor.shape)} {tensor.dtype}, "
                                f"expected {spec.shape} {spec.dtype}")
            data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
            f.write(memoryview(data.numpy()))
            del tensor, data
            if on_tensor is not None:
                on_tensor(spec)
        f.flush()
        os.fsync(f.fileno())


def shard_file_names(count: int) -> list[str]:
    """HF's shard naming: model-00001-of-00003.safetensors, ..."""
    return [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


def write_sharded(folder: Path, specs: list[TensorSpec], produce: Callable[[TensorSpec], torch.Tensor],
                  max_bytes: int, on_tensor=None) -> dict:
    """Write `specs` as HF safetensors shards plus `model.safetensors.index.json`; returns the index."""
    shards = plan_shards(specs, max_bytes)
    names = shard_file_names(len(shards))
    weight_map: dict[str, str] = {}
    for file_name, shard in zip(names, shards):
        write_streamed_safetensors(folder / file_name, shard, produce, on_tensor)
        weight_map.update({spec.name: file_name for spec in shard})
    index = {"metadata": {"total_size": sum(s.nbytes for s in specs)}, "weight_map": weight_map}
    write_json(folder / INDEX_NAME, index)
    return index


class HFWeights:
    """Lazy tensors of an HF model folder: `model.safetensors`, sharded safetensors with an index,
    or `pytorch_model.bin` (loaded weights-only, memory-mapped).

    Args:
        folder: the HF model folder.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._open: dict[Path, object] = {}  # before listing names: a .bin is opened to list them
        self._files = self._weight_files()
        self._where: dict[str, Path] = {}
        for path in self._files:
            for name in self._names_in(path):
                self._where[name] = path

    def _weight_files(self) -> list[Path]:
        for index_name in (INDEX_NAME, "pytorch_model.bin.index.json"):
            index = self.folder / index_name
            if index.is_file():
                try:
                    weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
                except (json.JSONDecodeError, KeyError, TypeError) as err:
                    raise UserError(f"{index}: malformed index ({type(err).__name__}: {err})") from None
                files = sorted({self.folder / f for f in weight_map.values()})
                missing = [f for f in files if not f.is_file()]
                if missing:
                    raise UserError(f"{index}: lists {missing[0].name}, which does not exist")
                return files
        for single in ("model.safetensors", "pytorch_model.bin"):
            if (self.folder / single).is_file():
                return [self.folder / single]
        raise UserError(f"{self.folder}: no model weights (model.safetensors, {INDEX_NAME} or pytorch_model.bin)")

    def _names_in(self, path: Path) -> list[str]:
        if path.suffix == ".safetensors":
            from safetensors import SafetensorError, safe_open

            try:
                with safe_open(str(path), framework="pt") as handle:
                    return list(handle.keys())
            except (SafetensorError, OSError) as err:
                raise UserError(f"{path}: not a readable safetensors file ({err})") from None
        return list(self._handle(path).keys())

    def _handle(self, path: Path):
        if path not in self._open:
            if path.suffix == ".safetensors":
                from safetensors import safe_open

                self._open[path] = safe_open(str(path), framework="pt")
            else:
                self._open[path] = load_tensor_file(path)
        return self._open[path]

    @property
    def files(self) -> list[Path]:
        """The weight files, in name order (what a caller may release from memory)."""
        return list(self._files)

    def file_of(self, name: str) -> Path:
        """The file holding tensor `name`."""
        return self._where[name]

    def keys(self) -> list[str]:
        return list(self._where)

    def tensor(self, name: str) -> torch.Tensor:
        handle = self._handle(self._where[name])
        return handle.get_tensor(name) if hasattr(handle, "get_tensor") else handle[name]

    def items(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name in self.keys():
            yield name, self.tensor(name)
