"""The InternEvo plugin — the only package of rethinktiny that imports `internlm`.

`register()` (run automatically when both rethinktiny and internlm are imported) adds:
- model types `PANGU_PI_PRO` and `PANGU_PI` to InternEvo's model registry;
- the checkpoint-load type `"inherited"` (strict name/shape check);
- the multi-round batch sampler (`data.sampler="multi_round"`) in InternEvo's train loader;
- the training loss of our model types (chunked cross entropy, also under InternEvo's own `train.py`)
  and distillation from a config's `distill=dict(...)` section (`rethinktiny.internevo.criterion`,
  `rethinktiny.internevo.distill`);
- the CPU accelerator and gloo backend when CUDA is not available;
- the work-arounds in `compat` (IPv4 init method, weights-only resume) and, through `api` (the
  one module that knows how InternEvo versions differ), a non-zero exit status for InternEvo's own
  `train.py` when training fails.
It is safe to call any number of times.
"""

from __future__ import annotations

import torch

from rethinktiny.config import MODEL_TYPE_PANGU_PI, MODEL_TYPE_PRO

_state = "idle"  # idle -> running -> done (or back to idle after a failure); "running" stops re-entry


def _register_models() -> None:
    from rethinktiny.internevo import api
    from rethinktiny.internevo.builder import build_pangu_pi, build_pangu_pi_pro
    from rethinktiny.internevo.distill import with_teacher

    registry = api.model_registry()  # raises a one-line error when this InternEvo has none
    for name, builder in ((MODEL_TYPE_PRO, build_pangu_pi_pro), (MODEL_TYPE_PANGU_PI, build_pangu_pi)):
        api.register_model(registry, name, with_teacher(builder))  # with_teacher: the config's `distill`


def _register_load_type() -> None:
    from internlm.checkpoint.checkpoint_manager import CheckpointLoadMethod

    from rethinktiny.internevo.loadtype import LOAD_TYPE, load_inherited, refusing_rotate_half

    CheckpointLoadMethod.LOAD_TYPE_FUNC[LOAD_TYPE] = load_inherited
    funcs = CheckpointLoadMethod.LOAD_TYPE_FUNC
    funcs["internevo"] = refusing_rotate_half(funcs["internevo"])


def _register_all() -> None:
    import internlm  # noqa: F401  (fires rethinktiny's import hook, which finds us running)

    from rethinktiny.internevo import api, compat

    compat.apply_all()
    if not torch.cuda.is_available():
        from rethinktiny.internevo.accelerator import install_cpu_accelerator

        install_cpu_accelerator()
        api.prepare_cpu()
    _register_models()
    _register_load_type()
    from rethinktiny.internevo import sampler

    sampler.install()
    from rethinktiny.internevo import criterion

    criterion.install()  # Engine.criterion: our chunked loss for our model types, plus a `distill` section's KD
    api.propagate_script_errors()


def register() -> None:
    """Register rethinktiny's models, load type and CPU support into InternEvo (idempotent).

    Every step is idempotent, so a failure leaves `_state` idle and the next call redoes all of
    them; the failure itself always propagates (a config that imports rethinktiny then fails to
    load instead of training a model type that was never registered).
    """
    global _state
    if _state != "idle":
        return
    _state = "running"
    try:
        _register_all()
        _state = "done"
    finally:
        if _state != "done":
            _state = "idle"


# Importing this package imports InternEvo, which (through rethinktiny's import hook) calls
# register(); it must come after register() is defined so the hook can find it.
import internlm  # noqa: E402,F401
