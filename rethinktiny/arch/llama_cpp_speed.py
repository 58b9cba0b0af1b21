"""Prefill and decode speed of a shape in llama.cpp, the runtime tiny models ship in on devices.

A random model of the shape (`rethinktiny.arch.measure.random_model`) is written as a GGUF file by
`convert to-gguf` (with a placeholder vocabulary: the ids are fed directly) and timed through
llama-cpp-python, batch 1, greedy decoding, the same schedule as `measure_model`: one untimed
prefill and warm-up steps, then one timed prefill and `decode_steps` timed single-token steps.
llama-cpp-python is not a dependency: build it from its sdist (bench/gguf_parity.py says how).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from rethinktiny.arch.measure import Speed, check_lengths, random_model
from rethinktiny.config import ModelConfig
from rethinktiny.errors import UserError

# --measure-dtype -> GGUF tensor type (llama.cpp computes in it; bf16 GGUFs are not written here).
OUTTYPES = {"float32": "f32", "float16": "f16"}


def gguf_outtype(dtype: str) -> str:
    """The GGUF type timed for a `--measure-dtype` name."""
    from rethinktiny.dtypes import parse_dtype

    name = str(parse_dtype(dtype, "--measure-dtype")).removeprefix("torch.")
    if name not in OUTTYPES:
        raise UserError(f"--measure-dtype {dtype}: llama.cpp is timed in float32 or float16 GGUF files")
    return OUTTYPES[name]


def require_llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        raise UserError("--measure llama.cpp: llama_cpp (llama-cpp-python) is not installed; build it from its "
                        "sdist as bench/gguf_parity.py describes") from None
    return llama_cpp


def load_llama(path: Path, n_ctx: int, threads: int = 1, repack: bool = False, logits_all: bool = False):
    """A llama-cpp-python model of the GGUF file `path` (the one loader for the explorer and benches).

    Args:
        path: the .gguf file.
        n_ctx: context length.
        threads: decode and batch threads.
        repack: llama.cpp's extra (AMX repack) weight buffers; off by default because they were
            measured to segfault for Q8_0 in 0.3.36 on an AMX CPU (f32/f16 weights do not use them).
        logits_all: keep the logits of every position (parity checks), not only the last.
    """
    import llama_cpp  # noqa: F401 - the package, then its high-level module
    import llama_cpp.llama as high_level

    default_params = high_level.llama_cpp.llama_model_default_params

    def params():
        value = default_params()
        value.use_extra_bufts = repack
        return value

    high_level.llama_cpp.llama_model_default_params = params
    try:
        return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                               n_batch=512, logits_all=logits_all, verbose=False)
    finally:
        high_level.llama_cpp.llama_model_default_params = default_params


def _prefill_and_decode(llm, prompt: list[int], steps: int) -> tuple[float, list[float], list[float]]:
    import numpy as np

    llm.reset()
    start = time.perf_counter()
    llm.eval(prompt)
    prefill_s = time.perf_counter() - start
    step_s, cpu_s = [], []
    for _ in range(steps):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        start, cpu_start = time.perf_counter(), time.process_time()
        llm.eval([token])
        step_s.append(time.perf_counter() - start)
        cpu_s.append(time.process_time() - cpu_start)
    return prefill_s, step_s, cpu_s


def measure_speed_llama_cpp(cfg: ModelConfig, dtype: str = "fp32", prompt_len: int = 32, decode_steps: int = 8,
                            warmup_steps: int = 2, seed: int = 0, threads: int | None = None) -> Speed:
    """Time a random model of `cfg` in llama.cpp (see the module doc).

    Args:
        cfg: the shape (PANGU_PI_PRO / LLaMA-equivalent).
        dtype: float32 or float16 (the GGUF's matrix type).
        prompt_len, decode_steps, warmup_steps, seed: as `rethinktiny.arch.measure.measure_model`.
        threads: llama.cpp threads (default 1: steady on a shared machine).
    """
    import torch

    from rethinktiny.checkpoint import save_model_only
    from rethinktiny.convert.gguf_export import placeholder_vocab, to_gguf

    require_llama_cpp()
    check_lengths(prompt_len, decode_steps, warmup_steps)
    outtype = gguf_outtype(dtype)
    # llama.cpp rounds its context up to a multiple of 256; declare that much, so it does not warn
    context = -(-(prompt_len + max(decode_steps, warmup_steps) + 1) // 256) * 256
    with tempfile.TemporaryDirectory(prefix="llama_cpp_speed_") as tmp:
        model = random_model(cfg, torch.device("cpu"), torch.float32, seed)
        save_model_only(Path(tmp) / "ckpt", model.state_dict(), cfg)
        del model
        path = to_gguf(Path(tmp) / "ckpt", Path(tmp) / "gguf", placeholder_vocab(cfg.vocab_size), outtype=outtype,
                       context_length=context, progress=False)
        (Path(tmp) / "ckpt" / "model_tp0_pp0.pt").unlink()  # free the disk before timing
        llm = load_llama(path, context, threads or 1)
        try:
            generator = torch.Generator().manual_seed(seed)
            prompt = torch.randint(0, cfg.vocab_size, (prompt_len,), generator=generator).tolist()
            _prefill_and_decode(llm, prompt, warmup_steps)
            prefill_s, step_s, cpu_s = _prefill_and_decode(llm, prompt, decode_steps)
        finally:
            del llm
    return Speed(prefill_tokens_per_s=prompt_len / prefill_s, decode_tokens_per_s=1 / statistics.median(step_s),
                 decode_best_tokens_per_s=1 / min(step_s), decode_cpu_s_per_token=statistics.median(cpu_s))
