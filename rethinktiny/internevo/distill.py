"""Distillation inside InternEvo's trainer: the frozen teacher beside the student, KD in the loss.

Two seams, both installed by `register()`, so our training entry and InternEvo's own `train.py`
distil the same way from a config's `distill=dict(...)` section (`rethinktiny.distill.section`):
- the model builders of PANGU_PI_PRO / PANGU_PI are wrapped (`with_teacher`): after the student is
  built, the teacher is loaded (or the cache opened) and a forward hook on the student runs the
  teacher under `torch.no_grad()` on the very batch the student sees (`input_ids`, `cu_seqlens`,
  `indexes`), or looks the batch's contexts up in the cache. The teacher is no submodule of the
  student: its weights reach neither the optimizer nor the checkpoints.
- `Engine.criterion` (through `rethinktiny.internevo.criterion`, the one loss seam) returns the
  training loss wrapped by `with_kd` so that it adds the KD term of the micro-batch the hook just prepared:
  `ce_weight * CE + kd_weight * KD`. Without gradients (validation) it stays plain CE.
`step_figures()` gives the step's mean kd_loss, ce_loss, teacher_mass (and cache hit share),
averaged over micro-batches and data-parallel ranks, for the trainer's log line.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from rethinktiny.distill.losses import forward_kl, sparse_kl, teacher_log_probs

_DISTILLER: "Distiller | None" = None


class Distiller:
    """The teacher (or its cache) of one training run, and the figures of the current step.

    Args:
        spec: the checked `distill` section.
        student_vocab: the student's vocabulary size.
        dtype: the training dtype (the teacher's weights).
        device: the student's device.
    """

    def __init__(self, spec, student_vocab: int, dtype: torch.dtype, device: torch.device) -> None:
        self.spec = spec
        self.teacher, self.kept, self.cache = None, None, None
        if spec.cache is not None:
            from rethinktiny.distill.cache import TeacherCache

            self.cache = TeacherCache(spec.cache, device)
            self.temperature = self.cache.manifest["temperature"]
        else:
            from rethinktiny.distill.section import load_kept_ids
            from rethinktiny.distill.teacher import load_teacher

            self.teacher = load_teacher(spec.teacher, dtype, device)
            if spec.token_map is not None:
                self.kept = load_kept_ids(spec.token_map, self.teacher.cfg.vocab_size, student_vocab).to(device)
            self.temperature = spec.temperature
        self.pending: dict[str, torch.Tensor] | None = None
        self.sums: dict[str, float] = {}
        self.micro_batches = 0

    # ---- the student's forward hook ----------------------------------------------------------
    def hook(self, _module, args, kwargs, _output) -> None:
        if not torch.is_grad_enabled():  # validation: the loss stays CE
            self.pending = None
            return
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        cu_seqlens, indexes = kwargs.get("cu_seqlens"), kwargs.get("indexes")
        if self.cache is not None:
            self.pending = self._looked_up(input_ids, cu_seqlens, indexes)
            return
        with torch.no_grad():
            ids = self.kept[input_ids] if self.kept is not None else input_ids
            logits = self.teacher(ids, cu_seqlens=cu_seqlens, indexes=indexes)
            logp, mass = teacher_log_probs(logits, self.kept, self.temperature)
        self.pending = {"logp": logp, **({"mass": mass} if mass is not None else {})}

    def _looked_up(self, input_ids, cu_seqlens, indexes) -> dict[str, torch.Tensor]:
        from rethinktiny.distill.cache import context_keys
        from rethinktiny.model import _as_1d

        if indexes is None:
            cu = _as_1d(cu_seqlens, "cu_seqlens").long().cpu()
            positions = torch.arange(int(cu[-1]))
            indexes = positions - cu[torch.searchsorted(cu[1:], positions, right=True)]
        return self.cache.lookup(context_keys(input_ids, _as_1d(indexes, "indexes")))

    # ---- the loss ------------------------------------------------------------------------
    def loss(self, ce: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        pending, self.pending = self.pending, None
        if pending is None:
            raise RuntimeError("distill: the criterion ran without the student's forward before it")
        labels = labels.reshape(-1)
        if "found" in pending:  # from the cache
            kd = sparse_kl(logits, pending["ids"], pending["weights"], pending["logp"], labels, self.temperature,
                           valid=pending["found"])
        else:
            kd = forward_kl(logits, pending["logp"], labels, self.temperature)
        self._add("kd_loss", kd)
        self._add("ce_loss", ce)
        trained = (labels != -100).to(logits.device)
        share = trained.sum().clamp(min=1)
        if "mass" in pending and (self.kept is not None or self.cache is not None and
                                  self.cache.manifest["token_map"]):
            self._add("teacher_mass", (pending["mass"].reshape(-1).float() * trained).sum() / share)
        if "found" in pending:
            self._add("cache_hits", (pending["found"] & trained).sum() / share)
        self.micro_batches += 1
        return self.spec.ce_weight * ce + self.spec.kd_weight * kd

    def _add(self, name: str, value: torch.Tensor) -> None:
        self.sums[name] = self.sums.get(name, 0.0) + float(value.detach())

    def step_figures(self) -> dict[str, float]:
        """This step's means (over micro-batches, then data-parallel ranks); resets them.
        Every rank must call it (it all-reduces)."""
        import torch.distributed as dist

        names = sorted(self.sums)
        if not names:
            return {}
        values = torch.tensor([self.sums[n] / max(self.micro_batches, 1) for n in names], dtype=torch.float64)
        if dist.is_initialized():
            from internlm.core.context import ParallelMode
            from internlm.core.context import global_context as gpc

            device = next(iter(self.teacher.parameters())).device if self.teacher is not None else self.cache.device
            values = values.to(device)
            dist.all_reduce(values, group=gpc.get_group(ParallelMode.DATA))
            values = values.cpu() / gpc.get_world_size(ParallelMode.DATA)
        self.sums, self.micro_batches = {}, 0
        return {name: round(float(v), 6) for name, v in zip(names, values)}


def step_figures() -> dict[str, float]:
    """The running distillation's figures of this step ({} without distillation)."""
    return _DISTILLER.step_figures() if _DISTILLER is not None else {}


def attach(model: torch.nn.Module) -> torch.nn.Module:
    """Set up `gpc.config.distill` (if any) for the freshly built student `model`."""
    global _DISTILLER
    from internlm.core.context import global_context as gpc
    from internlm.utils.common import get_current_device

    from rethinktiny.distill.section import check_distill_section
    from rethinktiny.dtypes import parse_dtype

    spec = check_distill_section(gpc.config)
    if spec is None:
        _DISTILLER = None
        return model
    dtype = parse_dtype(str(gpc.config.model.get("dtype", "torch.float32")))
    _DISTILLER = Distiller(spec, gpc.config.model.vocab_size, dtype, get_current_device())
    model.register_forward_hook(_DISTILLER.hook, with_kwargs=True)
    if gpc.is_rank_for_log():
        what = f"cache {spec.cache}" if spec.cache else f"teacher {spec.teacher}"
        print(f"[rethinktiny] distilling from {what}: kd_weight {spec.kd_weight}, ce_weight {spec.ce_weight}, "
              f"temperature {_DISTILLER.temperature}", flush=True)
    return model


def with_teacher(builder: Callable[..., torch.nn.Module]) -> Callable[..., torch.nn.Module]:
    """A model builder that also sets up the config's distillation for the model it builds."""
    def build(**entry: Any) -> torch.nn.Module:
        return attach(builder(**entry))

    build.__name__ = getattr(builder, "__name__", "build")
    return build


class _DistillingCriterion:
    """InternEvo's loss plus the KD term (what `Engine.criterion` returns while distilling)."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def __call__(self, *args, **kwargs):
        ce = self.inner(*args, **kwargs)
        if _DISTILLER is None or not torch.is_grad_enabled():
            return ce
        return _DISTILLER.loss(ce, args[0], args[-1])

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


def with_kd(inner):
    """`inner` (the training loss) plus the KD term while a distiller is set, else `inner` itself;
    `rethinktiny.internevo.criterion` applies it to what `Engine.criterion` returns."""
    return inner if _DISTILLER is None or inner is None else _DistillingCriterion(inner)
