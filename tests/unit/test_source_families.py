"""Sources people have: HF llama / mistral / qwen2 (written by transformers' own classes), HF
internlm2 (its documented fused-wqkv layout) and InternEvo INTERNLM2 tp shards. For each, both
`convert from-hf` (or the source reader) and identity inheritance reproduce the source logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
from einops import rearrange  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from rethinktiny.config import ModelConfig  # noqa: E402
from rethinktiny.convert.import_hf import from_hf  # noqa: E402
from rethinktiny.rotary_layout import interleaved_to_half  # noqa: E402
from rethinktiny.errors import UserError  # noqa: E402
from rethinktiny.inherit.apply import inherit  # noqa: E402
from rethinktiny.inherit.sources import HFSource, InternLM2Source, open_source  # noqa: E402
from rethinktiny.model import PanGuPi  # noqa: E402
from rethinktiny.checkpoint import load_model  # noqa: E402
from tests.unit.inherit_helpers import NO_DATA  # noqa: E402

VOCAB = 96
IDS = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(1))
SHAPE = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             rms_norm_eps=1e-5, rope_theta=500.0, max_position_embeddings=64)


def _sharpen(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Weights large enough that attention is sharp (a wrong rotary order or head split shows)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif p.dim() == 1:
                p.normal_(0.0, 0.3)
            else:
                p.normal_(0.0, 0.3)
    return model.eval()


def hf_model(family: str, kv_heads: int, tied: bool, seed: int = 0):
    """A tiny random model built by transformers' own config and model class for `family`."""
    if family == "llama":
        config = transformers.LlamaConfig(num_key_value_heads=kv_heads, tie_word_embeddings=tied, **SHAPE)
        return _sharpen(transformers.LlamaForCausalLM(config), seed)
    if family == "mistral":
        config = transformers.MistralConfig(num_key_value_heads=kv_heads, tie_word_embeddings=tied,
                                            sliding_window=None, head_dim=16, **SHAPE)
        return _sharpen(transformers.MistralForCausalLM(config), seed)
    config = transformers.Qwen2Config(num_key_value_heads=kv_heads, tie_word_embeddings=tied, **SHAPE)
    return _sharpen(transformers.Qwen2ForCausalLM(config), seed)


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        out = model(IDS)
    return out.logits if hasattr(out, "logits") else out


def _check_convert_and_identity_inherit(src: Path, tmp_path: Path, expected: torch.Tensor) -> ModelConfig:
    """Conversion and inheritance with the source's own shape give the source's logits."""
    source = open_source(src)
    cfg = source.config
    if (src / "config.json").exists():
        converted = load_model(from_hf(src, tmp_path / "converted", progress=False))
        torch.testing.assert_close(_logits(converted), expected, rtol=1e-4, atol=1e-4)
    inherited = load_model(inherit(src, cfg, tmp_path / "inherited", **NO_DATA))
    torch.testing.assert_close(_logits(inherited), expected, rtol=1e-4, atol=1e-4)
    return cfg


@pytest.mark.parametrize("family, kv_heads, tied", [("llama", 2, False), ("mistral", 1, True),
                                                    ("qwen2", 2, False), ("qwen2", 4, True)])
def test_hf_family_converts_and_inherits_exactly(tmp_path, family, kv_heads, tied):
    hf = hf_model(family, kv_heads, tied)
    hf.save_pretrained(tmp_path / "hf")
    cfg = _check_convert_and_identity_inherit(tmp_path / "hf", tmp_path, _logits(hf))
    assert (cfg.num_kv_heads, cfg.tie_embeddings) == (kv_heads, tied)
    assert cfg.qkv_bias == (family == "qwen2") and not cfg.attention_bias
    if family == "qwen2":  # recorded in the checkpoint's config, so the model is rebuilt with biases
        saved = json.loads((tmp_path / "converted" / "model_config.json").read_text())
        assert saved["qkv_bias"] is True and "attention.wo.bias" not in str(list(PanGuPi(cfg).state_dict()))


