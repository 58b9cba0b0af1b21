"""Inheritance invariants on the pure-torch model: identity, masking equivalence, token map, bytes."""

import math

import pytest
import torch

from rethinktiny.checkpoint import load_model
from rethinktiny.config import ModelConfig
from rethinktiny.inherit.apply import inherit
from rethinktiny.inherit.prune import KeepPlan, LayerKeep, prune_width
from rethinktiny.model import PanGuPi
from tests.unit.inherit_helpers import CFG, NO_DATA, make_source, write_calib

IDS = torch.randint(0, CFG.vocab_size, (2, 24), generator=torch.Generator().manual_seed(1))


def identity_plan(cfg: ModelConfig) -> KeepPlan:
    """A plan that keeps everything of `cfg`: pruning with it must change nothing."""
    layers = [LayerKeep(i, torch.arange(cfg.num_attention_heads), torch.arange(cfg.num_kv_heads),
                        torch.arange(cfg.intermediate_size),
                        [torch.arange(cfg.aug_shortcut_dim) for _ in range(cfg.aug_shortcuts)])
              for i in range(cfg.num_layers)]
    return KeepPlan(cfg, cfg, torch.arange(cfg.hidden_size), layers)


@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory):
    folder = tmp_path_factory.mktemp("src") / "ckpt"
    return make_source(folder), folder


@pytest.fixture(scope="module")
def calib_folder(tmp_path_factory):
    return write_calib(tmp_path_factory.mktemp("calib"), CFG.vocab_size)


CALIB = dict(calib_tokens=256, calib_seq_len=32, micro_rows=4)


@pytest.mark.parametrize("width, layers", [("l1", "first-last"), ("l2", "uniform"), ("random", "0,1,2,3"),
                                           ("activation", "block-influence"), ("taylor", "first-last"),
                                           ("learnable", "first-last")])
def test_keeping_everything_reproduces_the_source_logits(tmp_path, tiny_source, calib_folder, width, layers):
    model, src = tiny_source
    calib = calib_folder if width in ("activation", "taylor", "learnable") else None
    out = inherit(src, CFG, tmp_path / "out", layers=layers, width=width, calib=calib, learn_steps=2,
                  **(CALIB if calib else {}))
    with torch.no_grad():
        torch.testing.assert_close(load_model(out)(IDS), model(IDS), rtol=0, atol=0)


def test_prune_width_identity_plan_returns_equal_tensors(tiny_source):
    model, _ = tiny_source
    state = model.state_dict()
    pruned = prune_width(state, identity_plan(CFG))
    assert set(pruned) == set(state)
    for name in state:
        assert torch.equal(pruned[name], state[name]), name


def _kept(report_layers, key):
    return [torch.tensor(layer[key]) for layer in report_layers]


def test_pruning_neurons_and_layers_equals_masking_them(tmp_path, tiny_source):
    model, src = tiny_source
    target = CFG.replace(num_layers=3, intermediate_size=200)
    out = inherit(src, target, tmp_path / "out", layers="0,2,3", width="l2")
    report = __import__("json").loads((out / "inherit_report.json").read_text())
    masked = PanGuPi(CFG)
    masked.load_state_dict(model.state_dict())
    with torch.no_grad():
        for layer, ffn in zip((0, 2, 3), _kept(report["width"]["layers"], "kept_ffn")):
            dropped = torch.ones(CFG.intermediate_size, dtype=torch.bool)
            dropped[ffn] = False
            masked.layers[layer].feed_forward.w2.weight[:, dropped] = 0
        masked.layers = torch.nn.ModuleList(masked.layers[i] for i in (0, 2, 3))
        torch.testing.assert_close(load_model(out)(IDS), masked.eval()(IDS), rtol=1e-5, atol=1e-5)


