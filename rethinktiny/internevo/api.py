"""Everything that differs between the InternEvo versions rethinktiny runs on, in one module.

Supported: the PyPI `internevo==0.4.9` wheel (and its develop tree of 2024, 9a2a30e) and the
newest develop tree (0.5.3, 47d0f54). Each function picks its branch by the API that is present
(a module, a name, a parameter), never by a version string, so a tree between the two works
wherever it has either form. Every difference handled:

| what | 0.4.9 | newest |
|---|---|---|
| model registry | `internlm.utils.registry.MODEL_INITIALIZER` (decorator) | `internlm.model.registry.model_initializer` (`register_module(name, fn)`) |
| model build | `internlm.train.initialize_model()` | `create_model()` + `inject_model()`; builder also gets `first`, `last`, `start_layer_idx`, `device` |
| loss | `FlashGPTLMLoss(parallel_output, label_smoothing)` | `InternLoss(parallel_output, label_smoothing, op_type)` |
| trainer | `initialize_trainer(..., train_dataloader=...)` returns `(trainer, dl, _, _)` | no loader argument, returns `(engine, scheduler)` for `Trainer` |
| checkpoint manager | no `meta_data` | `meta_data=generate_meta_data(optimizer)` (required when saving) |
| CPU | - | `AttnOffloadManager()` makes a `torch.cuda.Stream()` unconditionally |
| root `train.py` errors | `except: logger.error; monitor_exception` | `@internevo_monitor(clean_run=True)` logs and returns |

Both swallow an exception from the training script and exit 0; `propagate_script_errors` makes
InternEvo's own `train.py` exit non-zero instead (patched from here, site-packages untouched).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import sys
from typing import Any, Callable


from rethinktiny.config import MODEL_TYPE_PANGU_PI, MODEL_TYPE_PRO
from rethinktiny.errors import UserError


class InternEvoAPIError(UserError):
    """This InternEvo lacks an API rethinktiny needs (one line, names what was looked for)."""


def _optional(module: str, name: str) -> Any:
    """`module.name` when the module exists and defines it, else None. Errors raised while
    importing a module that does exist propagate: they are real failures, not a version sign."""
    parts = module.split(".")
    for depth in range(1, len(parts) + 1):  # find_spec of a.b.c imports a.b and fails if a.b is missing
        if importlib.util.find_spec(".".join(parts[:depth])) is None:
            return None
    return getattr(importlib.import_module(module), name, None)


# ---- model registry ------------------------------------------------------------------------------

REGISTRY_LOCATIONS = (("internlm.utils.registry", "MODEL_INITIALIZER"), ("internlm.model.registry", "model_initializer"))


def model_registry() -> Any:
    """InternEvo's model registry object; raises InternEvoAPIError when none is found."""
    for module, name in REGISTRY_LOCATIONS:
        registry = _optional(module, name)
        if registry is not None:
            return registry
    looked = ", ".join(f"{m}.{n}" for m, n in REGISTRY_LOCATIONS)
    raise InternEvoAPIError(f"no InternEvo model registry found (looked for {looked}); "
                            "rethinktiny cannot register PANGU_PI_PRO with this InternEvo")


def register_model(registry: Any, name: str, builder: Callable) -> None:
    """Add `builder` as model type `name` (no-op when present: 0.4.9's registry asserts on duplicates)."""
    if registry.has(name):
        return
    params = inspect.signature(registry.register_module).parameters
    if len(params) >= 2:  # newest: register_module(module_name, func)
        registry.register_module(name, builder)
    else:  # 0.4.9: a decorator factory
        registry.register_module(module_name=name)(builder)
    if not registry.has(name):
        raise InternEvoAPIError(f"registering model type {name} in {type(registry).__name__} had no effect")


def model_types() -> list[str]:
    """Every model type InternEvo's registry knows (its own and ours)."""
    registry = model_registry()
    names = getattr(registry, "_registry", None)
    if not isinstance(names, dict):
        raise InternEvoAPIError(f"{type(registry).__name__} does not list its model types (no _registry dict)")
    return sorted(names)


# ---- training components -------------------------------------------------------------------------

def build_model() -> tuple[Any, Any]:
    """(model wrapped by InternEvo, ISP communicator or None) for `gpc.config.model_type`."""
    legacy = _optional("internlm.train.pipeline", "initialize_model")
    if legacy is not None:
        return legacy(), None
    from internlm.model.builder import create_model
    from internlm.train.pipeline import inject_model

    return inject_model(create_model())


def build_bare_model() -> Any:
    """`gpc.config`'s model as its registered builder returns it, without InternEvo's AMP and
    parallel wrappers (for parity checks against InternEvo's own models)."""
    create = _optional("internlm.model.builder", "create_model")
    if create is not None:
        from internlm.train.pipeline import initialize_parallel_communicator

        model = create()
        initialize_parallel_communicator(model)  # its parallel linears refuse to run without one
        return model
    from internlm.core.context import global_context as gpc

    return model_registry().get_module(gpc.config.model_type)(**gpc.config.model)


class ChunkedLMLoss:
    """The training criterion of our model types: InternEvo's loss call (`(logits, labels)` or
    `(logits, residual, labels)`, mean over the tokens not labelled -100, torch's label smoothing as
    0.4.9's FlashGPTLMLoss computes it) through `rethinktiny.model.chunked_cross_entropy`, so the
    fp32 log-probabilities of a 48k vocabulary never exist for the whole micro-batch at once. The
    logits stay the model's output, so InternEvo's metrics (AccPerplex) read them as before."""

    def __init__(self, label_smoothing: float = 0.0) -> None:
        self.label_smoothing = float(label_smoothing or 0)

    def __call__(self, *args):
        if len(args) not in (2, 3):
            raise RuntimeError(f"The number of criterion inputs are:{len(args)}")
        from rethinktiny.model import chunked_cross_entropy

        return chunked_cross_entropy(args[0], args[-1], self.label_smoothing)


