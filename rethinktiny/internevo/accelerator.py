"""A CPU accelerator for InternEvo 0.4.9, which only ships CUDA/NPU/DIPU ones.

InternEvo creates its accelerator once, at import, and ~25 modules keep a reference to that
object (`internlm_accelerator = get_accelerator()` at module level). Replacing the module global
would miss those references, so `install_cpu_accelerator` turns the existing object into a
`CPUAccelerator` in place (`__class__` swap): every holder sees the CPU behaviour at once, in
whatever order InternEvo's modules were imported.
"""

from __future__ import annotations

import contextlib
import functools
import resource
import types

import torch
from internlm.accelerator import abstract_accelerator
from internlm.accelerator.abstract_accelerator import Accelerator, AcceleratorType


def _cpu_amp() -> types.SimpleNamespace:
    """The `amp` namespace InternEvo calls: autocast(dtype=...), custom_fwd/custom_bwd decorators."""
    return types.SimpleNamespace(
        autocast=functools.partial(torch.autocast, "cpu"),
        custom_fwd=functools.partial(torch.amp.custom_fwd, device_type="cpu"),
        custom_bwd=functools.partial(torch.amp.custom_bwd, device_type="cpu"),
    )


class _CPUMemory:
    """Stands in for `torch.cuda.memory`: allocator settings have no CPU meaning."""

    @staticmethod
    def _set_allocator_settings(_settings: str) -> None:
        return None


class _CPUStream:
    """CPU work is synchronous: a stream that is always done."""

    def synchronize(self) -> None:
        return None

    def wait_stream(self, _other) -> None:
        return None

    def wait_event(self, _event) -> None:
        return None

    def query(self) -> bool:
        return True


class _CPUEvent:
    def __init__(self, *args, **kwargs) -> None:
        pass

    def record(self, _stream=None) -> None:
        return None

    def synchronize(self) -> None:
        return None

    def query(self) -> bool:
        return True


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class CPUAccelerator(Accelerator):
    """InternEvo's accelerator interface on the CPU, with the gloo communication backend."""

    def __init__(self) -> None:
        super().__init__()
        self._setup()

    def _setup(self) -> None:
        self._name_str = "cpu"
        self._communication_backend_name = "gloo"
        self.amp = _cpu_amp()
        self.memory = _CPUMemory()

    def get_backend_name(self):
        return self._name_str

    def get_accelerator_backend(self):
        return AcceleratorType.CPU

    # devices
    def device_name(self, device_index=None):
        return "cpu"

    def set_device(self, device_index):
        return None

    def get_device_id(self):
        return 0

    def current_device_name(self):
        return "cpu"

    def device_count(self):
        return 1

    def synchronize(self, device_index=None):
        return None

    def is_available(self):
        # InternEvo asserts this before seeding; the CPU is always there.
        return True

    # random numbers
    def random(self):
        return torch.random

    def set_rng_state(self, new_state, device_index=None):
        return torch.set_rng_state(new_state)

    def get_rng_state(self, device_index=None):
        return torch.get_rng_state()

    def manual_seed(self, seed):
        return torch.manual_seed(seed)

    def manual_seed_all(self, seed):
        return torch.manual_seed(seed)

    def initial_seed(self):
        return torch.initial_seed()

    def default_generator(self, device_index):
        return torch.default_generator

    # streams and events
    @property
    def Stream(self):
        return _CPUStream

    def stream(self, _stream):
        return contextlib.nullcontext()

    def current_stream(self, device_index=None):
        return _CPUStream()

    def default_stream(self, device_index=None):
        return _CPUStream()

    @property
    def Event(self):
        return _CPUEvent

    # memory: the CPU has no caching allocator; report the process's peak RSS where a peak is asked
    def empty_cache(self):
        return None

    def memory_allocated(self, device_index=None):
        return 0

    def max_memory_allocated(self, device_index=None):
        return _peak_rss_bytes()

    def reset_max_memory_allocated(self, device_index=None):
        return None

    def memory_cached(self, device_index=None):
        return 0

    def max_memory_cached(self, device_index=None):
        return 0

    def reset_max_memory_cached(self, device_index=None):
        return None

    def memory_stats(self, device_index=None):
        return {"num_alloc_retries": 0}

    def reset_peak_memory_stats(self, device_index=None):
        return None

    def memory_reserved(self, device_index=None):
        return 0

    def max_memory_reserved(self, device_index=None):
        return _peak_rss_bytes()

    def total_memory(self, device_index=None):
        import os

        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")

    # data types
    def is_bf16_supported(self):
        return True

    def is_fp16_supported(self):
        return True

    # misc
    def get_amp(self):
        return self.amp

    def range_push(self, msg):
        return None

    def range_pop(self):
        return None

    def lazy_call(self, callback):
        return callback()

    def communication_backend_name(self):
        return self._communication_backend_name

    # tensor types
    @property
    def BFloat16Tensor(self):
        return functools.partial(torch.tensor, dtype=torch.bfloat16)

    @property
    def ByteTensor(self):
        return torch.ByteTensor

    @property
    def DoubleTensor(self):
        return torch.DoubleTensor

    @property
    def FloatTensor(self):
        return torch.FloatTensor

    @property
    def HalfTensor(self):
        return functools.partial(torch.tensor, dtype=torch.float16)

    @property
    def IntTensor(self):
        return torch.IntTensor

    @property
    def LongTensor(self):
        return torch.LongTensor

    def pin_memory(self, tensor):
        return tensor

    def on_accelerator(self, tensor):
        return tensor.device.type == "cpu"

    def set_allow_tf32(self, enable: bool):
        return None

    def return_custom_bwd(self):
        return self.amp.custom_bwd

    def return_custom_fwd(self):
        return self.amp.custom_fwd


def install_cpu_accelerator() -> Accelerator:
    """Make InternEvo's accelerator singleton a CPUAccelerator (in place; idempotent)."""
    current = abstract_accelerator.get_accelerator()
    if not isinstance(current, CPUAccelerator):
        current.__class__ = CPUAccelerator
        current._setup()
    return current
