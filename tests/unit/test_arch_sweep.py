import pytest
import torch

from rethinktiny.arch.sweep import (SweepSpec, best_ffn, build_rows, display_expansion, enumerate_shapes,
                                    ffn_bounds, parse_count, parse_float_range, parse_int_range)
from rethinktiny.config import PRESETS, ModelConfig, internevo_ffn_width
from rethinktiny.errors import UserError
from rethinktiny.model import PanGuPi

SMALL = SweepSpec(params=3_000_000, vocab_size=4096, layers=tuple(range(2, 9)), heads_dim=32, tolerance=0.1)
VARIANTS = {
    "mha": SMALL,
    "gqa": SweepSpec(params=3_000_000, vocab_size=4096, layers=(2, 3, 4, 5, 6), heads_dim=32, kv_heads=2,
                     tolerance=0.1),
    "tied": SweepSpec(params=2_000_000, vocab_size=4096, layers=(3, 5), heads_dim=16, tie_embeddings=True,
                      expansion=(2.5, 3.0), tolerance=0.1),
}
ONE_B = SweepSpec(params=1_000_000_000, vocab_size=48000)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_counts_agree_with_meta_models_for_every_row(name):
    rows = build_rows(VARIANTS[name])
    assert len(rows) >= 3
    for row in rows:
        with torch.device("meta"):
            model = PanGuPi(row.cfg)
        assert sum(p.numel() for p in model.parameters()) == row.params, row.cfg
        head = 0 if row.cfg.tie_embeddings else model.output.weight.numel()
        embedding = model.tok_embeddings.weight.numel() + head
        assert row.cfg.embedding_params() == embedding


def _brute_force(spec: SweepSpec) -> set[tuple[int, int]]:
    """Every (depth, hidden) for which some reachable FFN width lands within the tolerance."""
    found = set()
    for layers in spec.layers:
        for hidden in range(spec.heads_dim, 64 * spec.heads_dim, spec.heads_dim):
            heads = hidden // spec.heads_dim
            if spec.kv_heads and heads % spec.kv_heads:
                continue
            low, high = ffn_bounds(spec, hidden)
            for ffn in range(low, high + 1, 256):
                cfg = ModelConfig(hidden_size=hidden, num_layers=layers, num_attention_heads=heads,
                                  num_kv_heads=spec.kv_heads or heads, intermediate_size=ffn,
                                  vocab_size=spec.vocab_size, tie_embeddings=spec.tie_embeddings)
                if spec.within(cfg.num_params()):
                    found.add((layers, hidden))
    return found


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_enumeration_is_complete_and_picks_the_closest_width(name):
    spec = VARIANTS[name]
    shapes = enumerate_shapes(spec)
    assert {(cfg.num_layers, cfg.hidden_size) for cfg in shapes} == _brute_force(spec)
    for cfg in shapes:
        low, high = ffn_bounds(spec, cfg.hidden_size)
        assert low <= cfg.intermediate_size <= high and cfg.intermediate_size % 256 == 0
        assert cfg.hidden_size % spec.heads_dim == 0
        for neighbour in (cfg.intermediate_size - 256, cfg.intermediate_size + 256):
            if low <= neighbour <= high:
                other = cfg.replace(intermediate_size=neighbour)
                assert abs(other.num_params() - spec.params) >= abs(cfg.num_params() - spec.params)


def test_1b_sweep_marks_the_presets_and_respects_ranges():
    rows = build_rows(ONE_B)
    marked = {row.preset: row for row in rows if row.preset}
    assert set(marked) == {"pangu_pi_1b_pro", "pangu_pi_1.5b_pro"}
    assert marked["pangu_pi_1b_pro"].cfg == PRESETS["pangu_pi_1b_pro"]
    for row in rows:
        if not row.preset:
            assert 12 <= row.cfg.num_layers <= 32 and abs(row.budget_deviation) <= 0.05
            # The printed expansion is an mlp_ratio that rebuilds the exact width in InternEvo.
            assert internevo_ffn_width(row.cfg.hidden_size, display_expansion(row.cfg)) == row.cfg.intermediate_size
    assert {row.cfg.num_layers for row in rows} == set(range(12, 33))


