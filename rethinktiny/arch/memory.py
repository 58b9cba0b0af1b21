"""Per-GPU memory plan of a training config, and a CPU measurement that checks it.

The plan counts what one data-parallel rank holds at the peak of a training step: the start of the
last micro-batch's backward, when every saved activation, the loss's logits and their gradient are
alive and the earlier micro-batches' gradients are accumulated. (The optimizer step's transients,
the flattened shard gradients and their fp32 copy, come after the activations are freed; the
gradient-reduce buckets fill during backward, after the logits are gone; both are left to the
device headroom `check_fits` keeps.) By part:

- parameters in the training dtype (InternEvo's NaiveAMPModel casts the whole model);
- gradients of all parameters in that dtype: ZeRO-1 shards the optimizer, not the gradients, and
  gradient accumulation over `micro_num` keeps them for every parameter;
- optimizer states, InternEvo's HybridZeroOptimizer: each rank keeps the fp32 master copy of its
  1/zero1 shard of the flat parameters (`fp16_flat.float()`, no copy when training in fp32) and
  AdamW's two fp32 moments of that shard;
- activations of one micro-batch (`micro_bsz * seq_len` packed tokens): the tensors autograd saves
  per decoder block, or only the block input for a checkpointed block plus one block recomputed at
  a time in backward (`model.checkpoint` read as InternEvo reads it: `ModelConfig.checkpoint_layers`);
- logits and loss: InternEvo hands the loss fp32 logits, which the chunked loss keeps for backward
  and whose fp32 gradient appears next to them in it, plus `rethinktiny.model.LOSS_CHUNK_TOKENS`
  tokens of fp32 probabilities at a time;
- an online distillation teacher's frozen weights and logits in the training dtype (`distill=dict(teacher=...)`).

The activation figures are the saved-tensor table of `rethinktiny.model` (per block: norm inputs,
projections' inputs, rotated q/k, v, attention output and log-sum-exp, the SwiGLU
intermediates); `measure_activations` counts the same bytes with
`torch.autograd.graph.saved_tensors_hooks` during one forward+backward on CPU, and
tests/unit/test_arch_memory.py holds the two within 20%.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from dataclasses import dataclass
from typing import Any

from rethinktiny.config import ModelConfig, from_internevo
from rethinktiny.errors import UserError

GB = 10**9

# Kept free of the plan on the device: CUDA context, NCCL buffers, allocator fragmentation.
DEVICE_HEADROOM = 0.10

_DTYPE_BYTES = {"float32": 4, "tf32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes one GPU holds at the peak of a training step, by part (see the module docstring)."""

    params_bytes: int
    grads_bytes: int
    optimizer_bytes: int
    activations_bytes: int
    logits_bytes: int
    teacher_bytes: int = 0
    # what the figures were computed for
    model: str = ""
    num_params: int = 0
    tokens_per_micro_batch: int = 0
    nproc: int = 1
    zero1: int = 1
    checkpointed_layers: int = 0
    num_layers: int = 0
    dtype: str = "bfloat16"

    @property
    def total_bytes(self) -> int:
        return (self.params_bytes + self.grads_bytes + self.optimizer_bytes + self.activations_bytes
                + self.logits_bytes + self.teacher_bytes)

    def to_dict(self) -> dict[str, Any]:
        """The byte figures (and total) under the names `arch memory --json` prints."""
        keys = ["params_bytes", "grads_bytes", "optimizer_bytes", "activations_bytes", "logits_bytes"]
        if self.teacher_bytes:
            keys.append("teacher_bytes")
        return {**{key: getattr(self, key) for key in keys}, "total_bytes": self.total_bytes}

    def describe(self) -> str:
        """A few lines for the launcher and `arch memory`: GB per part and what they assume."""
        head = (f"memory plan per GPU: {self.model}, {self.num_params / 1e9:.3f}B parameters in {self.dtype}, "
                f"{self.tokens_per_micro_batch:,} tokens a micro-batch, {self.nproc} rank(s), ZeRO-1 over "
                f"{self.zero1}, checkpointed layers {self.checkpointed_layers}/{self.num_layers}")
        parts = [(key.removesuffix("_bytes"), value) for key, value in self.to_dict().items()]
        return head + "\n" + "\n".join(f"  {name:<12} {value / GB:8.2f} GB" for name, value in parts)


# ---- reading the config ----------------------------------------------------------------------------