def test_qwen2_with_sliding_window_off_is_accepted_and_on_is_refused(tmp_path):
    hf_model("qwen2", 2, False).save_pretrained(tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    # real Qwen2 configs carry a window that only use_sliding_window turns on
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, "sliding_window": 32768,
                                                              "use_sliding_window": False}))
    from_hf(tmp_path / "hf", tmp_path / "ok", progress=False)
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, "sliding_window": 16,
                                                              "use_sliding_window": True}))
    with pytest.raises(UserError, match="config.json: sliding_window=16 attention has no equivalent"):
        from_hf(tmp_path / "hf", tmp_path / "refused", progress=False)
    assert not (tmp_path / "refused").exists()
    assert any("sliding_window=16" in note for note in open_source(tmp_path / "hf").notes)


# ---- InternLM2 ---------------------------------------------------------------------------------

def fuse_like_internlm2(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """InternLM2's wqkv rows, written from its modeling file's read
    `rearrange(qkv, "b q (h gs d) -> b q h gs d", gs=2 + groups)`: per kv head h, its query
    heads, then its key head, then its value head."""
    groups = q.shape[0] // k.shape[0]
    q = rearrange(q, "(h gs d) ... -> h gs d ...", h=kv_heads, gs=groups)
    k = rearrange(k, "(h d) ... -> h 1 d ...", h=kv_heads)
    v = rearrange(v, "(h d) ... -> h 1 d ...", h=kv_heads)
    return rearrange(torch.cat([q, k, v], dim=1), "h gs d ... -> (h gs d) ...")


def _read_like_internlm2(x: torch.Tensor, wqkv: torch.Tensor, kv_heads: int, groups: int):
    """q, k, v of `x` exactly as the InternLM2 modeling file computes them from wqkv."""
    qkv = rearrange(x @ wqkv.T, "b q (h gs d) -> b q h gs d", gs=2 + groups, h=kv_heads)
    q = rearrange(qkv[..., :groups, :], "b q h gs d -> b q (h gs d)")
    return q, rearrange(qkv[..., -2, :], "b q h d -> b q (h d)"), rearrange(qkv[..., -1, :], "b q h d -> b q (h d)")


def test_the_fused_fixture_is_what_internlm2_reads():
    q, k, v = torch.randn(64, 8), torch.randn(32, 8), torch.randn(32, 8)
    x = torch.randn(1, 3, 8)
    got = _read_like_internlm2(x, fuse_like_internlm2(q, k, v, kv_heads=2), kv_heads=2, groups=2)
    for a, b in zip(got, (x @ q.T, x @ k.T, x @ v.T)):
        torch.testing.assert_close(a, b)


def write_hf_internlm2(hf_llama, folder: Path, bias: bool) -> None:
    """An HF InternLM2ForCausalLM folder (documented config keys and tensor names) holding the same
    function as `hf_llama` (whose rotate_half q/k rows InternLM2 shares)."""
    cfg = hf_llama.config
    kv, state = cfg.num_key_value_heads, hf_llama.state_dict()
    tensors = {"model.tok_embeddings.weight": state["model.embed_tokens.weight"],
               "model.norm.weight": state["model.norm.weight"], "output.weight": state["lm_head.weight"]}
    for i in range(cfg.num_hidden_layers):
        hf, ours = f"model.layers.{i}.", f"model.layers.{i}."
        kinds = ("weight", "bias") if bias else ("weight",)
        for kind in kinds:
            tensors[f"{ours}attention.wqkv.{kind}"] = fuse_like_internlm2(
                *(state[f"{hf}self_attn.{p}_proj.{kind}"] for p in "qkv"), kv)
            tensors[f"{ours}attention.wo.{kind}"] = state[f"{hf}self_attn.o_proj.{kind}"]
        for theirs, mine in (("mlp.gate_proj", "feed_forward.w1"), ("mlp.up_proj", "feed_forward.w3"),
                             ("mlp.down_proj", "feed_forward.w2"), ("input_layernorm", "attention_norm"),
                             ("post_attention_layernorm", "ffn_norm")):
            tensors[f"{ours}{mine}.weight"] = state[f"{hf}{theirs}.weight"]
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in tensors.items()}, folder / "model.safetensors", metadata={"format": "pt"})
    config = {"architectures": ["InternLM2ForCausalLM"], "model_type": "internlm2",
              "auto_map": {"AutoConfig": "configuration_internlm2.InternLM2Config",
                           "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM"},
              "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
              "intermediate_size": cfg.intermediate_size, "num_hidden_layers": cfg.num_hidden_layers,
              "num_attention_heads": cfg.num_attention_heads, "num_key_value_heads": kv, "hidden_act": "silu",
              "max_position_embeddings": 64, "rms_norm_eps": cfg.rms_norm_eps, "bias": bias,
              "rope_theta": 500.0, "rope_scaling": None, "tie_word_embeddings": False, "torch_dtype": "float32"}
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("kv_heads, bias", [(2, False), (1, True), (4, True)])
def test_hf_internlm2_converts_and_inherits_exactly(tmp_path, kv_heads, bias):
    config = transformers.LlamaConfig(num_key_value_heads=kv_heads, attention_bias=bias, **SHAPE)
    reference = _sharpen(transformers.LlamaForCausalLM(config), seed=2)
    write_hf_internlm2(reference, tmp_path / "internlm2", bias)
    assert isinstance(open_source(tmp_path / "internlm2"), HFSource)
    cfg = _check_convert_and_identity_inherit(tmp_path / "internlm2", tmp_path, _logits(reference))
    assert (cfg.num_kv_heads, cfg.attention_bias) == (kv_heads, bias)


