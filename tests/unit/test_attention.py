"""Packed attention without flash-attn: causal SDPA per document, never a T x T mask."""

import subprocess
import sys
import textwrap

import pytest
import torch

from rethinktiny import model as model_module
from rethinktiny.config import ModelConfig
from rethinktiny.model import (
    FLASH_VARLEN, SDPA_PER_DOCUMENT, Attention, _packed_info, _repeat_kv, _sdpa, apply_rope, attention_path,
    rope_cos_sin,
)

SMALL = ModelConfig(hidden_size=32, num_layers=1, num_attention_heads=2, num_kv_heads=1, intermediate_size=32,
                    vocab_size=16)
T = 8192


def packed(tokens, edges):
    return _packed_info(torch.zeros(1, tokens, dtype=torch.long), torch.tensor(edges, dtype=torch.int32), None)


def masked_reference(attn, x, cos, sin, info):
    """The previous CUDA path: one SDPA call with a block-diagonal causal T x T mask."""
    bsz, total, _ = x.shape
    head_dim, groups = attn.cfg.head_dim, attn.cfg.num_attention_heads // attn.cfg.num_kv_heads
    q = apply_rope(attn.wq(x).view(bsz, total, -1, head_dim), cos, sin)
    k = apply_rope(attn.wk(x).view(bsz, total, -1, head_dim), cos, sin)
    v = attn.wv(x).view(bsz, total, -1, head_dim)
    doc = info.document_ids(total)
    mask = torch.ones(total, total, dtype=torch.bool).tril() & (doc[:, None] == doc[None, :])
    out = _sdpa(q, _repeat_kv(k, groups), _repeat_kv(v, groups), mask, causal=False)
    return attn.wo(out.reshape(bsz, total, -1))


def test_attention_path_names_the_path_that_runs(monkeypatch):
    assert attention_path("cpu") == attention_path(torch.device("cpu")) == SDPA_PER_DOCUMENT
    monkeypatch.setattr(model_module, "flash_attn_varlen_func", None)
    assert attention_path("cuda") == SDPA_PER_DOCUMENT  # no flash-attn installed: no mask either
    monkeypatch.setattr(model_module, "flash_attn_varlen_func", object())
    assert attention_path("cuda") == attention_path("cuda:0", torch.float16) == FLASH_VARLEN
    assert attention_path("cuda", torch.float32) == SDPA_PER_DOCUMENT  # flash-attn has no fp32 kernel
    assert attention_path("cpu") == SDPA_PER_DOCUMENT


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_per_document_sdpa_equals_the_masked_call(dtype, tol):
    torch.manual_seed(0)
    attn = Attention(SMALL, 0).to(dtype)
    total, edges = 50, [0, 7, 8, 30, 30, 50]  # a one-token and an empty document included
    info = packed(total, edges)
    cos, sin = rope_cos_sin((torch.arange(total) - info.cu_seqlens[info.document_ids(total)]).unsqueeze(0),
                            SMALL.head_dim, 1e4)
    x = torch.randn(1, total, SMALL.hidden_size, dtype=dtype, requires_grad=True)
    grad = torch.randn(1, total, SMALL.hidden_size, dtype=dtype)
    ours = attn(x, cos, sin, info)
    ours.backward(grad)
    ours_grads = [x.grad] + [p.grad for p in attn.parameters()]
    x.grad = None
    attn.zero_grad()
    ref = masked_reference(attn, x, cos, sin, info)
    ref.backward(grad)
    torch.testing.assert_close(ours, ref, rtol=tol, atol=tol)
    for mine, theirs in zip(ours_grads, [x.grad] + [p.grad for p in attn.parameters()]):
        torch.testing.assert_close(mine, theirs, rtol=tol, atol=tol)


def test_packed_attention_at_8192_tokens_saves_far_less_than_a_mask():
    attn = Attention(SMALL, 0)
    info = packed(T, [0, 100, 3000, 3001, T])
    cos, sin = rope_cos_sin(torch.arange(T).unsqueeze(0), SMALL.head_dim, 1e4)
    x = torch.randn(1, T, SMALL.hidden_size, requires_grad=True)
    sizes = {}

    def pack(tensor):
        sizes[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        attn(x, cos, sin, info)
    # q, k, v, outputs and log-sum-exps: tens of bytes a token; a boolean T x T mask alone is T*T
    assert sum(sizes.values()) < T * T / 4


def test_packed_attention_at_8192_tokens_peaks_far_below_a_mask():
    # One document of 8,192 tokens (the worst case for a per-document loop), forward and backward
    # in a fresh process: its peak resident memory grows by far less than one fp32 T x T matrix
    # (256 MiB). Measured: this path +20 MiB; the previous masked call +354 MiB.
    script = textwrap.dedent(f"""
        import resource, torch
        from rethinktiny.config import ModelConfig
        from rethinktiny.model import Attention, _packed_info, rope_cos_sin
        cfg = ModelConfig(**{SMALL.to_dict()!r})
        attn = Attention(cfg, 0)
        info = _packed_info(torch.zeros(1, {T}, dtype=torch.long), torch.tensor([0, {T}], dtype=torch.int32), None)
        cos, sin = rope_cos_sin(torch.arange({T}).unsqueeze(0), cfg.head_dim, 1e4)
        x = torch.randn(1, {T}, cfg.hidden_size, requires_grad=True)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        attn(x, cos, sin, info).sum().backward()
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
    """)
    grown = int(subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True)
                .stdout.split()[-1])
    assert grown < T * T * 4 / 4, f"peak grew by {grown / 2**20:.0f} MiB"


def test_sdpa_per_document_reads_the_boundaries_once_per_forward(monkeypatch):
    info = packed(12, [0, 5, 12])
    calls = []
    real = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: calls.append(1) or real(self))
    assert info.bounds == [(0, 5), (5, 12)] and info.bounds == [(0, 5), (5, 12)]
    assert len(calls) == 1  # cached: each layer asks, the host reads them once
