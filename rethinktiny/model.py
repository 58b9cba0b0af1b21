"""PanGu-π / PanGu-π Pro decoder in one file of pure torch.

Parameter names follow InternEvo's LLAMA2 model (`tok_embeddings`, `layers.{i}.attention.wq/wk/wv/wo`,
`layers.{i}.feed_forward.w1/w2/w3`, `attention_norm`, `ffn_norm`, `norm`, `output`), so an
InternEvo LLAMA2 checkpoint loads with `strict=True`.

RoPE uses InternEvo's (and Meta's original LLaMA) layout: channels (2i, 2i+1) of a head form the
rotated pair. We rotate the even/odd halves and keep them de-interleaved, as InternEvo does;
q.k is unchanged by applying the same permutation to q and k, so the attention output is exact.

Two input forms:
- unpacked `input_ids [B, S]`: causal attention per row;
- InternEvo packed `input_ids [1, T]` with `cu_seqlens` (document boundaries), `indexes`
  (position of each token inside its document) and optionally `max_seqlen`: attention never
  crosses a boundary. Uses flash-attn's varlen kernel when installed and on CUDA in bf16/fp16, else
  causal torch SDPA per document, so no T x T mask is ever built (`attention_path` names the one
  that runs). FlexAttention with a document mask would be the other mask-free path; torch 2.13 has
  no FlexAttention backward on CPU, so SDPA per document is the one path on every device.

Memory (what autograd keeps for backward, measured with saved_tensors_hooks in
tests/unit/test_model_memory.py): RMSNorm is a small autograd function that keeps its input in
the model's dtype and one fp32 1/rms per token, not the fp32 copies plain autograd would (8 bytes
per element in bf16 against 2); RoPE keeps only the cos/sin tables, shared by all layers;
`cfg.checkpoint` recomputes the first `cfg.checkpoint_layers` blocks in backward (their input
alone is kept); `chunked_cross_entropy` never holds fp32 logits for more than `LOSS_CHUNK_TOKENS`
tokens at once.

PanGu-π block options (off in "Pro"): the series-informed activation
`act(z) = sum_i a_i * silu(z + b_i)` in the FFN, and augmented shortcuts added to the attention
output, each a bottleneck `up(silu(down(x)))`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from rethinktiny.config import ModelConfig

try:  # optional GPU speed-up; never required
    from flash_attn import flash_attn_varlen_func
except ImportError:
    flash_attn_varlen_func = None


class RMSNormFunction(torch.autograd.Function):
    """`x / rms(x) * weight` computed in fp32 (for bf16/fp16 stability, as InternEvo does) and
    returned in x's dtype. Keeps x as it came and 1/rms (fp32, one per row) for backward, which
    recomputes the fp32 normalised rows; plain autograd would keep the fp32 copy of x and of the
    normalised rows (8 bytes per element in bf16 instead of 2)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        x32 = x.float()
        rstd = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x, weight, rstd)
        return (x32 * rstd * weight.float()).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight, rstd = ctx.saved_tensors
        normed, grad32 = x.float() * rstd, grad.float()
        grad_normed = grad32 * weight.float()
        # d(x * rstd)/dx: rstd * (g - normed * mean(g * normed)) along the normalised dimension
        grad_x = rstd * (grad_normed - normed * (grad_normed * normed).mean(-1, keepdim=True))
        grad_weight = (grad32 * normed).reshape(-1, normed.shape[-1]).sum(0).to(weight.dtype)
        return grad_x.to(x.dtype), grad_weight, None


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return RMSNormFunction.apply(x, self.weight, self.eps)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of shape [*positions.shape, head_dim // 2] (computed in fp32)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim))
    angles = positions.to(torch.float32)[..., None] * inv_freq
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [..., S, H, D] with D laid out as interleaved pairs; cos/sin: [..., S, D/2].

    Returns the rotated pairs de-interleaved ([even half | odd half]); see module docstring.
    Rotates in fp32; autograd keeps only cos and sin (the tables need no gradient, so the products
    keep them and not the fp32 halves of x).
    """
    even, odd = x[..., 0::2].float(), x[..., 1::2].float()
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)  # broadcast over heads
    rotated = torch.cat([even * cos - odd * sin, even * sin + odd * cos], dim=-1)
    return rotated.to(x.dtype)


@dataclass
class PackedInfo:
    """Document boundaries of a packed row: cu_seqlens [n+1] (int32, on the model's device), the
    longest document, and the same boundaries on the host when they are already there."""

    cu_seqlens: torch.Tensor
    max_seqlen: int
    host_cu_seqlens: torch.Tensor | None = None

    @cached_property
    def bounds(self) -> list[tuple[int, int]]:
        """(start, end) of each non-empty document; read once per forward, by the first layer that
        needs them (SDPA per document), never by flash-attn's path."""
        edges = (self.host_cu_seqlens if self.host_cu_seqlens is not None else self.cu_seqlens).tolist()
        return [(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]

    def document_ids(self, total: int) -> torch.Tensor:
        positions = torch.arange(total, device=self.cu_seqlens.device)
        return torch.searchsorted(self.cu_seqlens[1:].to(torch.long), positions, right=True)


class KVCache:
    """Pre-allocated keys/values for incremental decoding (batch B, up to max_len positions)."""

    def __init__(self, cfg: ModelConfig, batch: int, max_len: int, device=None, dtype=torch.float32) -> None:
        shape = (batch, max_len, cfg.num_kv_heads, cfg.head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.num_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.num_layers)]
        self.length = 0
        self.max_len = max_len


def _repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """[B, S, kv, D] -> [B, S, kv*groups, D] so each query head sees its key/value head."""
    return x if groups == 1 else x.repeat_interleave(groups, dim=2)


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, causal: bool) -> torch.Tensor:
    """q,k,v: [B, S, H, D] -> [B, S, H, D] through torch SDPA (layout [B, H, S, D])."""
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, is_causal=causal)
    return out.transpose(1, 2)