def make_loss(cfg) -> Any:
    """The training loss for `gpc.config`: ours for our model types, else InternEvo's packed-sequence
    cross entropy. (The newest tree's InternLoss smooths labels as Megatron does, with
    s * V / (V - 1) for s: at V = 48,000 a 2e-5 relative difference in the smoothing weight.)"""
    parallel_output = cfg.model.get("parallel_output", False)
    label_smoothing = cfg.loss.get("label_smoothing", 0)
    if cfg.model_type in (MODEL_TYPE_PRO, MODEL_TYPE_PANGU_PI):
        return ChunkedLMLoss(label_smoothing)
    legacy = _optional("internlm.model.losses", "FlashGPTLMLoss")
    if legacy is not None:
        return legacy(parallel_output=parallel_output, label_smoothing=label_smoothing)
    from internlm.model.losses import InternLoss

    return InternLoss(parallel_output=parallel_output, label_smoothing=label_smoothing,
                      op_type=cfg.loss.get("op_type", "py_vocab_parallel"))


def make_trainer(model, optimizer, criterion, train_dl, lr_scheduler, beta2_scheduler, hooks) -> tuple[Any, Any]:
    """(InternEvo Trainer, train loader) from the optimizer, loss and scheduler hooks."""
    from internlm.initialize import initialize_trainer

    common = dict(model=model, optimizer=optimizer, criterion=criterion, lr_scheduler=lr_scheduler,
                  beta2_scheduler=beta2_scheduler, scheduler_hooks=hooks)
    if "train_dataloader" in inspect.signature(initialize_trainer).parameters:
        trainer, train_dl, _, _ = initialize_trainer(train_dataloader=train_dl, **common)
        return trainer, train_dl
    from internlm.core.trainer import Trainer

    engine, scheduler = initialize_trainer(**common)
    return Trainer(engine, scheduler), train_dl


def checkpoint_manager(optimizer, **kwargs) -> Any:
    """InternEvo's CheckpointManager; adds the newest tree's required `meta_data`."""
    from internlm.checkpoint import CheckpointManager

    if "meta_data" in inspect.signature(CheckpointManager.__init__).parameters:
        from internlm.train.pipeline import generate_meta_data

        kwargs["meta_data"] = generate_meta_data(optimizer)
    return CheckpointManager(optimizer=optimizer, **kwargs)


# ---- CPU -----------------------------------------------------------------------------------------

@contextlib.contextmanager
def _cpu_cuda_streams():
    """`torch.cuda.Stream` / `Event` as the CPU accelerator's always-done stand-ins, for one call."""
    import torch

    from rethinktiny.internevo.accelerator import _CPUEvent, _CPUStream

    saved = torch.cuda.Stream, torch.cuda.Event
    torch.cuda.Stream, torch.cuda.Event = _CPUStream, _CPUEvent
    try:
        yield
    finally:
        torch.cuda.Stream, torch.cuda.Event = saved


def prepare_cpu() -> None:
    """Pre-create the newest tree's attention-offload manager with CPU streams (its trainer calls
    `initialize_offload_manager`, which keeps an existing one). Absent in 0.4.9: nothing to do."""
    manager_cls = _optional("internlm.core.parallel.comm.attn_offload", "AttnOffloadManager")
    if manager_cls is None:
        return
    module = sys.modules["internlm.core.parallel.comm.attn_offload"]
    if module.global_attn_offload is None:
        with _cpu_cuda_streams():
            module.global_attn_offload = manager_cls(False)


# ---- InternEvo's own train.py ----------------------------------------------------------------------

def _reraise_after(method: Callable) -> Callable:
    def monitor_exception(*args, **kwargs):
        method(*args, **kwargs)
        if sys.exc_info()[1] is not None:  # called inside train.py's `except Exception:`
            raise  # noqa: PLE0704 - re-raise what the script caught

    monitor_exception.__rethinktiny__ = True
    return monitor_exception


def propagate_script_errors() -> None:
    """Make InternEvo's root `train.py` exit non-zero when training raises.

    - 0.4.9 era: the script's `except Exception:` logs and calls `monitor_manager.monitor_exception`;
      that call now re-raises the exception being handled.
    - newest: `main` is wrapped by `internevo_monitor(clean_run=True)`, which logs and returns; the
      script's `main` (looked up at call time) is re-wrapped with `clean_run=False`. Only a `main`
      made by that very decorator in the running script (`__main__`) is touched.
    """
    manager = _optional("internlm.monitor.monitor", "monitor_manager")
    if manager is not None and not getattr(manager.monitor_exception, "__rethinktiny__", False):
        manager.monitor_exception = _reraise_after(manager.monitor_exception)
    decorator = _optional("internlm.monitor.monitor", "internevo_monitor")
    script = sys.modules.get("__main__")
    main = getattr(script, "main", None)
    if decorator is None or main is None or getattr(main, "__rethinktiny__", False):
        return
    monitor_file = sys.modules["internlm.monitor.monitor"].__file__
    if getattr(getattr(main, "__code__", None), "co_filename", None) == monitor_file and hasattr(main, "__wrapped__"):
        strict = decorator(feishu_alert=True, clean_run=False)(main.__wrapped__)
        strict.__rethinktiny__ = True
        script.main = strict
