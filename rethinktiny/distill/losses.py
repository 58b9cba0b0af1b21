"""Knowledge-distillation losses on packed rows, pure torch (no InternEvo).

- `teacher_log_probs`: the teacher's log-probabilities on the student's vocabulary. With a token
  map (the compact vocabulary) they are taken on the kept old ids and renormalised: a log-softmax
  over the kept logits is exactly `log(p / sum_kept p)`. The share of probability the teacher
  puts on the kept ids (`teacher_mass`) says how much of it the compact vocabulary cannot follow.
- `forward_kl`: KL(teacher || student) at temperature T, times T^2 so its gradient scale does not
  depend on T (Hinton et al.); Minitron distils with T = 1 and no CE term.
- `sparse_kl`: the same loss from a sparse summary (ids, weights, teacher log-probs at the ids),
  the form the teacher cache stores. With ids sampled from the teacher and weights = counts / K it
  is an unbiased estimate of the dense loss (random-sampling KD); with top-k ids and their
  probabilities it is the truncated loss (the mass outside the top k is dropped).
Positions whose label is ignored (-100: no next token is trained there) are left out, as in CE.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100


def teacher_log_probs(logits: torch.Tensor, kept: torch.Tensor | None = None,
                      temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(log-probabilities on the student's vocabulary [.., V'], mass on the kept ids [..] or None).

    Args:
        logits: teacher logits [..., V] on its own vocabulary.
        kept: old (teacher) id of each student id, [V'] int64; None when both share a vocabulary.
        temperature: softmax temperature (1: the teacher's own distribution).
    """
    scaled = logits.float() / temperature
    if kept is None:
        return F.log_softmax(scaled, dim=-1), None
    kept_logits = scaled.index_select(-1, kept.to(scaled.device))
    kept_norm = torch.logsumexp(kept_logits, dim=-1, keepdim=True)
    mass = (kept_norm.squeeze(-1) - torch.logsumexp(scaled, dim=-1)).exp()
    return kept_logits - kept_norm, mass


def _valid(labels: torch.Tensor | None, shape: torch.Size) -> torch.Tensor:
    if labels is None:
        return torch.ones(shape, dtype=torch.bool)
    return labels.reshape(shape) != IGNORE


def forward_kl(student_logits: torch.Tensor, teacher_logp: torch.Tensor, labels: torch.Tensor | None = None,
               temperature: float = 1.0) -> torch.Tensor:
    """Mean over trained positions of T^2 * KL(p_teacher || p_student), both at temperature T.

    Args:
        student_logits: [..., V] (any float dtype; computed in float32).
        teacher_logp: [..., V] teacher log-probabilities at temperature T (`teacher_log_probs`).
        labels: [...] next-token labels; positions with -100 are left out.
        temperature: T.
    """
    logp_s = F.log_softmax(student_logits.float() / temperature, dim=-1).reshape(-1, student_logits.shape[-1])
    logp_t = teacher_logp.float().reshape(logp_s.shape).to(logp_s.device)
    valid = _valid(labels, logp_s.shape[:1]).to(logp_s.device)
    per_token = (logp_t.exp() * (logp_t - logp_s)).sum(-1)
    return _masked_mean(per_token, valid) * temperature ** 2


def sparse_kl(student_logits: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, teacher_logp: torch.Tensor,
              labels: torch.Tensor | None = None, temperature: float = 1.0,
              valid: torch.Tensor | None = None) -> torch.Tensor:
    """`forward_kl` from a sparse summary: sum_k w_k (log p_t(id_k) - log p_s(id_k)) per position.

    Args:
        student_logits: [T, V] (or [..., V]; flattened to positions).
        ids: [T, K] student ids; weights: [T, K] (counts / K for sampled ids, probabilities for
            top-k; 0 pads unused slots); teacher_logp: [T, K] teacher log-probabilities at the ids.
        labels: [T] next-token labels (-100 left out); valid: [T] further positions to keep
            (e.g. the ones the cache holds).
    """
    logp_s = F.log_softmax(student_logits.float() / temperature, dim=-1).reshape(-1, student_logits.shape[-1])
    device = logp_s.device
    ids, weights, teacher_logp = ids.to(device).long(), weights.to(device).float(), teacher_logp.to(device).float()
    keep = _valid(labels, logp_s.shape[:1]).to(device)
    if valid is not None:
        keep = keep & valid.to(device)
    per_token = (weights * (teacher_logp - logp_s.gather(-1, ids))).sum(-1)
    return _masked_mean(per_token, keep) * temperature ** 2


def _masked_mean(values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    # A batch with no kept position contributes 0 (with a gradient path, so every rank's backward runs).
    return (values * keep).sum() / keep.sum().clamp(min=1)


def sample_summary(teacher_logp: torch.Tensor, k: int, generator: torch.Generator | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """K ids drawn with replacement from the teacher per position, as (ids, counts, log-probs).

    Duplicates are merged: slot j holds a distinct id and how often it was drawn; unused slots
    have count 0 (and id 0). counts / K are the weights of `sparse_kl` (unbiased).

    Args:
        teacher_logp: [T, V] teacher log-probabilities.
        k: draws per position (<= 255, counts are stored in one byte).
    """
    draws = torch.multinomial(teacher_logp.float().exp(), k, replacement=True, generator=generator)  # [T, K]
    draws, _ = draws.sort(dim=-1)
    first = torch.ones_like(draws, dtype=torch.bool)
    first[:, 1:] = draws[:, 1:] != draws[:, :-1]
    # slot of each draw = number of distinct ids before it; counts by scatter_add into those slots
    slot = first.long().cumsum(-1) - 1
    ids = torch.zeros_like(draws).scatter_(-1, slot, draws)
    counts = torch.zeros_like(draws).scatter_add_(-1, slot, torch.ones_like(draws))
    logp = teacher_logp.float().gather(-1, ids)
    return ids, counts, torch.where(counts > 0, logp, torch.zeros_like(logp))


def topk_summary(teacher_logp: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The teacher's k most likely ids per position as (ids, probabilities, log-probs)."""
    logp, ids = teacher_logp.float().topk(k, dim=-1)
    return ids, logp.exp(), logp
