import pytest
import torch

from rethinktiny.config import get_preset
from rethinktiny.model import KVCache, PanGuPi, generate

VARIANTS = {
    "pro": get_preset("tiny"),
    "pangu_pi": get_preset("tiny").replace(series_terms=2, aug_shortcuts=2, aug_shortcut_dim=8),
    "bias_mha_tied": get_preset("tiny").replace(num_kv_heads=4, attention_bias=True, tie_embeddings=True),
}


@pytest.fixture(params=sorted(VARIANTS))
def model(request):
    torch.manual_seed(0)
    return PanGuPi(VARIANTS[request.param]).eval()


def test_parameter_count_matches_config(model):
    assert sum(p.numel() for p in model.parameters()) == model.cfg.num_params()


def test_internevo_parameter_names():
    names = set(PanGuPi(get_preset("tiny")).state_dict())
    for key in ("tok_embeddings.weight", "norm.weight", "output.weight", "layers.0.attention.wq.weight",
                "layers.0.attention.wk.weight", "layers.0.attention.wv.weight", "layers.0.attention.wo.weight",
                "layers.3.feed_forward.w1.weight", "layers.3.feed_forward.w2.weight",
                "layers.3.feed_forward.w3.weight", "layers.3.attention_norm.weight", "layers.3.ffn_norm.weight"):
        assert key in names


def test_packed_forward_equals_per_document_forward(model):
    docs = [torch.randint(0, model.cfg.vocab_size, (n,)) for n in (7, 1, 12, 4)]
    packed = torch.cat(docs).unsqueeze(0)
    lengths = torch.tensor([0] + [len(d) for d in docs])
    cu_seqlens = lengths.cumsum(0).to(torch.int32)
    indexes = torch.cat([torch.arange(len(d)) for d in docs]).unsqueeze(0)
    with torch.no_grad():
        packed_logits = model(packed, cu_seqlens=cu_seqlens.unsqueeze(0), indexes=indexes)[0]
        list_logits = model(packed, cu_seqlens=[cu_seqlens], indexes=[indexes[0]])[0]
        separate = torch.cat([model(d.unsqueeze(0))[0] for d in docs])
    torch.testing.assert_close(packed_logits, separate, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(list_logits, packed_logits)


def test_causal_masking(model):
    x = torch.randint(0, model.cfg.vocab_size, (2, 10))
    y = x.clone()
    y[:, 6:] = (y[:, 6:] + 1) % model.cfg.vocab_size  # change only the future
    with torch.no_grad():
        a, b = model(x), model(y)
    torch.testing.assert_close(a[:, :6], b[:, :6])
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_kv_cache_matches_full_forward(model):
    x = torch.randint(0, model.cfg.vocab_size, (1, 11))
    cache = KVCache(model.cfg, 1, 16)
    with torch.no_grad():
        full = model(x)
        steps = [model(x[:, :5], cache=cache)] + [model(x[:, i:i + 1], cache=cache) for i in range(5, 11)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)


def test_greedy_generate_is_the_argmax_of_a_full_forward_pass(model):
    # the KV-cache decode must pick, at every step, what a forward pass over all ids so far picks
    prompt = [1, 5, 9]
    new = generate(model, prompt, max_new_tokens=6)
    assert len(new) == 6
    with torch.no_grad():
        logits = model(torch.tensor([prompt + new]))[0]
    for step, token in enumerate(new):
        last = logits[len(prompt) - 1 + step]
        top2 = last.topk(2).values
        if top2[0] - top2[1] > 1e-4:  # a near-tie may go either way between the two paths
            assert token == int(last.argmax()), f"step {step}"
    stop = generate(model, prompt, max_new_tokens=6, eos_id=new[2])
    assert stop == new[:new.index(new[2]) + 1]  # ends at the first EOS, which it keeps


def test_rope_layout_matches_internevo_interleaved_pairs():
    """RoPE rotates channel pairs (2i, 2i+1): the InternEvo/Meta layout, not HF's rotate_half."""
    from rethinktiny.model import apply_rope, rope_cos_sin

    head_dim = 8
    x = torch.randn(1, 3, 1, head_dim)
    cos, sin = rope_cos_sin(torch.arange(3).unsqueeze(0), head_dim, 10000.0)
    ours = apply_rope(x, cos, sin)
    # Reference via complex multiplication of consecutive pairs.
    pairs = torch.view_as_complex(x.reshape(1, 3, 1, head_dim // 2, 2))
    freqs = torch.polar(torch.ones_like(cos), torch.atan2(sin, cos)).unsqueeze(2)
    ref = torch.view_as_real(pairs * freqs).reshape(1, 3, 1, head_dim)
    # ours keeps rotated pairs de-interleaved: [evens | odds]
    torch.testing.assert_close(ours, torch.cat([ref[..., 0::2], ref[..., 1::2]], dim=-1))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_forward_on_gpu_matches_per_document(dtype):
    """On CUDA packed attention takes flash-attn's varlen kernel (bf16, when installed) or the
    masked SDPA path; both must keep documents apart."""
    torch.manual_seed(0)
    model = PanGuPi(VARIANTS["pro"]).eval().to("cuda", dtype)
    docs = [torch.randint(0, model.cfg.vocab_size, (n,), device="cuda") for n in (33, 7, 60)]
    cu_seqlens = torch.tensor([0, 33, 40, 100], dtype=torch.int32, device="cuda")
    indexes = torch.cat([torch.arange(len(d), device="cuda") for d in docs]).unsqueeze(0)
    with torch.no_grad():
        packed = model(torch.cat(docs).unsqueeze(0), cu_seqlens=cu_seqlens, indexes=indexes)[0].float()
        separate = torch.cat([model(d.unsqueeze(0))[0] for d in docs]).float()
    tolerance = 1e-4 if dtype == torch.float32 else 5e-2
    torch.testing.assert_close(packed, separate, rtol=tolerance, atol=tolerance)
