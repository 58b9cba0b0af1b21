"""PanGu-π / PanGu-π Pro decoder in one file of pure torch.

Parameter names follow InternEvo's LLAMA2 model (`tok_embeddings`, `layers.{i}.attention.wq/wk/wv/wo`,
`layers.{i}.feed_forward.w1/w2/w3`, `attention_norm`, `ffn_norm`, `norm`, `output`), so an
InternEvo LLAMA2 checkpoint loads with `strict=True`.

RoPE uses InternEvo's (and Meta's original LLaMA) layout: channels (2i, 2i+1) of a head form the
rotated pair. We rotate the even/odd halves and keep them de-interleaved, as InternEvo does;
q.k is unchanged by applying the same permutation to q and k, so the attention output is exact.

Two input forms:
- unpacked `input_ids [B, S]`: causal attention per row;
- InternEvo packed `input_ids [1, T]` with `cu_seqlens` (document boundaries) and `indexes`
  (position of each token inside its document): attention never crosses a boundary. Uses
  flash-attn's varlen kernel when installed and on CUDA, else torch SDPA with a block-diagonal
  causal mask, so packed data also trains on CPU.

PanGu-π block options (off in "Pro"): the series-informed activation
`act(z) = sum_i a_i * silu(z + b_i)` in the FFN, and augmented shortcuts added to the attention
output, each a bottleneck `up(silu(down(x)))`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rethinktiny.config import ModelConfig

try:  # optional GPU speed-up; never required
    from flash_attn import flash_attn_varlen_func
except ImportError:
    flash_attn_varlen_func = None


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 for bf16/fp16 stability, as InternEvo does.
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed * self.weight.float()).to(x.dtype)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of shape [*positions.shape, head_dim // 2] (computed in fp32)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim))
    angles = positions.to(torch.float32)[..., None] * inv_freq
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [..., S, H, D] with D laid out as interleaved pairs; cos/sin: [..., S, D/2].

    Returns the rotated pairs de-interleaved ([even half | odd half]); see module docstring.
    """
    even, odd = x[..., 0::2].float(), x[..., 1::2].float()
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)  # broadcast over heads
    rotated = torch.cat([even * cos - odd * sin, even * sin + odd * cos], dim=-1)
    return rotated.to(x.dtype)


@dataclass
class PackedInfo:
    """Document boundaries of a packed row: cu_seqlens [n+1] (int32) and max document length."""

    cu_seqlens: torch.Tensor
    max_seqlen: int

    @property
    def bounds(self) -> list[tuple[int, int]]:
        edges = self.cu_seqlens.tolist()
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
        if flash_attn_varlen_func is not None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
            cu = packed.cu_seqlens.to(torch.int32)
            out = flash_attn_varlen_func(q[0], k[0], v[0], cu, cu, packed.max_seqlen, packed.max_seqlen,
                                         causal=True)
            return out.unsqueeze(0)
        k, v = _repeat_kv(k, groups), _repeat_kv(v, groups)
        if not q.is_cuda:
            # CPU: causal attention per document uses the fused kernel and skips the cross-document
            # blocks a mask would still compute (2-6x faster than the masked call, measured).
            return torch.cat([_sdpa(q[:, a:b], k[:, a:b], v[:, a:b], None, causal=True) for a, b in packed.bounds],
                             dim=1)
        total = q.shape[1]
        doc = packed.document_ids(total)
        causal = torch.ones(total, total, dtype=torch.bool, device=q.device).tril()
        return _sdpa(q, k, v, causal & (doc[:, None] == doc[None, :]), causal=False)

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

    def forward(self, input_ids: torch.Tensor, cu_seqlens=None, indexes=None,
                cache: KVCache | None = None, **_unused) -> torch.Tensor:
        # **_unused: InternEvo's schedulers may pass extra batch keys (e.g. max_seqlen).
        hidden = self.tok_embeddings(input_ids)
        packed, positions = None, None
        if cu_seqlens is not None:
            cu = _as_1d(cu_seqlens, "cu_seqlens").to(input_ids.device)
            if input_ids.shape[0] != 1:
                raise ValueError(f"packed input must be [1, T], got {tuple(input_ids.shape)}")
            if int(cu[0]) != 0 or int(cu[-1]) != input_ids.shape[1]:
                raise ValueError(f"cu_seqlens must run from 0 to {input_ids.shape[1]}, got {cu.tolist()}")
            packed = PackedInfo(cu, int((cu[1:] - cu[:-1]).max().item()))
            if indexes is None:
                positions = torch.arange(input_ids.shape[1], device=input_ids.device) - cu[packed.document_ids(input_ids.shape[1])]
            else:
                positions = _as_1d(indexes, "indexes").to(input_ids.device)
            positions = positions.unsqueeze(0)
        else:
            start = cache.length if cache is not None else 0
            positions = torch.arange(start, start + input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        cos, sin = rope_cos_sin(positions, self.cfg.head_dim, self.cfg.rope_theta)
        for layer in self.layers:
            hidden = layer(hidden, cos, sin, packed, cache)
        if cache is not None:
            cache.length += input_ids.shape[1]
        return self.output(self.norm(hidden))


def parameter_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every state-dict name of `PanGuPi(cfg)` with its shape, in model order.

    Built on the meta device, so asking for a 7B shape allocates nothing.
    """
    with torch.device("meta"):
        model = PanGuPi(cfg)
    return {name: tuple(t.shape) for name, t in model.state_dict(keep_vars=True).items()}


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
