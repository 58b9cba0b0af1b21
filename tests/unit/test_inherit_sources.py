"""Sources: Hugging Face LLaMA folders (safetensors, .bin, shards, GQA) and InternEvo tp shards."""

import json
import shutil

import pytest
import torch

from rethinktiny.checkpoint import load_model, save_model_only, write_model_config
from rethinktiny.config import get_preset
from rethinktiny.errors import UserError
from rethinktiny.inherit.apply import inherit
from rethinktiny.convert.keys import hf_to_ours, ours_to_hf
from rethinktiny.rotary_layout import half_to_interleaved, interleaved_to_half
from rethinktiny.inherit.sources import HFSource, open_source
from rethinktiny.model import PanGuPi
from tests.unit.shard_helpers import save_like_internevo, split_like_internevo
from tests.unit.inherit_helpers import CFG, NO_DATA, make_source, write_calib

transformers = pytest.importorskip("transformers")


def _hf_model(kv_heads, bias=False, tie=False, seed=0):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                                      num_attention_heads=4, num_key_value_heads=kv_heads, attention_bias=bias,
                                      tie_word_embeddings=tie, rms_norm_eps=1e-6, rope_theta=5000.0)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # non-trivial norms and biases so a wrong mapping shows
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.uniform_(0.5, 1.5) if "norm" in name else p.normal_(0, 0.1)
    return model


def _our_state(source):
    return {name: source.tensor(name) for name in source.expected}


