import pytest
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from rethinktiny.arch import costs
from rethinktiny.config import get_preset
from rethinktiny.errors import UserError
from rethinktiny.model import KVCache, PanGuPi

TINY = get_preset("tiny").replace(num_layers=2, vocab_size=512)  # GQA: 4 query heads, 2 kv heads
VARIANTS = {
    "pro_gqa": TINY,
    "pangu_pi": TINY.replace(series_terms=2, aug_shortcuts=2, aug_shortcut_dim=8),
    "bias_mha_tied": TINY.replace(num_kv_heads=4, attention_bias=True, tie_embeddings=True),
}


def _counted_flops(cfg, seq_len: int, batch: int, backward: bool) -> float:
    """Matmul FLOPs per token as torch counts them. The math SDPA backend decomposes attention into
    bmm calls the counter sees (the fused CPU kernel is not in its registry)."""
    torch.manual_seed(0)
    model = PanGuPi(cfg)
    ids = torch.randint(0, cfg.vocab_size, (batch, seq_len))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        logits = model(ids)
        if backward:
            logits.float().sum().backward()
    return counter.get_total_flops() / (batch * seq_len)


@pytest.mark.parametrize("name, seq_len", [("pro_gqa", 16), ("pro_gqa", 48), ("pangu_pi", 32),
                                           ("bias_mha_tied", 32)])
def test_forward_flops_match_a_counted_forward_pass(name, seq_len):
    cfg = VARIANTS[name]
    assert _counted_flops(cfg, seq_len, batch=2, backward=False) == costs.forward_flops_per_token(cfg, seq_len)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_training_flops_match_a_counted_forward_and_backward(name):
    cfg = VARIANTS[name]
    assert _counted_flops(cfg, 32, batch=1, backward=True) == costs.train_flops_per_token(cfg, 32)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_matmul_params_are_the_linear_weights(name):
    cfg = VARIANTS[name]
    model = PanGuPi(cfg)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    # A tied head is still a matmul per token, so it counts although it is not a separate parameter.
    assert costs.matmul_params(cfg) == linear
    assert costs.matmul_params(cfg) < cfg.num_params() + cfg.vocab_size * cfg.hidden_size


@pytest.mark.parametrize("dtype, name", [(torch.float32, "fp32"), (torch.bfloat16, "bf16")])
def test_kv_cache_bytes_match_the_model_cache(dtype, name):
    for cfg in VARIANTS.values():
        cache = KVCache(cfg, batch=1, max_len=10, dtype=dtype)
        allocated = sum(t.numel() * t.element_size() for t in cache.keys + cache.values)
        assert costs.kv_cache_bytes_per_token(cfg, name) * 10 == allocated


def test_1b_pro_costs():
    cfg = get_preset("pangu_pi_1b_pro")
    # 21 layers x (keys + values) x 1792 channels x 2 bytes
    assert costs.kv_cache_bytes_per_token(cfg, "bf16") == 21 * 2 * 1792 * 2
    # PaLM's 6 N + 12 L S h, N = non-embedding params without norms, plus the head.
    six_n = 6 * (cfg.non_embedding_params() - (2 * 21 + 1) * 1792 + cfg.vocab_size * cfg.hidden_size)
    assert costs.train_flops_per_token(cfg, 2048) == six_n + 12 * 21 * 2048 * 1792


def test_bad_dtype_and_seq_len():
    with pytest.raises(UserError, match="--kv-dtype: unknown dtype 'float64'"):
        costs.kv_cache_bytes_per_token(TINY, "float64")
    with pytest.raises(UserError, match="--seq-len must be positive"):
        costs.forward_flops_per_token(TINY, 0)