def _raw(config) -> dict:
    """The config dict of a TrainingConfig (`.raw`) or of a plain loaded config dict."""
    raw = getattr(config, "raw", config)
    if not isinstance(raw, dict):
        raise TypeError(f"memory_plan: expected a TrainingConfig or a config dict, got {type(config).__name__}")
    return raw


def zero1_ranks(raw: dict, nproc: int) -> int:
    """ZeRO-1 group size as InternEvo sets it: `parallel.zero1` (an int or dict(size=...)); <= 0
    means all data-parallel ranks. Tensor/pipeline parallel are 1 for our models, so dp = nproc."""
    zero1 = raw.get("parallel", {}).get("zero1", -1)
    size = zero1.get("size", -1) if isinstance(zero1, dict) else zero1
    if size is None or size <= 0:
        return nproc
    if size > nproc or nproc % size:
        raise UserError(f"parallel.zero1.size {size} does not divide the {nproc} data-parallel rank(s); "
                        "set parallel.zero1.size=-1 to shard over all of them")
    return size


def dtype_bytes(raw: dict) -> tuple[str, int]:
    name = str(raw.get("model", {}).get("dtype", "torch.bfloat16")).removeprefix("torch.")
    if name not in _DTYPE_BYTES:
        raise UserError(f"model.dtype: unknown dtype {name!r}")
    return name, _DTYPE_BYTES[name]


def micro_batch_tokens(raw: dict) -> int:
    data = raw.get("data", {})
    return int(data.get("micro_bsz", 1)) * int(data.get("seq_len", 2048))


# ---- the figures -----------------------------------------------------------------------------------

def block_saved_bytes(cfg: ModelConfig, tokens: int, elem: int) -> int:
    """Bytes autograd saves in one decoder block of `rethinktiny.model` for `tokens` packed tokens.

    Per token, in the training dtype: the residual input and the normed input of both norms (4h),
    rotated q (h), k and v as attention reads them (GQA repeats them to h each), the attention output
    per document and the concatenated output that wo reads (2h: SDPA per document; flash-attn's
    output is wo's input, one h less, so this is the upper of the two), the SwiGLU intermediates
    w1 out, silu(w1 out), w3 out and their product (4 ffn); in fp32 the two norms' 1/rms and one
    log-sum-exp per head.
    """
    h, ffn = cfg.hidden_size, cfg.intermediate_size
    width = 4 * h + h + 2 * h + 2 * h + 4 * ffn
    width += 2 * cfg.aug_shortcuts * cfg.aug_shortcut_dim  # bottleneck down output and silu of it
    width += 2 * cfg.series_terms * ffn  # each series term: shifted input and its silu
    fp32 = 4 * (2 + cfg.num_attention_heads)
    return tokens * (width * elem + fp32)