@pytest.mark.parametrize("kv_heads, bias, tie", [(2, False, False), (4, True, False), (2, False, True)])
def test_hf_source_reproduces_hf_logits(tmp_path, kv_heads, bias, tie):
    hf = _hf_model(kv_heads, bias, tie)
    hf.save_pretrained(tmp_path / "hf")
    source = open_source(tmp_path / "hf")
    assert isinstance(source, HFSource) and source.config.num_kv_heads == kv_heads
    ours = PanGuPi(source.config)
    ours.load_state_dict(_our_state(source), strict=True)
    ids = torch.randint(0, 256, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(ids), hf(ids).logits, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kv_heads", [2, 4])
def test_hf_source_and_its_internevo_copy_inherit_identically(tmp_path, kv_heads):
    hf = _hf_model(kv_heads)
    hf.save_pretrained(tmp_path / "hf")
    source = open_source(tmp_path / "hf")
    save_model_only(tmp_path / "ie", _our_state(source), source.config)
    calib = write_calib(tmp_path / "calib", 256)
    target = source.config.replace(hidden_size=32, num_attention_heads=2, num_kv_heads=kv_heads // 2, num_layers=2,
                                   intermediate_size=48)
    for width in ("l2", "activation"):
        kwargs = dict(width=width, calib=calib, calib_tokens=128, calib_seq_len=32)
        a = load_model(inherit(tmp_path / "hf", target, tmp_path / f"a-{width}", **kwargs)).state_dict()
        b = load_model(inherit(tmp_path / "ie", target, tmp_path / f"b-{width}", **kwargs)).state_dict()
        for name in a:
            assert torch.equal(a[name], b[name]), name


def test_bin_and_sharded_safetensors_read_the_same(tmp_path):
    hf = _hf_model(2)
    hf.save_pretrained(tmp_path / "single")
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    (tmp_path / "bin").mkdir()
    torch.save(hf.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    shutil.copy(tmp_path / "single" / "config.json", tmp_path / "bin")
    (tmp_path / "bin-sharded").mkdir()
    names = sorted(hf.state_dict())
    weight_map = {}
    for part, chunk in enumerate((names[:len(names) // 2], names[len(names) // 2:])):
        file = f"pytorch_model-{part + 1:05d}-of-00002.bin"
        torch.save({n: hf.state_dict()[n] for n in chunk}, tmp_path / "bin-sharded" / file)
        weight_map.update({n: file for n in chunk})
    (tmp_path / "bin-sharded" / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    shutil.copy(tmp_path / "single" / "config.json", tmp_path / "bin-sharded")
    reference = _our_state(open_source(tmp_path / "single"))
    for other in ("sharded", "bin", "bin-sharded"):
        state = _our_state(open_source(tmp_path / other))
        for name in reference:
            assert torch.equal(state[name], reference[name]), (other, name)


def test_scaled_rope_and_sliding_window_are_noted_not_refused(tmp_path):
    # conversion must refuse them (the forward would differ); inheriting only borrows weights
    hf = _hf_model(2)
    hf.save_pretrained(tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    config.update(rope_scaling={"rope_type": "linear", "factor": 2.0}, sliding_window=64)
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    source = open_source(tmp_path / "hf")
    assert source.config.rope_theta == 5000.0
    assert any("rope scaling" in note for note in source.notes)
    assert any("sliding_window=64" in note for note in source.notes)


def test_missing_hf_shard_and_unknown_architecture(tmp_path):
    hf = _hf_model(2)
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    victim = sorted(set(index["weight_map"].values()))[1]
    (tmp_path / "sharded" / victim).unlink()
    with pytest.raises(UserError, match=f"lists {victim}, which does not exist"):
        inherit(tmp_path / "sharded", "tiny", tmp_path / "out", **NO_DATA)
    assert not (tmp_path / "out").exists()

    hf.save_pretrained(tmp_path / "gpt")
    config = json.loads((tmp_path / "gpt" / "config.json").read_text())
    (tmp_path / "gpt" / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    with pytest.raises(UserError, match="unsupported architecture model_type='gpt2'"):
        inherit(tmp_path / "gpt", "tiny", tmp_path / "out", **NO_DATA)

    from safetensors.torch import save_file
    hf.save_pretrained(tmp_path / "extra")
    state = {k: v.contiguous() for k, v in hf.state_dict().items()}
    state["model.layers.0.self_attn.qkv_proj.weight"] = torch.zeros(2, 2)
    save_file(state, tmp_path / "extra" / "model.safetensors")
    with pytest.raises(UserError, match="unknown architecture: tensor model.layers.0.self_attn.qkv_proj"):
        inherit(tmp_path / "extra", "tiny", tmp_path / "out", **NO_DATA)
    assert not (tmp_path / "out").exists()


def test_unknown_internevo_architecture_is_named(tmp_path):
    state = PanGuPi(CFG).state_dict()
    state["layers.0.attention.qkv_proj.weight"] = state.pop("layers.0.attention.wq.weight")
    save_model_only(tmp_path / "ckpt", state, CFG)
    with pytest.raises(UserError, match="unknown architecture: parameter layers.0.attention.qkv_proj.weight"):
        open_source(tmp_path / "ckpt")


def test_name_table_and_permute_round_trip():
    assert hf_to_ours("model.layers.7.self_attn.q_proj.weight") == "layers.7.attention.wq.weight"
    assert hf_to_ours("model.layers.0.mlp.gate_proj.weight") == "layers.0.feed_forward.w1.weight"
    assert hf_to_ours("model.layers.0.mlp.up_proj.weight") == "layers.0.feed_forward.w3.weight"
    assert hf_to_ours("model.layers.0.self_attn.rotary_emb.inv_freq") is None
    for name in PanGuPi(CFG.replace(attention_bias=True)).state_dict():
        assert hf_to_ours(ours_to_hf(name)) == name
    w = torch.randn(4 * 8, 5)
    assert torch.equal(interleaved_to_half(half_to_interleaved(w, 4), 4), w)
    # our row 2i is HF row i, our row 2i+1 is HF row i + head_dim/2 (first head)
    assert torch.equal(half_to_interleaved(w, 4)[:8], w[[0, 4, 1, 5, 2, 6, 3, 7]])


@pytest.mark.parametrize("tp, pp", [(2, 1), (2, 2)])
def test_merged_tp_shards_inherit_like_tp1(tmp_path, tp, pp):
    cfg = CFG.replace(attention_bias=True)
    model = make_source(tmp_path / "tp1", cfg)
    step = tmp_path / f"tp{tp}" / "10"
    save_like_internevo(step, model.state_dict(), tp, [2, 2] if pp == 2 else [4])
    write_model_config(step, cfg)
    target = cfg.replace(hidden_size=64, num_attention_heads=2, num_kv_heads=1, num_layers=3, intermediate_size=200)
    a = load_model(inherit(tmp_path / "tp1", target, tmp_path / "a", **NO_DATA)).state_dict()
    b = load_model(inherit(tmp_path / f"tp{tp}", target, tmp_path / "b", **NO_DATA)).state_dict()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_missing_internevo_shard_writes_nothing(tmp_path):
    model = make_source(tmp_path / "tp1", CFG)
    (tmp_path / "tp2").mkdir()
    for (t, p), shard in split_like_internevo(model.state_dict(), 2, [2, 2]).items():
        if (t, p) != (1, 0):
            torch.save(shard, tmp_path / "tp2" / f"model_tp{t}_pp{p}.pt")
    write_model_config(tmp_path / "tp2", CFG)
    with pytest.raises(UserError, match="missing shard model_tp1_pp0.pt"):
        inherit(tmp_path / "tp2", CFG, tmp_path / "out", **NO_DATA)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


def test_source_without_config_needs_src_config(tmp_path):
    torch.save(PanGuPi(CFG).state_dict(), tmp_path / "model_tp0_pp0.pt")
    with pytest.raises(UserError, match="pass --src-config"):
        inherit(tmp_path, CFG, tmp_path.parent / "out-noconfig", **NO_DATA)
    out = inherit(tmp_path, "tiny", tmp_path.parent / "out-config", src_config="tiny", **NO_DATA)
    assert load_model(out).cfg == get_preset("tiny")