def _internevo_internlm2_shards(model: PanGuPi, folder: Path, tp: int, adapt_hf: bool, bias: bool) -> None:
    """`model` saved as InternEvo's INTERNLM2 saves itself with tensor parallel size `tp`: fused
    wqkv (rotate_half q/k rows when adapt_hf) chunked along rows like the other column-parallel
    weights, wo/w2 along columns, norms and wo's bias replicated; plus model_config.pt."""
    cfg, state = model.cfg, model.state_dict()
    full = {}
    for name, t in state.items():
        if ".attention.w" in name and name.split(".")[3] in ("wq", "wk", "wv"):
            continue
        full[name] = t
    for i in range(cfg.num_layers):
        for kind in ("weight", "bias") if bias else ("weight",):
            parts = [state[f"layers.{i}.attention.w{p}.{kind}"] for p in "qkv"]
            if adapt_hf:
                parts = [interleaved_to_half(parts[0], cfg.num_attention_heads),
                         interleaved_to_half(parts[1], cfg.num_kv_heads), parts[2]]
            full[f"layers.{i}.attention.wqkv.{kind}"] = fuse_like_internlm2(*parts, cfg.num_kv_heads)
    folder.mkdir(parents=True)
    for rank in range(tp):
        shard = {}
        for name, t in full.items():
            column = any(p in name for p in ("wqkv", "w1.", "w3.")) or name == "output.weight"
            row = name.endswith(("wo.weight", "w2.weight"))
            shard[name] = (t.chunk(tp, 0)[rank] if column else t.chunk(tp, 1)[rank] if row else t).clone()
        torch.save(shard, folder / f"model_tp{rank}_pp0.pt")
    entry = dict(num_layers=cfg.num_layers, hidden_size=cfg.hidden_size, num_attention_heads=cfg.num_attention_heads,
                 num_kv_attention_heads=cfg.num_kv_heads, vocab_size=cfg.vocab_size,
                 mlp_ratio=cfg.intermediate_size / cfg.hidden_size, multiple_of=32, no_bias=not bias,
                 layer_norm_epsilon=cfg.norm_eps, rope_base=cfg.rope_theta, dtype=torch.float32,
                 embed_split_hidden=False, adapt_hf=adapt_hf, use_flash_attn=True)
    torch.save(entry, folder / "model_config.pt")