def activation_bytes(cfg: ModelConfig, tokens: int, elem: int, checkpointed: int) -> int:
    """Peak saved activations of one micro-batch.

    Checkpointed blocks are the first ones, so backward reaches them after every full block has
    freed its tensors: the peak is the larger of the end of forward (full blocks, checkpointed
    blocks' inputs, the head's inputs: final norm and output projection) and one checkpointed
    block recomputed on top of the kept inputs. Embedding ids and the RoPE tables (fp32, shared by
    all blocks) are alive throughout.
    """
    block = block_saved_bytes(cfg, tokens, elem)
    block_input = tokens * cfg.hidden_size * elem
    head = tokens * (2 * cfg.hidden_size * elem + 4)
    kept_inputs = checkpointed * block_input
    end_of_forward = (cfg.num_layers - checkpointed) * block + kept_inputs + head
    recompute = kept_inputs + block - block_input if checkpointed else 0  # its input is one of the kept
    small = tokens * 8 + 2 * tokens * (cfg.head_dim // 2) * 4
    return max(end_of_forward, recompute) + small


def logits_bytes(cfg: ModelConfig, tokens: int) -> int:
    """The loss's peak: InternEvo's NaiveAMPModel hands the loss fp32 logits (it casts the last
    stage's output, in any training dtype), `rethinktiny.model.chunked_cross_entropy` keeps them and
    writes their fp32 gradient next to them, one fp32 chunk of probabilities at a time."""
    from rethinktiny.model import LOSS_CHUNK_TOKENS

    chunk = min(tokens, LOSS_CHUNK_TOKENS)
    return 2 * tokens * cfg.vocab_size * 4 + chunk * cfg.vocab_size * 4


def teacher_bytes(raw: dict, elem: int, tokens: int) -> int:
    """An online distillation teacher (`distill=dict(teacher=PATH)`): its frozen weights and one
    micro-batch of its logits in the training dtype (its forward runs under no_grad, so its other
    activations are freed block by block). Offline distillation (`distill.cache`) keeps no teacher."""
    teacher = (raw.get("distill") or {}).get("teacher")
    if not teacher:
        return 0
    from rethinktiny.distill.teacher import teacher_config

    cfg = teacher_config(teacher)
    return cfg.num_params() * elem + tokens * cfg.vocab_size * elem


def memory_plan(config, nproc: int) -> MemoryPlan:
    """The per-GPU plan of `config` (a TrainingConfig, or a loaded config dict) on `nproc` ranks.

    Args:
        config: the training config; read are `model`, `data.micro_bsz`, `data.seq_len`,
            `parallel.zero1`, `model.checkpoint`, `model.dtype` and `distill`.
        nproc: data-parallel ranks in the whole job (nodes x GPUs per node).
    """
    if nproc < 1:
        raise UserError(f"memory plan: nproc must be >= 1, got {nproc}")
    raw = _raw(config)
    cfg = getattr(config, "model", None)
    if not isinstance(cfg, ModelConfig):
        cfg = from_internevo(raw["model"], source="model")
    dtype, elem = dtype_bytes(raw)
    tokens = micro_batch_tokens(raw)
    zero1 = zero1_ranks(raw, nproc)
    checkpointed = cfg.checkpoint_layers  # model.checkpoint as InternEvo reads it
    n = cfg.num_params()
    shard = math.ceil(n / zero1)
    master = 0 if elem == 4 else 4 * shard  # fp32 training: the "master copy" is the parameters
    return MemoryPlan(
        params_bytes=n * elem, grads_bytes=n * elem, optimizer_bytes=master + 8 * shard,
        activations_bytes=activation_bytes(cfg, tokens, elem, checkpointed),
        logits_bytes=logits_bytes(cfg, tokens), teacher_bytes=teacher_bytes(raw, elem, tokens),
        model=cfg.name, num_params=n, tokens_per_micro_batch=tokens, nproc=nproc, zero1=zero1,
        checkpointed_layers=checkpointed, num_layers=cfg.num_layers, dtype=dtype)


def usable_bytes(device_bytes: int) -> int:
    return int(device_bytes * (1 - DEVICE_HEADROOM))


def check_fits(plan: MemoryPlan, device_bytes: int | None, force: bool = False) -> None:
    """Raise a one-line UserError when `plan` exceeds the device's memory less its headroom.

    Args:
        plan: `memory_plan(...)`.
        device_bytes: total memory of one visible GPU (None: no GPU, nothing to check).
        force: the user asked to start anyway (`--ignore-memory-plan`): nothing is checked.
    """
    if device_bytes is None or force or plan.total_bytes <= usable_bytes(device_bytes):
        return
    raise UserError(
        f"memory plan: {plan.total_bytes / GB:.1f} GB per GPU (activations {plan.activations_bytes / GB:.1f}, "
        f"logits {plan.logits_bytes / GB:.1f}) exceeds {usable_bytes(device_bytes) / GB:.1f} GB "
        f"({100 - 100 * DEVICE_HEADROOM:.0f}% of the GPU's {device_bytes / GB:.1f} GB); lower data.micro_bsz "
        "(raise data.micro_num to keep the tokens per step), set model.checkpoint=True (or a share of layers), "
        "or pass --ignore-memory-plan")


def device_memory_bytes() -> int | None:
    """Total memory of the current CUDA device, None when torch sees no GPU."""
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory


# ---- the CPU measurement ---------------------------------------------------------------------------

class SavedTensorMeter:
    """Live and peak bytes of the tensors autograd saves, each storage counted once.

    A pack hook records the storage of every saved tensor (parameters excluded: they are counted
    as parameters) and hands autograd a small holder; a finalizer on the holder releases the bytes
    when autograd drops it, so `peak` also sees blocks recomputed by checkpointing in backward.
    """

    def __init__(self, exclude: set[int] = frozenset()) -> None:
        self.exclude = set(exclude)
        self.live: dict[int, list[int]] = {}  # storage pointer -> [bytes, holders]
        self.current = 0
        self.peak = 0

    def hooks(self):
        import torch

        return torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def _pack(self, tensor):
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        holder = _Saved(tensor)
        if key in self.exclude or storage.nbytes() == 0:
            return holder
        entry = self.live.setdefault(key, [storage.nbytes(), 0])
        if entry[1] == 0:
            self.current += entry[0]
            self.peak = max(self.peak, self.current)
        entry[1] += 1
        weakref.finalize(holder, self._release, key)
        return holder

    @staticmethod
    def _unpack(holder):
        return holder.tensor

    def _release(self, key: int) -> None:
        entry = self.live[key]
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self.live[key]


class _Saved:
    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor) -> None:
        self.tensor = tensor


