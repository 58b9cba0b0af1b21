"""InternEvo checkpoint folders, read and written without InternEvo.

InternEvo saves one file of model weights per tensor-parallel (tp) and pipeline-parallel (pp)
rank: `<save_ckpt_folder>/<step>/model_tp{t}_pp{p}.pt`. `InternEvoCheckpoint` opens such a
folder (or its parent: the latest step is taken), memory-maps the shards, and hands out merged
full tensors one name at a time, so a 7B checkpoint can be read layer by layer:
- pp shards hold `layers.{local}` indices; the global index adds the layers of earlier stages;
- tp shards split column-parallel weights (wq/wk/wv/w1/w3/output and their biases) along dim 0
  and row-parallel weights (wo/w2) along dim 1; norms and row-parallel biases are replicated; the
  embedding is split along the hidden dim when InternEvo's `embed_split_hidden` was on, else it is
  replicated (recognised by its width).

The model shape comes from `model_config.json` (written by this project next to every checkpoint
it saves) or from InternEvo's own `model_config.pt`, read with a restricted unpickler that only
admits plain containers and torch dtypes.

RoPE layout: both files record how the q/k rows of each head are ordered (`qk_interleaved`, see
`read_qk_interleaved`). Tensors are always handed out in our layout (interleaved pairs): wq/wk
rows of a rotate-half checkpoint (the newest InternEvo's LLAMA2 default) are reordered on read.
"""

from __future__ import annotations

import json
import pickle
import re
import sys
import zipfile
from pathlib import Path
from typing import Any, Iterator

import torch

from rethinktiny.artifacts import write_json
from rethinktiny.config import ModelConfig, from_internevo
from rethinktiny.errors import UserError
from rethinktiny.rotary_layout import ROTARY_KEY, ROTARY_QUERY, half_to_interleaved, is_rotary_buffer, rotary_heads

SHARD_RE = re.compile(r"^model_tp(\d+)_pp(\d+)\.pt$")
LAYER_RE = re.compile(r"^layers\.(\d+)\.(.+)$")
# attention.wqkv: InternLM2's fused q/k/v, split by whole kv groups (`InternEvo` chunks it along dim 0)
COLUMN_PARALLEL = ("attention.wq.", "attention.wk.", "attention.wv.", "attention.wqkv.", "feed_forward.w1.",
                   "feed_forward.w3.")
ROW_PARALLEL_WEIGHTS = ("attention.wo.weight", "feed_forward.w2.weight")
MODEL_CONFIG_JSON = "model_config.json"


def save_complete(step_folder: Path) -> bool:
    """Whether InternEvo finished saving this step folder: its checkpoint manager writes
    `<step>.step` last, after every rank's files and a barrier (`CheckpointManager.save_checkpoint`;
    its own auto-resume looks for the same file, `query_latest_snapshot_step_local`)."""
    return (step_folder / f"{step_folder.name}.step").is_file()


def find_step_folder(path: str | Path) -> Path:
    """`path` itself when it holds model shards, else its latest complete numeric step sub-folder.

    Given a save folder, a step folder without InternEvo's completion marker (`save_complete`) is
    a save interrupted midway and is passed over for the newest one that has it. Folders written by
    tools that put no marker (the seed's, tests') are taken newest first when none of the step
    folders has one.
    """
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: checkpoint folder not found")
    if any(SHARD_RE.match(p.name) for p in path.iterdir()):
        return path
    steps = [p for p in path.iterdir() if p.is_dir() and p.name.isdigit()
             and any(SHARD_RE.match(q.name) for q in p.iterdir())]
    if not steps:
        raise UserError(f"{path}: no model_tp*_pp*.pt files here or in a numeric step sub-folder")
    complete = [p for p in steps if save_complete(p)]
    newest = max(complete or steps, key=lambda p: int(p.name))
    skipped = sorted((p.name for p in steps if int(p.name) > int(newest.name)), key=int)
    if skipped:
        print(f"warning: {path}: step folder(s) {', '.join(skipped)} have no <step>.step marker (a save that "
              f"did not finish); using step {newest.name}", file=sys.stderr)
    return newest


def _shard_grid(folder: Path) -> dict[tuple[int, int], Path]:
    shards = {}
    for p in folder.iterdir():
        m = SHARD_RE.match(p.name)
        if m:
            shards[(int(m.group(1)), int(m.group(2)))] = p
    tp_size = 1 + max(t for t, _ in shards)
    pp_size = 1 + max(p for _, p in shards)
    for t in range(tp_size):
        for p in range(pp_size):
            if (t, p) not in shards:
                raise UserError(f"{folder}: missing shard model_tp{t}_pp{p}.pt "
                                f"(found tp size {tp_size}, pp size {pp_size})")
    return shards