FLASH_VARLEN = "flash-attn varlen"
SDPA_PER_DOCUMENT = "SDPA per document"


def attention_path(device: torch.device | str, dtype: torch.dtype = torch.bfloat16) -> str:
    """The packed-attention path `PanGuPi` runs on `device` for activations of `dtype`: flash-attn's
    varlen kernel when it is installed and the device is CUDA in bf16/fp16, else causal SDPA per
    document (every device; the document boundaries are read to the host once per forward)."""
    on_cuda = torch.device(device).type == "cuda"
    if flash_attn_varlen_func is not None and on_cuda and dtype in (torch.float16, torch.bfloat16):
        return FLASH_VARLEN
    return SDPA_PER_DOCUMENT


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.layer_idx = layer_idx
        biased = cfg.biased_projections  # all four (InternEvo no_bias=False), q/k/v only (Qwen2), none
        self.wq = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias="wq" in biased)
        self.wk = nn.Linear(cfg.hidden_size, cfg.kv_dim, bias="wk" in biased)
        self.wv = nn.Linear(cfg.hidden_size, cfg.kv_dim, bias="wv" in biased)
        self.wo = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias="wo" in biased)
        if cfg.aug_shortcuts:
            self.shortcuts = nn.ModuleList(AugmentedShortcut(cfg) for _ in range(cfg.aug_shortcuts))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                packed: PackedInfo | None = None, cache: KVCache | None = None) -> torch.Tensor:
        bsz, seqlen, _ = x.shape
        head_dim, groups = self.cfg.head_dim, self.cfg.num_attention_heads // self.cfg.num_kv_heads
        q = self.wq(x).view(bsz, seqlen, -1, head_dim)
        k = self.wk(x).view(bsz, seqlen, -1, head_dim)
        v = self.wv(x).view(bsz, seqlen, -1, head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if packed is not None:
            out = self._packed_attention(q, k, v, packed, groups)
        elif cache is not None:
            out = self._cached_attention(q, k, v, cache, groups)
        else:
            out = _sdpa(q, _repeat_kv(k, groups), _repeat_kv(v, groups), None, causal=True)
        out = self.wo(out.reshape(bsz, seqlen, -1))
        if self.cfg.aug_shortcuts:
            out = out + sum(shortcut(x) for shortcut in self.shortcuts)
        return out

    def _packed_attention(self, q, k, v, packed: PackedInfo, groups: int) -> torch.Tensor:
        if attention_path(q.device, q.dtype) == FLASH_VARLEN:
            cu = packed.cu_seqlens.to(torch.int32)
            out = flash_attn_varlen_func(q[0], k[0], v[0], cu, cu, packed.max_seqlen, packed.max_seqlen,
                                         causal=True)
            return out.unsqueeze(0)
        # Causal SDPA per document: no T x T mask (30,720^2 at the 1B config's micro-batch), and the
        # fused kernel skips the cross-document blocks a mask would still compute (on CPU 2-6x
        # faster than the masked call, measured).
        k, v = _repeat_kv(k, groups), _repeat_kv(v, groups)
        return torch.cat([_sdpa(q[:, a:b], k[:, a:b], v[:, a:b], None, causal=True) for a, b in packed.bounds],
                         dim=1)

    def _cached_attention(self, q, k, v, cache: KVCache, groups: int) -> torch.Tensor:
        start, seqlen = cache.length, q.shape[1]
        if start + seqlen > cache.max_len:
            raise ValueError(f"KV cache of {cache.max_len} positions is full")
        cache.keys[self.layer_idx][:, start:start + seqlen] = k
        cache.values[self.layer_idx][:, start:start + seqlen] = v
        keys = cache.keys[self.layer_idx][:, :start + seqlen]
        values = cache.values[self.layer_idx][:, :start + seqlen]
        mask = None
        if seqlen > 1:  # prefill: query i sees cached positions and itself
            mask = torch.ones(seqlen, start + seqlen, dtype=torch.bool, device=q.device).tril(diagonal=start)
        return _sdpa(q, _repeat_kv(keys, groups), _repeat_kv(values, groups), mask, causal=False)


class AugmentedShortcut(nn.Module):
    """PanGu-π augmented shortcut: a bottleneck branch parallel to attention."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.down = nn.Linear(cfg.hidden_size, cfg.aug_shortcut_dim, bias=False)
        self.up = nn.Linear(cfg.aug_shortcut_dim, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(F.silu(self.down(x)))


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.w1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.w3 = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.w2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)
        self.series_terms = cfg.series_terms
        if cfg.series_terms:
            # a_i, b_i of the series-informed activation; distinct shifts so the terms differ.
            self.series_scale = nn.Parameter(torch.full((cfg.series_terms,), 1.0 / cfg.series_terms))
            self.series_shift = nn.Parameter(torch.linspace(-0.5, 0.5, cfg.series_terms) if cfg.series_terms > 1
                                             else torch.zeros(1))

    def activation(self, z: torch.Tensor) -> torch.Tensor:
        if not self.series_terms:
            return F.silu(z)
        return sum(self.series_scale[i] * F.silu(z + self.series_shift[i]) for i in range(self.series_terms))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(self.activation(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.attention = Attention(cfg, layer_idx)
        self.ffn_norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.feed_forward = FeedForward(cfg)

    def forward(self, x, cos, sin, packed=None, cache=None):
        x = x + self.attention(self.attention_norm(x), cos, sin, packed, cache)
        return x + self.feed_forward(self.ffn_norm(x))


def _as_1d(value: torch.Tensor | Sequence[torch.Tensor], name: str) -> torch.Tensor:
    """InternEvo hands `cu_seqlens`/`indexes` as [n], [1, n] or a one-element list of 1-D tensors."""
    if isinstance(value, (list, tuple)):
        if len(value) != 1:
            raise ValueError(f"{name}: expected one packed row, got {len(value)}")
        value = value[0]
    if value.dim() == 2:
        if value.shape[0] != 1:
            raise ValueError(f"{name}: expected one packed row, got shape {tuple(value.shape)}")
        value = value[0]
    return value


class PanGuPi(nn.Module):
    """The decoder. `forward` returns logits [B, S, vocab]."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.output = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, std: float = 0.02) -> None:
        """InternEvo's init: N(0, std), output projections (wo, w2) scaled by 1/sqrt(2*(layer+1))."""
        for name, param in self.named_parameters():
            if param.dim() == 1:
                if name.endswith("series_scale") or name.endswith("series_shift"):
                    continue  # keep the constructor's values
                param.fill_(1.0) if "norm" in name else param.zero_()
            elif ".shortcuts." in name and name.endswith("up.weight"):
                param.zero_()  # shortcuts start as a no-op branch
            elif name.endswith(("wo.weight", "w2.weight")):
                layer_idx = int(name.split(".")[1])
                param.normal_(0.0, std / math.sqrt(2.0 * (layer_idx + 1)))
            else:
                param.normal_(0.0, std)

    def forward(self, input_ids: torch.Tensor, cu_seqlens=None, indexes=None, max_seqlen=None,
                cache: KVCache | None = None, **_unused) -> torch.Tensor:
        # **_unused: InternEvo's schedulers may pass extra batch keys.
        hidden = self.tok_embeddings(input_ids)
        packed = None
        if cu_seqlens is not None:
            packed = _packed_info(input_ids, cu_seqlens, max_seqlen)
            if indexes is None:
                positions = torch.arange(input_ids.shape[1], device=input_ids.device)
                positions = positions - packed.cu_seqlens[packed.document_ids(input_ids.shape[1])]
            else:
                positions = _as_1d(indexes, "indexes").to(input_ids.device)
            positions = positions.unsqueeze(0)
        else:
            start = cache.length if cache is not None else 0
            positions = torch.arange(start, start + input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        cos, sin = rope_cos_sin(positions, self.cfg.head_dim, self.cfg.rope_theta)
        recompute = self.training and cache is None and torch.is_grad_enabled()
        for i, layer in enumerate(self.layers):
            if recompute and i < self.cfg.checkpoint_layers:
                # Activation checkpointing (InternEvo's `model.checkpoint`): autograd keeps this
                # block's input only and runs the block again in backward.
                hidden = checkpoint(layer, hidden, cos, sin, packed, use_reentrant=False)
            else:
                hidden = layer(hidden, cos, sin, packed, cache)
        if cache is not None:
            cache.length += input_ids.shape[1]
        return self.output(self.norm(hidden))


def _packed_info(input_ids: torch.Tensor, cu_seqlens, max_seqlen) -> PackedInfo:
    """The document boundaries of a packed [1, T] row, without reading anything back from the
    device when InternEvo passes `max_seqlen` (its newest tree does; 0.4.9 does not, which costs one
    read-back of the longest document per forward). Checked against T when they are on the host."""
    if input_ids.shape[0] != 1:
        raise ValueError(f"packed input must be [1, T], got {tuple(input_ids.shape)}")
    cu = _as_1d(cu_seqlens, "cu_seqlens")
    host = cu if cu.device.type == "cpu" else None
    if host is not None and (int(host[0]) != 0 or int(host[-1]) != input_ids.shape[1]):
        raise ValueError(f"cu_seqlens must run from 0 to {input_ids.shape[1]}, got {host.tolist()}")
    if max_seqlen is None:
        max_seqlen = (cu[1:] - cu[:-1]).max()
    return PackedInfo(cu.to(input_ids.device), int(max_seqlen), host)


def parameter_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every state-dict name of `PanGuPi(cfg)` with its shape, in model order.

    Built on the meta device, so asking for a 7B shape allocates nothing.
    """
    with torch.device("meta"):
        model = PanGuPi(cfg)
    return {name: tuple(t.shape) for name, t in model.state_dict(keep_vars=True).items()}


LOSS_CHUNK_TOKENS = 4096  # fp32 rows the loss holds at once: 4096 x 48,000 x 4 bytes = 786 MB


class ChunkedCrossEntropy(torch.autograd.Function):
    """Mean token cross entropy of `logits [N, V]` (any float dtype) against `labels [N]`, with
    torch's label smoothing and `ignore_index`, computed `chunk` rows at a time in fp32.

    Keeps the logits as they came and one fp32 log-sum-exp per row; backward writes the gradient in
    the logits' dtype chunk by chunk. torch's cross entropy on bf16 logits under autocast (as
    InternEvo's newest loss runs it) holds an fp32 copy of all logits, their log-softmax and its
    gradient at once: 3 x 5.9 GB at 30,720 tokens x 48,000.
    """

    @staticmethod
    def forward(ctx, logits, labels, label_smoothing: float, ignore_index: int, chunk: int):
        valid = labels != ignore_index
        targets = torch.where(valid, labels, 0)
        lse = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
        losses = torch.empty_like(lse)
        for start in range(0, logits.shape[0], chunk):
            rows = slice(start, start + chunk)
            x = logits[rows].float()
            lse[rows] = torch.logsumexp(x, dim=-1)
            loss = lse[rows] - x.gather(1, targets[rows, None])[:, 0]
            if label_smoothing:
                loss = (1 - label_smoothing) * loss + label_smoothing * (lse[rows] - x.mean(dim=-1))
            losses[rows] = loss
        count = valid.sum()  # stays on the device: no read-back
        ctx.save_for_backward(logits, targets, valid, lse, count)
        ctx.label_smoothing, ctx.chunk = label_smoothing, chunk
        return torch.where(valid, losses, 0).sum() / count

    @staticmethod
    def backward(ctx, grad):
        logits, targets, valid, lse, count = ctx.saved_tensors
        smoothing, vocab = ctx.label_smoothing, logits.shape[-1]
        scale = torch.where(valid, grad / count, 0)
        grad_logits = torch.empty_like(logits)
        for start in range(0, logits.shape[0], ctx.chunk):
            rows = slice(start, start + ctx.chunk)
            # a copy even of fp32 logits, which the in-place steps must not touch: one fp32 chunk
            probs = logits[rows].to(torch.float32, copy=True).sub_(lse[rows, None]).exp_()
            if smoothing:
                probs.sub_(smoothing / vocab)
            probs.scatter_add_(1, targets[rows, None], torch.full_like(probs[:, :1], -(1 - smoothing)))
            grad_logits[rows] = probs.mul_(scale[rows, None])
        return grad_logits, None, None, None, None


def chunked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0,
                          ignore_index: int = -100, chunk: int = LOSS_CHUNK_TOKENS) -> torch.Tensor:
    """`F.cross_entropy(logits.view(-1, V).float(), labels.view(-1), ...)` (mean over the tokens
    whose label is not `ignore_index`) in fp32 and in the same value and gradient, without holding
    fp32 logits for more than `chunk` tokens at once (see ChunkedCrossEntropy).

    Args:
        logits: [..., V] in any float dtype; the gradient comes back in that dtype.
        labels: the matching [...] token ids.
        label_smoothing: torch's: (1 - s) * NLL + s * mean over the vocabulary of -log p.
    """
    flat = logits.reshape(-1, logits.shape[-1])
    return ChunkedCrossEntropy.apply(flat, labels.reshape(-1).to(flat.device), float(label_smoothing),
                                     ignore_index, chunk)


@torch.no_grad()
def generate(model: PanGuPi, prompt_ids: Sequence[int], max_new_tokens: int, eos_id: int | None = None,
             temperature: float = 0.0, generator: torch.Generator | None = None) -> list[int]:
    """Greedy (temperature 0) or sampled decoding with a KV cache; returns only the new ids."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    cache = KVCache(model.cfg, 1, len(prompt_ids) + max_new_tokens, device=device, dtype=dtype)
    logits = model(torch.tensor([list(prompt_ids)], device=device), cache=cache)
    new_ids: list[int] = []
    for _ in range(max_new_tokens):
        last = logits[0, -1].float()
        if temperature > 0:
            next_id = int(torch.multinomial(torch.softmax(last / temperature, -1), 1, generator=generator))
        else:
            next_id = int(last.argmax())
        new_ids.append(next_id)
        if eos_id is not None and next_id == eos_id:
            break
        logits = model(torch.tensor([[next_id]], device=device), cache=cache)
    return new_ids