def _packed_batch(tokens: int, seq_len: int, vocab: int, generator):
    """One InternEvo packed micro-batch: [1, tokens] ids, documents of `seq_len` tokens."""
    import torch

    ids = torch.randint(0, vocab, (1, tokens), generator=generator)
    cu_seqlens = torch.arange(0, tokens + 1, seq_len, dtype=torch.int32)
    if int(cu_seqlens[-1]) != tokens:
        cu_seqlens = torch.cat([cu_seqlens, torch.tensor([tokens], dtype=torch.int32)])
    indexes = (torch.arange(tokens) % seq_len).unsqueeze(0)
    return ids, cu_seqlens, indexes


@contextlib.contextmanager
def _visible_checkpointing():
    """Run `rethinktiny.model`'s checkpointed blocks through torch's reentrant checkpoint while
    measuring. The non-reentrant one the model uses keeps its block inputs in a closure and stores
    the recomputed block through saved-tensor hooks of its own, which hide both from the meter's;
    the reentrant one keeps the same tensors (each checkpointed block's input, one block
    recomputed at a time in backward) through `ctx.save_for_backward`, which the meter sees."""
    import torch.utils.checkpoint

    from rethinktiny import model as model_module

    def reentrant(function, *args, use_reentrant=None, **kwargs):
        return torch.utils.checkpoint.checkpoint(function, *args, use_reentrant=True, **kwargs)

    saved = model_module.checkpoint
    model_module.checkpoint = reentrant
    try:
        yield
    finally:
        model_module.checkpoint = saved


def measure_activations(config, layers: int | None = None, seed: int = 0) -> dict[str, int]:
    """Saved-tensor bytes of one forward+backward of `config`'s model at its micro-batch shape on CPU.

    Args:
        config: a TrainingConfig or loaded config dict (model, data.micro_bsz, data.seq_len,
            model.checkpoint, model.dtype).
        layers: build the model with this many layers instead (the caller scales per layer).

    Returns `measured_activations_bytes` (peak live saved bytes of the model, the loss's own
    saved tensors left out: the plan's logits part) and `measured_layers`.
    """
    import torch

    from rethinktiny.arch.measure import random_model

    raw = _raw(config)
    cfg = from_internevo(raw["model"], source="model")
    if layers is not None:
        cfg = cfg.replace(num_layers=layers)
    dtype_name, _ = dtype_bytes(raw)
    dtype = torch.float32 if dtype_name == "tf32" else getattr(torch, dtype_name)
    model = random_model(cfg, torch.device("cpu"), dtype).train()  # cfg.checkpoint: model.checkpoint
    seq_len = int(raw.get("data", {}).get("seq_len", 2048))
    generator = torch.Generator().manual_seed(seed)
    ids, cu_seqlens, indexes = _packed_batch(micro_batch_tokens(raw), seq_len, cfg.vocab_size, generator)
    meter = SavedTensorMeter({p.untyped_storage().data_ptr() for p in model.parameters()})
    with _visible_checkpointing():
        with meter.hooks():
            logits = model(ids, cu_seqlens=cu_seqlens, indexes=indexes, max_seqlen=seq_len)
        # The loss outside the meter: its saved tensors are the plan's logits part, not activations.
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), ids.flatten())
        with meter.hooks():
            loss.backward()
    return {"measured_activations_bytes": meter.peak, "measured_layers": cfg.num_layers}


def with_layers(config, layers: int) -> dict:
    """A copy of the config dict with `model.num_layers = layers` (to plan what was measured)."""
    raw = dict(_raw(config))
    raw["model"] = {**raw["model"], "num_layers": layers}
    return raw