def load_tensor_file(path: Path) -> dict[str, torch.Tensor]:
    """A torch-saved state dict, memory-mapped and with weights_only=True (never arbitrary pickles)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile) as err:
        raise UserError(f"{path}: cannot load as a weights-only torch state dict ({err})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path}: expected a dict of tensors")
    return state


class InternEvoCheckpoint:
    """Lazy, merged view of an InternEvo model checkpoint (any tp/pp layout).

    Args:
        path: a step folder, or a save folder whose latest step is used.
        config: the model shape; read from the folder when omitted.
    """

    def __init__(self, path: str | Path, config: ModelConfig | None = None) -> None:
        self.folder = find_step_folder(path)
        shards = _shard_grid(self.folder)
        self.tp_size = 1 + max(t for t, _ in shards)
        self.pp_size = 1 + max(p for _, p in shards)
        self._shards = {key: load_tensor_file(p) for key, p in sorted(shards.items())}
        self._layer_offsets = self._pp_layer_offsets()
        self._index = self._build_index()
        self.config = config if config is not None else read_model_config(self.folder, required=False)
        self.qk_interleaved = read_qk_interleaved(self.folder)

    def _pp_layer_offsets(self) -> list[int]:
        offsets, total = [], 0
        for p in range(self.pp_size):
            offsets.append(total)
            local = {int(m.group(1)) for k in self._shards[(0, p)] if (m := LAYER_RE.match(k))}
            total += len(local)
        return offsets

    def _build_index(self) -> dict[str, tuple[int, str]]:
        """global name -> (pp rank, local name)."""
        index = {}
        for p in range(self.pp_size):
            for local in self._shards[(0, p)]:
                m = LAYER_RE.match(local)
                name = f"layers.{int(m.group(1)) + self._layer_offsets[p]}.{m.group(2)}" if m else local
                if name in index:
                    raise UserError(f"{self.folder}: {name} appears in more than one pipeline stage")
                index[name] = (p, local)
        return index

    @property
    def num_layers(self) -> int:
        return len({int(m.group(1)) for k in self._index if (m := LAYER_RE.match(k))})

    def keys(self) -> list[str]:
        return list(self._index)

    def __contains__(self, name: str) -> bool:
        return name in self._index

    def tensor(self, name: str) -> torch.Tensor:
        """The full (tp-merged) tensor `name`, with global layer numbering."""
        if name not in self._index:
            raise KeyError(name)
        p, local = self._index[name]
        parts = [self._shards[(t, p)][local] for t in range(self.tp_size)]
        merged = merge_tp_parts(name, parts, self._hidden_size())
        return merged if self.qk_interleaved else self._rotate_half_to_ours(name, merged)

    def _rotate_half_to_ours(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        if not name.endswith(ROTARY_QUERY + ROTARY_KEY):
            return tensor
        if self.config is None:
            raise UserError(f"{self.folder}: {QK_LAYOUT_KEY}=False (rotate-half q/k rows) and no model config "
                            "gives the head counts to reorder them; pass the model config")
        heads = rotary_heads(name, self.config.num_attention_heads, self.config.num_kv_heads)
        return half_to_interleaved(tensor, heads)

    def _hidden_size(self) -> int:
        if self.config is not None:
            return self.config.hidden_size
        return self.tensor("norm.weight").shape[0] if "norm.weight" in self._index else -1

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: self.tensor(name) for name in self.keys()}

    def layer(self, index: int) -> dict[str, torch.Tensor]:
        """All tensors of one decoder layer, keyed by their name inside the layer."""
        prefix = f"layers.{index}."
        return {k[len(prefix):]: self.tensor(k) for k in self._index if k.startswith(prefix)}

    def items(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name in self.keys():
            yield name, self.tensor(name)


def merge_tp_parts(name: str, parts: list[torch.Tensor], hidden_size: int) -> torch.Tensor:
    """Concatenate one tensor's tensor-parallel parts along the dimension InternEvo split."""
    if len(parts) == 1:
        return parts[0]
    layer_name = LAYER_RE.match(name).group(2) if LAYER_RE.match(name) else name
    if layer_name.startswith(COLUMN_PARALLEL) or name == "output.weight":
        return torch.cat(parts, dim=0)
    if layer_name in ROW_PARALLEL_WEIGHTS:
        return torch.cat(parts, dim=1)
    if name == "tok_embeddings.weight" and parts[0].shape[1] != hidden_size:
        return torch.cat(parts, dim=1)  # embed_split_hidden=True
    for t, part in enumerate(parts[1:], start=1):  # replicated: every rank must agree
        if part.shape != parts[0].shape:
            raise UserError(f"{name}: tp rank {t} has shape {tuple(part.shape)}, rank 0 {tuple(parts[0].shape)}")
    return parts[0]


# ---- model config ---------------------------------------------------------------------------------

