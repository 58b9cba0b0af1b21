"""Measured speed of a shape on one backend: the one place that picks it (`--measure`).

`cpu` and `cuda` time a random `PanGuPi` in torch (`rethinktiny.arch.measure`); `llama.cpp` times
the shape as a GGUF file in llama.cpp (`rethinktiny.arch.llama_cpp_speed`). Both return a
`measure.Speed` from the same schedule.
"""

from __future__ import annotations

from rethinktiny.arch.measure import Speed, check_lengths, measure_speed_torch, resolve_device, resolve_dtype
from rethinktiny.config import ModelConfig
from rethinktiny.errors import UserError

# `--measure llama.cpp`: the shape as a GGUF file in llama.cpp (rethinktiny.arch.llama_cpp_speed).
LLAMA_CPP = "llama.cpp"


def measure_speed(cfg: ModelConfig, device: str = "cpu", dtype: str = "fp32", prompt_len: int = 32,
                  decode_steps: int = 8, warmup_steps: int = 2, seed: int = 0) -> Speed:
    """Build a random model of `cfg` and time it; the model is freed before returning.

    Args:
        cfg: the shape.
        device: `cpu`, `cuda`, or `llama.cpp` (a GGUF export timed in llama.cpp on the CPU,
            with as many threads as torch uses).
        dtype: weight and cache dtype name (`float32`, `bfloat16`, `float16` on CUDA only, or
            their short forms `fp32`, `bf16`, `fp16`).
        prompt_len, decode_steps, warmup_steps, seed: see `rethinktiny.arch.measure.measure_model`.
    """
    if device == LLAMA_CPP:
        import torch

        from rethinktiny.arch.llama_cpp_speed import measure_speed_llama_cpp

        return measure_speed_llama_cpp(cfg, dtype, prompt_len, decode_steps, warmup_steps, seed,
                                       threads=torch.get_num_threads())
    return measure_speed_torch(cfg, device, dtype, prompt_len, decode_steps, warmup_steps, seed)


def check_backend(device: str, dtype: str) -> None:
    """Refuse a backend or dtype that cannot run, before the first model is built."""
    if device == LLAMA_CPP:
        from rethinktiny.arch.llama_cpp_speed import gguf_outtype, require_llama_cpp

        gguf_outtype(dtype)
        require_llama_cpp()
    else:
        resolve_dtype(dtype, resolve_device(device))


def measure_rows(rows: list, device: str = "cpu", dtype: str = "fp32", prompt_len: int = 32,
                 decode_steps: int = 8, warmup_steps: int = 2, seed: int = 0, threads: int | None = None) -> None:
    """Fill `prefill_tokens_per_s` / `decode_tokens_per_s` of each sweep `Row` in place.

    Args:
        rows: `rethinktiny.arch.sweep.Row` objects; one model at a time is built and freed.
        device, dtype, prompt_len, decode_steps, warmup_steps, seed: see `measure_speed`.
        threads: torch CPU threads while measuring (None: torch's default). On a machine other
            jobs also use, fewer threads than cores avoids OpenMP threads waiting on each other.
    """
    import torch
    from tqdm import tqdm

    check_backend(device, dtype)
    check_lengths(prompt_len, decode_steps, warmup_steps)
    if threads is not None:
        if threads <= 0:
            raise UserError(f"--threads must be positive, got {threads}")
        torch.set_num_threads(threads)
    for row in tqdm(rows, desc=f"measuring on {device} ({dtype})", unit="shape"):
        speed = measure_speed(row.cfg, device, dtype, prompt_len, decode_steps, warmup_steps, seed)
        row.prefill_tokens_per_s = speed.prefill_tokens_per_s
        row.decode_tokens_per_s = speed.decode_tokens_per_s
