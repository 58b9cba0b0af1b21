"""The InternEvo plugin — the only package of rethinktiny that imports `internlm`.

`register()` (run automatically when both rethinktiny and internlm are imported) adds:
- model types `PANGU_PI_PRO` and `PANGU_PI` to InternEvo's model registry;
- the checkpoint-load type `"inherited"` (strict name/shape check);
- the multi-round batch sampler (`data.sampler="multi_round"`) in InternEvo's train loader;
- the CPU accelerator and gloo backend when CUDA is not available;
- the work-arounds in `compat` (IPv4 init method, weights-only resume).
It is safe to call any number of times.
"""

from __future__ import annotations

import torch

from rethinktiny.config import MODEL_TYPE_PANGU_PI, MODEL_TYPE_PRO

_state = "idle"  # idle -> running -> done; "running" stops re-entry from the import hook


def _model_registries():
    """(registry, style) for each InternEvo model registry layout that is importable."""
    found = []
    try:  # 0.4.x
        from internlm.utils.registry import MODEL_INITIALIZER

        found.append((MODEL_INITIALIZER, "decorator"))
    except ImportError:
        pass
    try:  # newer layout: register_module(name, builder)
        from internlm.model.registry import model_initializer

        found.append((model_initializer, "direct"))
    except ImportError:
        pass
    return found


def _register_models() -> None:
    from rethinktiny.internevo.builder import build_pangu_pi, build_pangu_pi_pro

    for registry, style in _model_registries():
        for name, builder in ((MODEL_TYPE_PRO, build_pangu_pi_pro), (MODEL_TYPE_PANGU_PI, build_pangu_pi)):
            if registry.has(name):  # the registry asserts on duplicates
                continue
            if style == "decorator":
                registry.register_module(module_name=name)(builder)
            else:
                registry.register_module(name, builder)


def _register_load_type() -> None:
    from internlm.checkpoint.checkpoint_manager import CheckpointLoadMethod

    from rethinktiny.internevo.loadtype import LOAD_TYPE, load_inherited

    CheckpointLoadMethod.LOAD_TYPE_FUNC[LOAD_TYPE] = load_inherited


def register() -> None:
    """Register rethinktiny's models, load type and CPU support into InternEvo (idempotent)."""
    global _state
    if _state != "idle":
        return
    _state = "running"
    import internlm  # noqa: F401  (fires rethinktiny's import hook, which finds us running)

    from rethinktiny.internevo import compat

    compat.apply_all()
    if not torch.cuda.is_available():
        from rethinktiny.internevo.accelerator import install_cpu_accelerator

        install_cpu_accelerator()
    _register_models()
    _register_load_type()
    from rethinktiny.internevo import sampler

    sampler.install()
    _state = "done"


# Importing this package imports InternEvo, which (through rethinktiny's import hook) calls
# register(); it must come after register() is defined so the hook can find it.
import internlm  # noqa: E402,F401
