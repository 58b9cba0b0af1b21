"""Measured prefill and decode speed of a shape: random weights, real forward passes of `PanGuPi`.

Batch 1, greedy decoding through the project's `KVCache`, the same path `generate` takes. One
warm-up prefill and a few warm-up decode steps run first on a separate cache (allocator, kernel
selection and lazy initialisation are not what we want to time); then one timed prefill of
`prompt_len` tokens and `decode_steps` timed decode steps. Decode tokens/s is 1 / the median step
time, so one step preempted on a busy machine does not drag the figure down. The backend is picked
in `rethinktiny.arch.speed` (this module: torch; `arch.llama_cpp_speed`: llama.cpp).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from rethinktiny.config import ModelConfig
from rethinktiny.dtypes import parse_dtype
from rethinktiny.errors import UserError
from rethinktiny.model import KVCache, PanGuPi


@dataclass(frozen=True)
class Speed:
    """Tokens per second at batch 1: one timed prefill, and decode rates from the per-step times
    (median: robust to a step that a busy machine preempted; best: the least disturbed step)."""

    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    decode_best_tokens_per_s: float
    # Median process CPU seconds per decode step (all threads): less sensitive than wall time to
    # other jobs on a shared CPU; equals the wall time per step on an idle one-thread run.
    decode_cpu_s_per_token: float


def resolve_device(name: str) -> torch.device:
    """`cpu` or `cuda` (refused with a UserError when no GPU is visible)."""
    if name not in ("cpu", "cuda"):
        raise UserError(f"--measure: expected cpu or cuda, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--measure cuda: no CUDA device is available to torch")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """A weight dtype by name (see `rethinktiny.dtypes`); fp16 on CPU is refused (most CPU kernels lack it)."""
    dtype = parse_dtype(name, "--measure-dtype")
    if dtype == torch.float16 and device.type == "cpu":
        raise UserError(f"--measure-dtype {name}: float16 is not supported on CPU; use float32 or bfloat16")
    return dtype


def random_model(cfg: ModelConfig, device: torch.device, dtype: torch.dtype, seed: int = 0,
                 std: float = 0.02) -> PanGuPi:
    """A PanGuPi with random N(0, std) weights, allocated directly in `dtype` on `device`.

    Built on the meta device so a bf16 model never exists in fp32 (halves peak memory). The
    weights tile one seeded random block instead of drawing every element: drawing 1B normals
    on a small CPU takes longer than the measurement itself, and matmul speed does not depend
    on the values (they are normal-sized floats either way, no denormals, no zeros to skip).
    """
    with torch.device("meta"):
        model = PanGuPi(cfg)
    model = model.to(dtype).to_empty(device=device)
    if cfg.tie_embeddings:  # to_empty allocates each module's parameters separately
        model.output.weight = model.tok_embeddings.weight
    generator = torch.Generator().manual_seed(seed)
    size = min(_TILE, max(p.numel() for p in model.parameters()))
    block = (torch.randn(size, generator=generator) * std).to(device=device, dtype=dtype)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name.split(".")[-2]:
                param.fill_(1.0)
            else:
                _tile_fill(param, block)
    return model.eval()


_TILE = (1 << 20) - 3  # not a power of two, so rows of a weight do not all start alike


def _tile_fill(param: torch.Tensor, block: torch.Tensor) -> None:
    """Fill `param` with `block` repeated (and cut) to its number of elements."""
    flat = param.view(-1)
    whole, rest = divmod(flat.numel(), block.numel())
    if whole:
        flat[:whole * block.numel()].view(whole, -1).copy_(block.expand(whole, -1))
    if rest:
        flat[whole * block.numel():].copy_(block[:rest])


def check_lengths(prompt_len: int, decode_steps: int, warmup_steps: int) -> None:
    """Refuse timing lengths that measure nothing."""
    for flag, value, least in (("--prompt-len", prompt_len, 1), ("--decode-steps", decode_steps, 1),
                               ("--warmup-steps", warmup_steps, 0)):
        if value < least:
            raise UserError(f"{flag} must be at least {least}, got {value}")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _prefill_and_decode(model: PanGuPi, prompt: torch.Tensor,
                        steps: int) -> tuple[float, list[float], list[float]]:
    """Wall seconds of the prefill, and wall and CPU seconds of each of `steps` greedy decode
    steps, on a fresh cache."""
    device = prompt.device
    dtype = next(model.parameters()).dtype
    cache = KVCache(model.cfg, 1, prompt.shape[1] + steps, device=device, dtype=dtype)
    _sync(device)
    start = time.perf_counter()
    logits = model(prompt, cache=cache)
    next_id = logits[:, -1].argmax(-1, keepdim=True)
    _sync(device)
    prefill_s = time.perf_counter() - start
    step_s, cpu_s = [], []
    for _ in range(steps):
        start, cpu_start = time.perf_counter(), time.process_time()
        logits = model(next_id, cache=cache)
        next_id = logits[:, -1].argmax(-1, keepdim=True)
        _sync(device)  # per step, as a generation loop that reads each token must
        step_s.append(time.perf_counter() - start)
        cpu_s.append(time.process_time() - cpu_start)
    return prefill_s, step_s, cpu_s


@torch.inference_mode()
def measure_model(model: PanGuPi, prompt_len: int = 32, decode_steps: int = 8, warmup_steps: int = 2,
                  seed: int = 0) -> Speed:
    """Time one prefill and `decode_steps` decode steps of an existing model (batch 1).

    Args:
        model: the model, already on its device and dtype.
        prompt_len: prompt tokens of the timed prefill.
        decode_steps: timed decode steps (tokens generated after the prompt).
        warmup_steps: untimed decode steps after an untimed prefill, before timing.
        seed: seed of the random prompt ids.
    """
    check_lengths(prompt_len, decode_steps, warmup_steps)
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, model.cfg.vocab_size, (1, prompt_len), generator=generator).to(device)
    _prefill_and_decode(model, prompt, warmup_steps)
    prefill_s, step_s, cpu_s = _prefill_and_decode(model, prompt, decode_steps)
    return Speed(prefill_tokens_per_s=prompt_len / prefill_s, decode_tokens_per_s=1 / statistics.median(step_s),
                 decode_best_tokens_per_s=1 / min(step_s), decode_cpu_s_per_token=statistics.median(cpu_s))


def measure_speed_torch(cfg: ModelConfig, device: str = "cpu", dtype: str = "fp32", prompt_len: int = 32,
                        decode_steps: int = 8, warmup_steps: int = 2, seed: int = 0) -> Speed:
    """Build a random model of `cfg` on a torch device and time it; the model is freed before returning.

    Args:
        cfg: the shape.
        device: `cpu` or `cuda`.
        dtype: weight and cache dtype name (`float32`, `bfloat16`, `float16` on CUDA only, or
            their short forms `fp32`, `bf16`, `fp16`).
        prompt_len, decode_steps, warmup_steps, seed: see `measure_model`.
    """
    torch_device = resolve_device(device)
    check_lengths(prompt_len, decode_steps, warmup_steps)
    model = random_model(cfg, torch_device, resolve_dtype(dtype, torch_device), seed)
    try:
        return measure_model(model, prompt_len, decode_steps, warmup_steps, seed)
    finally:
        del model
        if torch_device.type == "cuda":
            torch.cuda.empty_cache()