def test_1b_pro_embedding_share_matches_its_formula():
    cfg = PRESETS["pangu_pi_1b_pro"]
    row = next(row for row in build_rows(ONE_B) if row.preset == "pangu_pi_1b_pro")
    h, layers, ffn, vocab = 1792, 21, 4864, 48000
    total = 2 * vocab * h + layers * (4 * h * h + 3 * h * ffn + 2 * h) + h
    assert row.params == total
    assert row.to_dict()["embedding_share"] == pytest.approx(2 * vocab * h / total, abs=1e-6)
    assert 0.17 < cfg.embedding_share() < 0.19  # the paper's 18% at a 48k vocabulary


def test_presets_not_shown_for_another_vocabulary_or_when_disabled():
    assert not any(row.preset for row in build_rows(SweepSpec(params=10**9, vocab_size=100_000)))
    assert not any(row.preset for row in build_rows(ONE_B, include_presets=False))


def test_per_depth_keeps_the_closest_shapes():
    everything = build_rows(ONE_B, include_presets=False)
    kept = build_rows(ONE_B, include_presets=False, per_depth=1)
    assert len(kept) == 21
    for row in kept:
        same_depth = [r for r in everything if r.cfg.num_layers == row.cfg.num_layers]
        assert abs(row.params - ONE_B.params) == min(abs(r.params - ONE_B.params) for r in same_depth)


def test_single_expansion_value_fixes_the_width():
    spec = SweepSpec(params=10**9, vocab_size=48000, layers=(20,), expansion=(8 / 3, 8 / 3))
    for cfg in enumerate_shapes(spec):
        assert cfg.intermediate_size == internevo_ffn_width(cfg.hidden_size, 8 / 3)
    assert best_ffn(spec, 20, 1792) == 4864


@pytest.mark.parametrize("text, expected", [("1.0e9", 10**9), ("1B", 10**9), ("500M", 5 * 10**8),
                                            ("1200000", 1_200_000), ("2.5k", 2500)])
def test_parse_count(text, expected):
    assert parse_count(text, "--params") == expected


def test_parse_ranges():
    assert parse_int_range("12:32", "--layers") == list(range(12, 33))
    assert parse_int_range("12:32:10", "--layers") == [12, 22, 32]
    assert parse_int_range("20", "--layers") == [20]
    assert parse_float_range("2.0:4.0", "--expansion") == (2.0, 4.0)
    assert parse_float_range("2.77", "--expansion") == (2.77, 2.77)


@pytest.mark.parametrize("call, message", [
    (lambda: parse_count("abc", "--params"), "--params: expected a number"),
    (lambda: parse_count("0", "--params"), "--params: must be positive"),
    (lambda: parse_int_range("32:12", "--layers"), "--layers: empty range"),
    (lambda: parse_int_range("12:", "--layers"), "--layers: expected START:STOP"),
    (lambda: parse_int_range("12-32", "--layers"), "--layers: expected START:STOP"),
    (lambda: parse_int_range("12:32:0", "--layers"), "step must be positive"),
    (lambda: parse_int_range("0:4", "--layers"), "values must be positive"),
    (lambda: parse_float_range("4:2", "--expansion"), "--expansion: empty range"),
    (lambda: parse_float_range("2:x", "--expansion"), "--expansion: expected LOW:HIGH"),
    (lambda: parse_float_range("1:2:3", "--expansion"), "--expansion: expected LOW:HIGH"),
    (lambda: parse_float_range("-1:2", "--expansion"), "must be positive"),
    (lambda: SweepSpec(params=10**9, vocab_size=48000, heads_dim=127), "--heads-dim must be a positive even"),
    (lambda: SweepSpec(params=10**9, vocab_size=48000, tolerance=0), "--tolerance"),
    (lambda: SweepSpec(params=10**9, vocab_size=48000, layers=()), "--layers: empty"),
    (lambda: SweepSpec(params=10**9, vocab_size=-1), "--vocab must be positive"),
    (lambda: enumerate_shapes(SweepSpec(params=10**7, vocab_size=48000)), "smaller than the embedding"),
    (lambda: enumerate_shapes(SweepSpec(params=10**9, vocab_size=48000, layers=(20,), kv_heads=64)),
     "no shape within 5%.*--kv-heads 64"),
    (lambda: build_rows(ONE_B, kv_dtype="fp64"), "--kv-dtype: unknown dtype"),
    (lambda: build_rows(ONE_B, seq_len=0), "--seq-len must be positive"),
    (lambda: build_rows(ONE_B, per_depth=0), "--per-depth must be positive"),
])
def test_bad_input_is_a_user_error(call, message):
    with pytest.raises(UserError, match=message):
        call()
