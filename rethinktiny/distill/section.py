"""The `distill=dict(...)` section of a training config, and its check before any rank starts.

    distill = dict(teacher=PATH, token_map=None, kd_weight=1.0, ce_weight=0.0, temperature=1.0)
    distill = dict(cache=FOLDER, kd_weight=1.0, ce_weight=0.0)     # offline: `rethinktiny distill cache`

loss = ce_weight * CE + kd_weight * T^2 * KL(teacher_T || student_T). The defaults are Minitron's
(T = 1, no CE term). `token_map` (the compact vocabulary's token_map.json) is needed when the
student's vocabulary is not the teacher's; the cache records the one it was built with.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rethinktiny.errors import UserError

DISTILL_KEYS = ("teacher", "token_map", "kd_weight", "ce_weight", "temperature", "cache")


@dataclass(frozen=True)
class DistillSpec:
    teacher: str | None = None
    token_map: str | None = None
    kd_weight: float = 1.0
    ce_weight: float = 0.0
    temperature: float = 1.0
    cache: str | None = None


def read_section(section: Any, source: str = "config") -> DistillSpec:
    """The checked `distill` section (keys, types, ranges; no file is opened).

    Args:
        section: the config's `distill` value (a dict).
        source: the config file, for error messages.
    """
    if not isinstance(section, dict):
        raise UserError(f"{source}: distill must be a dict(...), got {type(section).__name__}")
    for key in section:
        if key not in DISTILL_KEYS:
            close = difflib.get_close_matches(str(key), DISTILL_KEYS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(DISTILL_KEYS)})"
            raise UserError(f"{source}: unknown key distill.{key}{hint}")
    spec = DistillSpec(**section)
    if (spec.teacher is None) == (spec.cache is None):
        raise UserError(f"{source}: distill needs exactly one of teacher=PATH (online) or cache=FOLDER (offline)")
    for key in ("kd_weight", "ce_weight", "temperature"):
        value = getattr(spec, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise UserError(f"{source}: distill.{key} must be a number >= 0, got {value!r}")
    if spec.temperature <= 0:
        raise UserError(f"{source}: distill.temperature must be > 0, got {spec.temperature!r}")
    if spec.kd_weight == 0 and spec.ce_weight == 0:
        raise UserError(f"{source}: distill.kd_weight and distill.ce_weight are both 0: nothing to train")
    if spec.cache is not None and spec.token_map is not None:
        raise UserError(f"{source}: distill.token_map is recorded in the cache; drop it next to distill.cache")
    return spec


def _student_vocab(config: Any) -> int | None:
    model = _raw(config).get("model") or {}
    return model.get("vocab_size")


def _raw(config: Any) -> dict:
    return config.raw if hasattr(config, "raw") else config


def check_distill_section(config: Any) -> DistillSpec | None:
    """Everything about `distill` that can fail, checked before any rank starts: keys, the
    teacher (opened: configs and tensor names, no weights), the token map, the vocabularies.

    Args:
        config: a `TrainingConfig` (its `raw` dict is read) or the config's dict itself.
    Returns the spec, or None when the config has no `distill` section.
    """
    raw = _raw(config)
    source = str(getattr(config, "path", "config"))
    if raw.get("distill") is None:
        return None
    spec = read_section(raw["distill"], source)
    student_vocab = _student_vocab(config)
    if spec.cache is not None:
        from rethinktiny.distill.cache import read_cache_manifest

        manifest = read_cache_manifest(spec.cache)
        if student_vocab is not None and manifest["student_vocab"] != student_vocab:
            raise UserError(f"{source}: distill.cache {spec.cache} holds a vocabulary of {manifest['student_vocab']} "
                            f"ids, the student model.vocab_size is {student_vocab}")
        if "temperature" in raw["distill"] and spec.temperature != manifest["temperature"]:
            raise UserError(f"{source}: distill.temperature {spec.temperature} but the cache {spec.cache} was "
                            f"sampled at {manifest['temperature']}; drop the key (the cache's is used)")
        return spec
    from rethinktiny.distill.teacher import teacher_config

    teacher_vocab = teacher_config(spec.teacher).vocab_size
    if spec.token_map is None:
        if student_vocab is not None and student_vocab != teacher_vocab:
            raise UserError(f"{source}: the teacher {spec.teacher} has {teacher_vocab} ids, the student "
                            f"model.vocab_size {student_vocab}; pass distill.token_map (the compact vocabulary's "
                            "token_map.json)")
        return spec
    if not Path(spec.token_map).exists():
        raise UserError(f"{source}: distill.token_map {spec.token_map}: not found")
    load_kept_ids(spec.token_map, teacher_vocab, student_vocab)
    return spec


def load_kept_ids(token_map: str | Path, teacher_vocab: int, student_vocab: int | None):
    """The token map's new->old index as an int64 tensor, checked against both vocabularies."""
    from rethinktiny.inherit.apply import read_token_map
    from rethinktiny.vocab.tokenmap import load_token_map

    if student_vocab is None:
        student_vocab = load_token_map(token_map).new_vocab_size
    return read_token_map(token_map, teacher_vocab, student_vocab)