class _ConfigUnpickler(pickle.Unpickler):
    """Unpickles InternEvo's `model_config.pt` (a Config dict that may hold torch dtypes) and
    nothing else: any other class reference is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("internlm.core.context") and name == "Config":
            return dict
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module == "collections" and name == "OrderedDict":
            return dict
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("model_config.pt unexpectedly holds tensors")


def _read_internevo_model_config(path: Path) -> dict[str, Any]:
    with zipfile.ZipFile(path) as archive:
        pkl_names = [n for n in archive.namelist() if n.endswith("data.pkl")]
        if not pkl_names:
            raise UserError(f"{path}: not a torch-saved file")
        with archive.open(pkl_names[0]) as f:
            return dict(_ConfigUnpickler(f).load())


def read_internevo_entry(folder: str | Path) -> dict[str, Any] | None:
    """The raw `model=dict(...)` InternEvo saved as `model_config.pt` in `folder`, or None."""
    path = Path(folder) / "model_config.pt"
    if not path.exists():
        return None
    try:
        return _read_internevo_model_config(path)
    except (pickle.UnpicklingError, zipfile.BadZipFile) as err:
        raise UserError(f"{path}: cannot read ({err})") from None


# The q/k rotary layout of a checkpoint, in InternEvo's own key: True = channels (2i, 2i+1) of a
# head are a rotated pair (ours; InternEvo 0.4.x's LLAMA2/InternLM), False = (i, i + head_dim/2)
# (HF's rotate_half; the newest InternEvo's default). InternEvo 0.4.x spelled False `adapt_hf=True`.
QK_LAYOUT_KEY = "qk_interleaved"


def qk_interleaved_of(entry: dict[str, Any], source: str) -> bool:
    """The layout a saved `model=dict(...)` (or our model_config.json) records; neither key: True
    (what InternEvo 0.4.x, which saved neither, computed)."""
    value = entry.get(QK_LAYOUT_KEY)
    if value is not None and not isinstance(value, bool):
        raise UserError(f"{source}: {QK_LAYOUT_KEY} must be True or False, got {value!r}")
    if "adapt_hf" in entry:
        if value is not None and value == bool(entry["adapt_hf"]):
            raise UserError(f"{source}: {QK_LAYOUT_KEY}={value} contradicts adapt_hf={entry['adapt_hf']}")
        return not bool(entry["adapt_hf"])
    return True if value is None else value


def read_qk_interleaved(folder: str | Path) -> bool:
    """The q/k layout recorded in `folder` (model_config.json, else model_config.pt; neither: True)."""
    folder = Path(folder)
    ours = folder / MODEL_CONFIG_JSON
    if ours.exists():
        return qk_interleaved_of(json.loads(ours.read_text()), str(ours))
    entry = read_internevo_entry(folder)
    return True if entry is None else qk_interleaved_of(entry, str(folder / "model_config.pt"))


def read_model_config(folder: str | Path, required: bool = True) -> ModelConfig | None:
    """The shape of the model saved in `folder`: `model_config.json` (ours) or InternEvo's
    `model_config.pt`."""
    folder = Path(folder)
    ours = folder / MODEL_CONFIG_JSON
    if ours.exists():
        data = json.loads(ours.read_text())
        data.pop("model_type", None)
        data.pop(QK_LAYOUT_KEY, None)
        return ModelConfig.from_dict(data, source=str(ours))
    theirs = folder / "model_config.pt"
    if theirs.exists():
        try:
            return from_internevo(_read_internevo_model_config(theirs), source=str(theirs))
        except (pickle.UnpicklingError, zipfile.BadZipFile) as err:
            raise UserError(f"{theirs}: cannot read ({err})") from None
    if required:
        raise UserError(f"{folder}: no {MODEL_CONFIG_JSON} or model_config.pt; pass the model config explicitly")
    return None


def write_model_config(folder: str | Path, cfg: ModelConfig) -> Path:
    """`model_config.json`: the shape, the model type and the q/k layout (always ours)."""
    return write_json(Path(folder) / MODEL_CONFIG_JSON,
                      {**cfg.to_dict(), "model_type": cfg.model_type, QK_LAYOUT_KEY: True})


def save_model_only(folder: str | Path, state_dict: dict[str, torch.Tensor], cfg: ModelConfig) -> Path:
    """Write a model-only checkpoint InternEvo loads (tp=1, pp=1): `model_tp0_pp0.pt` and
    `model_config.json`. Tensors are made contiguous and detached so no shared storage of a
    larger source tensor is written along."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    clean = {k: v.detach().contiguous().clone() for k, v in state_dict.items()}
    tmp = folder / ".model_tp0_pp0.pt.partial"
    torch.save(clean, tmp)
    tmp.replace(folder / "model_tp0_pp0.pt")
    write_model_config(folder, cfg)
    return folder / "model_tp0_pp0.pt"