def test_pruning_heads_and_hidden_channels_equals_masking_them(tmp_path, tiny_source):
    """Hidden channels: zero them everywhere they enter the residual stream. RMSNorm then sees
    zeros in H - H' channels, which the pruned model does not have; the algebraic identity
    rms_full(eps * H'/H) = sqrt(H'/H) * rms_pruned(eps) is compensated by scaling the masked
    model's norm weights by sqrt(H'/H). Everything else must match exactly."""
    model, src = tiny_source
    target = CFG.replace(hidden_size=64, num_attention_heads=2, num_kv_heads=1, intermediate_size=300)
    out = inherit(src, target, tmp_path / "out", **NO_DATA)
    report = __import__("json").loads((out / "inherit_report.json").read_text())
    hidden = torch.tensor(report["width"]["kept_hidden"])
    ratio = target.hidden_size / CFG.hidden_size
    masked = PanGuPi(CFG.replace(norm_eps=CFG.norm_eps * ratio))
    masked.load_state_dict(model.state_dict())
    drop_hidden = torch.ones(CFG.hidden_size, dtype=torch.bool)
    drop_hidden[hidden] = False
    with torch.no_grad():
        masked.tok_embeddings.weight[:, drop_hidden] = 0
        masked.norm.weight.mul_(math.sqrt(ratio))
        for block, heads, ffn in zip(masked.layers, _kept(report["width"]["layers"], "kept_heads"),
                                     _kept(report["width"]["layers"], "kept_ffn")):
            drop_heads = torch.ones(CFG.hidden_size, dtype=torch.bool)
            drop_heads[(heads[:, None] * CFG.head_dim + torch.arange(CFG.head_dim)).reshape(-1)] = False
            drop_ffn = torch.ones(CFG.intermediate_size, dtype=torch.bool)
            drop_ffn[ffn] = False
            block.attention.wo.weight[:, drop_heads] = 0
            block.attention.wo.weight[drop_hidden] = 0
            block.feed_forward.w2.weight[:, drop_ffn] = 0
            block.feed_forward.w2.weight[drop_hidden] = 0
            block.attention_norm.weight.mul_(math.sqrt(ratio))
            block.ffn_norm.weight.mul_(math.sqrt(ratio))
        torch.testing.assert_close(load_model(out)(IDS), masked.eval()(IDS), rtol=1e-4, atol=1e-5)
    kv = _kept(report["width"]["layers"], "kept_kv_heads")
    for heads, kv_heads in zip(_kept(report["width"]["layers"], "kept_heads"), kv):
        assert (heads // 2 == kv_heads).all()  # query heads stay inside their kept GQA group


def test_token_map_moves_rows_and_logits(tmp_path, tiny_source):
    model, src = tiny_source
    new_to_old = torch.randperm(CFG.vocab_size, generator=torch.Generator().manual_seed(3))[:1000]
    path = tmp_path / "token_map.json"
    path.write_text(__import__("json").dumps({"format": "rethinktiny.token_map.v1", "old_vocab_size": CFG.vocab_size,
                                              "new_to_old": new_to_old.tolist()}))
    out = inherit(src, CFG.replace(vocab_size=1000), tmp_path / "out", token_map=path, **NO_DATA)
    small = load_model(out)
    assert torch.equal(small.tok_embeddings.weight, model.tok_embeddings.weight[new_to_old])
    assert torch.equal(small.output.weight, model.output.weight[new_to_old])
    new_ids = torch.randint(0, 1000, (2, 16), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(small(new_ids), model(new_to_old[new_ids])[..., new_to_old], rtol=0, atol=0)
    plain = tmp_path / "plain.json"
    plain.write_text(__import__("json").dumps(new_to_old.tolist()))
    out2 = inherit(src, CFG.replace(vocab_size=1000), tmp_path / "out2", token_map=plain, **NO_DATA)
    assert torch.equal(load_model(out2).output.weight, small.output.weight)


FILES = ("model_tp0_pp0.pt", "model_config.json", "inherit_report.json", "layer_importance.png")


def test_same_seed_gives_the_same_bytes(tmp_path, tiny_source, calib_folder):
    _, src = tiny_source
    target = CFG.replace(hidden_size=64, num_attention_heads=2, num_kv_heads=1, num_layers=2, intermediate_size=100)
    runs = [inherit(src, target, tmp_path / f"run{i}", width="random", layers="block-influence", seed=seed,
                    calib=calib_folder, **CALIB) for i, seed in enumerate((7, 7, 8))]
    for name in FILES:
        assert (runs[0] / name).read_bytes() == (runs[1] / name).read_bytes(), name
    assert (runs[0] / "model_tp0_pp0.pt").read_bytes() != (runs[2] / "model_tp0_pp0.pt").read_bytes()


def test_pangu_pi_extras_and_biases_are_inherited(tmp_path):
    cfg = CFG.replace(attention_bias=True, series_terms=2, aug_shortcuts=1, aug_shortcut_dim=16)
    model = make_source(tmp_path / "src", cfg)
    out = inherit(tmp_path / "src", cfg, tmp_path / "same", **NO_DATA)
    with torch.no_grad():
        torch.testing.assert_close(load_model(out)(IDS), model(IDS), rtol=0, atol=0)
    small = cfg.replace(hidden_size=64, num_attention_heads=2, num_kv_heads=1, aug_shortcut_dim=8)
    assert load_model(inherit(tmp_path / "src", small, tmp_path / "small", **NO_DATA)).cfg == small
    pro = inherit(tmp_path / "src", CFG, tmp_path / "pro", **NO_DATA)  # Pro target: extras and biases dropped
    notes = __import__("json").loads((pro / "inherit_report.json").read_text())["notes"]
    assert any("series" in n for n in notes) and any("biases dropped" in n for n in notes)
    assert load_model(pro).cfg == CFG


def test_student_keeps_the_source_rope_base_and_norm_eps(tmp_path):
    # A target config written from a preset carries rope_theta 1e4; a source trained with 1e5 (as
    # SmolLM2 is) would have every inherited q/k pair rotated wrongly, so the source's value wins.
    source_cfg = CFG.replace(rope_theta=100000.0, norm_eps=1e-6)
    model = make_source(tmp_path / "src", source_cfg)
    out = inherit(tmp_path / "src", CFG, tmp_path / "same", **NO_DATA)
    student = load_model(out)
    assert (student.cfg.rope_theta, student.cfg.norm_eps) == (100000.0, 1e-6)
    with torch.no_grad():
        torch.testing.assert_close(student(IDS), model(IDS), rtol=0, atol=0)
    notes = __import__("json").loads((out / "inherit_report.json").read_text())["notes"]
    assert any(n.startswith("rope_theta: source 100000.0, target config 10000.0 (source's kept") for n in notes)


def test_no_calibration_with_a_tokenizer_next_to_the_source(tmp_path, hf_bpe_tokenizer):
    # A tokenizer beside the weights used to make a calibration-free run crash (calib None).
    make_source(tmp_path / "src")
    import shutil

    shutil.copy(hf_bpe_tokenizer / "tokenizer.json", tmp_path / "src" / "tokenizer.json")
    out = inherit(tmp_path / "src", CFG.replace(num_layers=2), tmp_path / "out", **NO_DATA)
    assert load_model(out).cfg.num_layers == 2
