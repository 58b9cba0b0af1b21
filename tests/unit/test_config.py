import pytest

from rethinktiny.config import (PRESETS, ModelConfig, from_internevo, get_preset, internevo_ffn_width,
                                to_internevo)
from rethinktiny.errors import UserError


def test_1b_pro_shape_and_size():
    cfg = get_preset("pangu_pi_1b_pro")
    # The paper's model table: width 1792, depth 21, vocabulary 48,000.
    assert (cfg.hidden_size, cfg.num_layers, cfg.num_attention_heads, cfg.vocab_size) == (1792, 21, 14, 48000)
    # mlp_ratio 8/3 -> int(4778.67) = 4778 -> next multiple of 256
    assert cfg.intermediate_size == 4864
    assert 0.9e9 < cfg.num_params() < 1.05e9
    assert cfg.num_params() == 2 * 48000 * 1792 + 21 * (4 * 1792**2 + 3 * 1792 * 4864 + 2 * 1792) + 1792
    # The paper: about 18% of the 1B model's parameters are embedding + head at 48k vocabulary.
    assert cfg.embedding_share() == pytest.approx(2 * 48000 * 1792 / cfg.num_params())
    assert 0.17 < cfg.embedding_share() < 0.19


def test_1_5b_pro_shape():
    cfg = get_preset("pangu_pi_1.5b_pro")
    assert (cfg.hidden_size, cfg.num_layers, cfg.vocab_size) == (2048, 22, 48000)
    assert 1.2e9 < cfg.num_params() < 1.6e9


def test_internevo_ffn_rounding():
    assert internevo_ffn_width(1792, 8 / 3) == 4864
    assert internevo_ffn_width(2048, 8 / 3) == 5632
    assert internevo_ffn_width(4096, 4.0) == 16384


@pytest.mark.parametrize("changes, message", [
    (dict(hidden_size=130), "not divisible by num_attention_heads"),
    (dict(num_kv_heads=3), "not divisible by num_kv_heads"),
    (dict(vocab_size=0), "vocab_size must be a positive integer"),
    (dict(num_layers=2.5), "num_layers must be a positive integer"),
    (dict(aug_shortcuts=1), "aug_shortcut_dim"),
])
def test_validation_errors_name_the_key(changes, message):
    base = get_preset("tiny").to_dict()
    base.update(changes)
    with pytest.raises(UserError, match=message):
        ModelConfig.from_dict(base)


def test_unknown_keys_and_presets_are_errors():
    with pytest.raises(UserError, match="unknown model config key"):
        ModelConfig.from_dict({**get_preset("tiny").to_dict(), "hidden": 3})
    with pytest.raises(UserError, match="unknown preset"):
        get_preset("pangu_pi_3b")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_internevo_round_trip(name):
    cfg = PRESETS[name]
    assert from_internevo(to_internevo(cfg)) == cfg


def test_from_internevo_llama2_entry():
    # The seed's LLM1B model entry, as InternEvo LLAMA2 reads it (no_bias defaults to False).
    entry = dict(num_attention_heads=14, vocab_size=48000, hidden_size=1792, num_layers=20, mlp_ratio=8 / 3,
                 layer_norm_epsilon=1e-5, dtype="torch.bfloat16", use_flash_attn=True)
    cfg = from_internevo(entry)
    assert cfg.intermediate_size == 4864 and cfg.attention_bias and cfg.num_kv_heads == 14
    with pytest.raises(UserError, match="missing key 'vocab_size'"):
        from_internevo({k: v for k, v in entry.items() if k != "vocab_size"})


def test_rotary_layout_is_not_part_of_the_shape():
    # Checkpoint readers reorder rotate-half q/k rows; the shape reads the same either way.
    entry = dict(num_attention_heads=4, vocab_size=100, hidden_size=64, num_layers=2)
    assert from_internevo({**entry, "adapt_hf": True}) == from_internevo({**entry, "qk_interleaved": False}) \
        == from_internevo(entry)
