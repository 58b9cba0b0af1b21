"""The one seam for the training loss: `Engine.criterion`, a property in every InternEvo version we
run, which the schedulers call for every micro-batch.

Through it, both trainers (rethinktiny's training entry and InternEvo's own `train.py`) compute the
same loss for a config of our model types:
- the chunked cross entropy of `api.ChunkedLMLoss` (fp32 per 4,096-token chunk, never the whole
  micro-batch's fp32 log-probabilities: the memory plan counts on it). InternEvo's `train.py` builds
  its own `FlashGPTLMLoss` / `InternLoss` and cannot be told otherwise, so that loss is replaced
  here, with the label smoothing of the config's `loss` section, as that `train.py` reads it;
- plus the KD term of a `distill` section (`rethinktiny.internevo.distill.with_kd`).
InternEvo's own model types keep InternEvo's loss.
"""

from __future__ import annotations

from rethinktiny.config import MODEL_TYPE_PANGU_PI, MODEL_TYPE_PRO


def _our_loss(engine, inner):
    """`inner`, or our chunked loss in its place when the config trains one of our model types."""
    from internlm.core.context import global_context as gpc

    from rethinktiny.internevo.api import ChunkedLMLoss, make_loss

    if inner is None or isinstance(inner, ChunkedLMLoss):
        return inner
    if gpc.config.get("model_type") not in (MODEL_TYPE_PRO, MODEL_TYPE_PANGU_PI):
        return inner
    cached = engine.__dict__.get("_rethinktiny_loss")
    if cached is None or cached[0] is not inner:  # one replacement per loss the engine was given
        cached = (inner, make_loss(gpc.config))
        engine.__dict__["_rethinktiny_loss"] = cached
        if gpc.is_rank_for_log():
            print(f"[rethinktiny] loss: chunked cross entropy in place of {type(inner).__name__} "
                  f"({gpc.config.model_type})", flush=True)
    return cached[1]


def install() -> None:
    """Make `Engine.criterion` return our loss for our model types, plus the KD term while
    distilling (idempotent)."""
    from internlm.core.engine import Engine

    from rethinktiny.internevo.distill import with_kd

    if getattr(Engine, "_rethinktiny_criterion", False):
        return
    plain = Engine.criterion.fget

    def criterion(self):
        return with_kd(_our_loss(self, plain(self)))

    Engine.criterion = property(criterion)
    Engine._rethinktiny_criterion = True