@pytest.mark.parametrize("adapt_hf, bias", [(True, False), (False, True)])
def test_internevo_internlm2_tp2_shards_inherit_exactly(tmp_path, adapt_hf, bias):
    cfg = ModelConfig(hidden_size=64, num_layers=2, num_attention_heads=4, num_kv_heads=2, intermediate_size=128,
                      vocab_size=VOCAB, rope_theta=500.0, attention_bias=bias)
    model = _sharpen(PanGuPi(cfg), seed=3)
    _internevo_internlm2_shards(model, tmp_path / "ckpt" / "40", tp=2, adapt_hf=adapt_hf, bias=bias)
    source = open_source(tmp_path / "ckpt")
    assert isinstance(source, InternLM2Source) and source.config == cfg
    _check_convert_and_identity_inherit(tmp_path / "ckpt", tmp_path, _logits(model))


# ---- bad input -------------------------------------------------------------------------------------

def test_unknown_model_type_and_bad_internlm2_are_named(tmp_path):
    hf_model("llama", 2, False).save_pretrained(tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, "model_type": "gemma2"}))
    with pytest.raises(UserError, match=r"hf/config.json: unsupported architecture model_type='gemma2'"):
        open_source(tmp_path / "hf")
    # an internlm2 config over LLaMA-named tensors: the first foreign name is reported with its file
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, "model_type": "internlm2", "bias": False}))
    with pytest.raises(UserError, match=r"model.safetensors: unknown architecture: tensor \S+ has no "
                                        r"equivalent in our model \(hf internlm2 names\)"):
        from_hf(tmp_path / "hf", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_internlm2_options_we_cannot_follow_are_refused(tmp_path):
    cfg = ModelConfig(hidden_size=64, num_layers=1, num_attention_heads=4, num_kv_heads=2, intermediate_size=128,
                      vocab_size=VOCAB)
    _internevo_internlm2_shards(PanGuPi(cfg), tmp_path / "ckpt", tp=1, adapt_hf=True, bias=False)
    entry = torch.load(tmp_path / "ckpt" / "model_config.pt", weights_only=True)
    torch.save({**entry, "norm_head": True}, tmp_path / "ckpt" / "model_config.pt")
    with pytest.raises(UserError, match=r"model_config.pt: INTERNLM2 with norm_head=True is not supported"):
        open_source(tmp_path / "ckpt")


# ---- q/k/v biases recorded in exports ----------------------------------------------------------------

def test_qkv_bias_round_trips_through_internevo_entry_and_hf_export(tmp_path):
    from rethinktiny.config import from_internevo, to_internevo
    from rethinktiny.convert.export import to_hf

    hf = hf_model("qwen2", 2, False, seed=4)
    hf.save_pretrained(tmp_path / "hf")
    ours = from_hf(tmp_path / "hf", tmp_path / "ours", progress=False)
    cfg = load_model(ours).cfg
    entry = to_internevo(cfg)
    assert entry["qkv_bias"] is True and entry["no_bias"] is True and from_internevo(entry) == cfg
    assert cfg.layer_params() == sum(p.numel() for n, p in PanGuPi(cfg).named_parameters()
                                     if n.startswith("layers.0."))
    # Llama has no q/k/v-only bias: the export is a Qwen2 folder that transformers loads as one
    to_hf(ours, tmp_path / "hf2", max_position_embeddings=64, progress=False)
    exported = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf2")).eval()
    assert type(exported).__name__ == "Qwen2ForCausalLM"
    torch.testing.assert_close(_logits(exported), _logits(hf), rtol=1e-5, atol=1e-5)