def check_state_dict(state_dict: dict[str, torch.Tensor], expected: dict[str, torch.Size | tuple],
                     source: str) -> None:
    """Every expected name present with its shape, nothing extra; the error names the key and
    both shapes (nanoGPT's discipline before copying a single tensor)."""
    missing = sorted(set(expected) - set(state_dict))
    extra = sorted(set(state_dict) - set(expected))
    if missing:
        raise UserError(f"{source}: missing key {missing[0]} ({len(missing)} missing in total)")
    if extra:
        raise UserError(f"{source}: unexpected key {extra[0]} ({len(extra)} unexpected in total)")
    for name, shape in expected.items():
        if tuple(state_dict[name].shape) != tuple(shape):
            raise UserError(f"{source}: shape mismatch for {name}: checkpoint {tuple(state_dict[name].shape)}, "
                            f"model {tuple(shape)}")


# ---- loading a model ------------------------------------------------------------------------------

def check_same_model(folder: str | Path, cfg: ModelConfig) -> None:
    """The model config saved in `folder` (when there is one) must describe `cfg`'s model: equal
    shapes with, say, another norm epsilon would load and silently compute something else."""
    saved = read_model_config(folder, required=False)
    if saved is None:
        return
    mine, theirs = cfg.to_dict(), saved.to_dict()
    differing = [k for k in mine if k != "name" and mine[k] != theirs.get(k)]
    if differing:
        key = differing[0]
        raise UserError(f"{folder}: checkpoint from a different model: {key} is {theirs.get(key)!r} there "
                        f"but {mine[key]!r} in the config ({len(differing)} field(s) differ)")


def model_state_dict(ckpt: InternEvoCheckpoint, expected: dict[str, torch.Size | tuple], tie_embeddings: bool,
                     source: str) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors under `expected`'s names, every name and shape checked first.

    The one treatment of a tied head: `output.weight` is `tok_embeddings.weight`. A checkpoint may
    leave it out (ours and HF do) or hold it (a tied model's `state_dict()` has both names); a held
    head that differs from the embedding is not a tied model's and is refused.

    Args:
        ckpt: the open checkpoint.
        expected: name -> shape of the model to fill (`parameter_shapes(cfg)`, or a live model's).
        tie_embeddings: whether that model ties its head to the embedding.
        source: what the error messages name.
    """
    state = {name: ckpt.tensor(name) for name in ckpt.keys() if not is_rotary_buffer(name)}
    embedding = state.get("tok_embeddings.weight")
    saved_head = state.get("output.weight")
    if tie_embeddings and embedding is not None:
        state["output.weight"] = embedding
    check_state_dict(state, expected, source)
    if tie_embeddings and saved_head is not None and not torch.equal(saved_head, embedding):
        raise UserError(f"{source}: tie_embeddings is set but the saved output.weight differs from "
                        f"tok_embeddings.weight")
    return state


def open_model_checkpoint(path: str | Path, config: ModelConfig | None = None
                          ) -> tuple[InternEvoCheckpoint, dict[str, torch.Tensor]]:
    """The checkpoint and its checked state dict for `PanGuPi` (shards memory-mapped, nothing copied).

    Args:
        path: a step folder, or a save folder whose latest step is used.
        config: the model shape; the folder's saved config, when it has one, must match it.
            Default: the folder's own model_config.json / model_config.pt.
    """
    from rethinktiny.model import parameter_shapes

    ckpt = InternEvoCheckpoint(path, config=config)
    if ckpt.config is None:
        raise UserError(f"{ckpt.folder}: no {MODEL_CONFIG_JSON} or model_config.pt; pass the InternEvo "
                        f"config file with --config")
    if config is not None:
        check_same_model(ckpt.folder, config)
    state = model_state_dict(ckpt, parameter_shapes(ckpt.config), ckpt.config.tie_embeddings,
                             f"{ckpt.folder} (checkpoint from a different model?)")
    return ckpt, state


def load_model(path: str | Path, config: ModelConfig | None = None, dtype: str | torch.dtype = "float32",
               device: torch.device | str = "cpu"):
    """`PanGuPi` with a checkpoint's weights, in eval mode: the one loader every reader uses.

    Args:
        path: InternEvo step folder, or its save folder (latest step); any tp/pp layout.
        config: the model shape (see `open_model_checkpoint`); default: the folder's own.
        dtype: weight dtype, any spelling of `rethinktiny.dtypes`.
        device: where the model goes.
    """
    from rethinktiny.dtypes import parse_dtype
    from rethinktiny.model import PanGuPi

    ckpt, state = open_model_checkpoint(path, config)
    model = PanGuPi(ckpt.config)
    model.load_state_dict(state, strict=True)
    return model.to(device=device, dtype=parse_dtype(dtype)).eval()
