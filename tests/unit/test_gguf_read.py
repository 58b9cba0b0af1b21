"""GGUF sources: files written with `gguf.GGUFWriter` the way llama.cpp's HF converter writes them
(llama q/k rows permuted to interleaved pairs, qwen2 unpermuted), tensors F32, F16 or quantized
with `gguf.quants.quantize`. transformers' own GGUF loader (which dequantizes and undoes the
llama permute itself) is the reference: `convert from-gguf`, `inherit --src x.gguf` with the
source's own shape, and the source reader all reproduce its logits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")
from gguf import GGMLQuantizationType as QT  # noqa: E402
from gguf.quants import quantize  # noqa: E402

from rethinktiny.checkpoint import InternEvoCheckpoint  # noqa: E402
from rethinktiny.cli import main  # noqa: E402
from rethinktiny.convert.gguf_read import from_gguf  # noqa: E402
from rethinktiny.errors import UserError  # noqa: E402
from rethinktiny.inherit.apply import inherit  # noqa: E402
from rethinktiny.inherit.sources import GGUFSource, open_source  # noqa: E402
from rethinktiny.checkpoint import load_model  # noqa: E402
from tests.unit.inherit_helpers import NO_DATA  # noqa: E402
from tests.unit.test_source_families import IDS, VOCAB, hf_model  # noqa: E402

# HF name part -> llama.cpp's GGUF name part
_BLOCK = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
          "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
          "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
_GLOBAL = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}


def llama_cpp_permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf's `LlamaModel.permute`: HF rotate_half rows -> interleaved pairs."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _gguf_name(hf_name: str) -> str:
    if hf_name in _GLOBAL:
        return _GLOBAL[hf_name]
    parts = hf_name.split(".")
    return f"blk.{parts[2]}.{_BLOCK['.'.join(parts[3:-1])]}.{parts[-1]}"


def write_gguf(hf, path: Path, arch: str, qtype: QT, extra: dict | None = None, as_int: str | None = None) -> None:
    """`hf` as llama.cpp writes it: matrices in `qtype`, 1-D tensors F32, metadata keys of the
    `arch` namespace (plus `extra` strings); tensor `as_int` is written as I32 (bad input)."""
    cfg = hf.config
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(500.0)
    writer.add_tokenizer_model("gpt2")  # transformers' loader wants a vocabulary next to the weights
    writer.add_token_list([f"t{i}" for i in range(cfg.vocab_size)])
    writer.add_token_merges([])
    for key, value in (extra or {}).items():
        writer.add_string(key, value)
    tied = cfg.tie_word_embeddings
    for name, tensor in hf.state_dict().items():
        if tied and name == "lm_head.weight":
            continue
        values = tensor.numpy().astype(np.float32)
        if arch == "llama" and ".q_proj." in name:
            values = llama_cpp_permute(values, cfg.num_attention_heads)
        if arch == "llama" and ".k_proj." in name:
            values = llama_cpp_permute(values, cfg.num_key_value_heads)
        kind = qtype
        if _gguf_name(name) == as_int:
            writer.add_tensor(as_int, values.astype(np.int32))
        elif values.ndim == 1 or kind == QT.F32:
            writer.add_tensor(_gguf_name(name), values)
        elif kind == QT.F16:
            writer.add_tensor(_gguf_name(name), values.astype(np.float16))
        else:
            writer.add_tensor(_gguf_name(name), quantize(values, kind), raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def transformers_reference(path: Path) -> torch.Tensor:
    """Logits of transformers' own GGUF loading of `path` (dequantized weights)."""
    model = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                              dtype=torch.float32).eval()
    with torch.no_grad():
        return model(IDS).logits


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS)


@pytest.mark.parametrize("arch, family, kv_heads, tied, qtype", [
    ("llama", "llama", 2, False, QT.F32), ("llama", "llama", 2, False, QT.F16), ("llama", "llama", 1, True, QT.Q8_0),
    ("llama", "llama", 4, False, QT.Q4_0), ("llama", "llama", 2, False, QT.Q4_1), ("qwen2", "qwen2", 2, True, QT.Q8_0),
    ("qwen2", "qwen2", 4, False, QT.Q4_1),
])
def test_gguf_converts_and_inherits_like_transformers_loads_it(tmp_path, arch, family, kv_heads, tied, qtype):
    hf = hf_model(family, kv_heads, tied, seed=5)
    path = tmp_path / "model.gguf"
    write_gguf(hf, path, arch, qtype)
    expected = transformers_reference(path)
    if qtype == QT.F32:  # unquantized: the GGUF is the HF model itself
        torch.testing.assert_close(expected, hf(IDS).logits.detach(), rtol=1e-4, atol=1e-4)
    else:  # quantized: really different weights, so the reference is not trivially the HF model
        assert not torch.allclose(expected, hf(IDS).logits.detach(), atol=1e-4)
    source = open_source(path)
    assert isinstance(source, GGUFSource)
    cfg = source.config
    assert (cfg.num_kv_heads, cfg.tie_embeddings, cfg.qkv_bias) == (kv_heads, tied, arch == "qwen2")
    converted = load_model(from_gguf(path, tmp_path / "converted", progress=False))
    torch.testing.assert_close(_logits(converted), expected, rtol=1e-4, atol=1e-4)
    inherited = load_model(inherit(path, cfg, tmp_path / "inherited", **NO_DATA))
    torch.testing.assert_close(_logits(inherited), expected, rtol=1e-4, atol=1e-4)
    manifest = json.loads((tmp_path / "converted" / "manifest.json").read_text())
    assert qtype.name in manifest["gguf_tensor_types"]
    # one dtype per checkpoint: llama.cpp keeps norms F32 next to F16/quantized matrices
    for folder in ("converted", "inherited"):
        dtypes = {t.dtype for t in InternEvoCheckpoint(tmp_path / folder).state_dict().values()}
        assert dtypes == {torch.float32}, folder


def test_cli_from_gguf_and_its_errors(tmp_path, capsys):
    hf = hf_model("llama", 2, False, seed=6)
    write_gguf(hf, tmp_path / "m.gguf", "llama", QT.Q8_0)
    assert main(["convert", "from-gguf", "--src", str(tmp_path / "m.gguf"), "--dst", str(tmp_path / "out"),
                 "--dtype", "bf16"]) == 0
    assert InternEvoCheckpoint(tmp_path / "out").tensor("tok_embeddings.weight").dtype == torch.bfloat16
    assert main(["convert", "from-gguf", "--src", str(tmp_path / "m.gguf"), "--dst", str(tmp_path / "out")]) == 2
    assert "output exists" in capsys.readouterr().err
    assert main(["convert", "from-gguf", "--src", str(tmp_path / "none.gguf"), "--dst", str(tmp_path / "o2")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'none.gguf'}: GGUF file not found"


def test_unknown_architecture_unsupported_type_and_scaled_rope_are_named(tmp_path):
    hf = hf_model("llama", 2, False, seed=7)
    write_gguf(hf, tmp_path / "gemma.gguf", "gemma2", QT.F32)
    with pytest.raises(UserError, match=r"gemma.gguf: unsupported GGUF architecture general.architecture='gemma2'"):
        from_gguf(tmp_path / "gemma.gguf", tmp_path / "out", progress=False)
    # integer tensors hold no weights gguf can dequantize
    write_gguf(hf, tmp_path / "bad.gguf", "llama", QT.F32, as_int="blk.1.ffn_up.weight")
    with pytest.raises(UserError, match=r"bad.gguf: tensor blk.1.ffn_up.weight has GGUF type I32, which gguf "
                                        r"cannot dequantize"):
        from_gguf(tmp_path / "bad.gguf", tmp_path / "out", progress=False)
    write_gguf(hf, tmp_path / "yarn.gguf", "llama", QT.F32, extra={"llama.rope.scaling.type": "yarn"})
    with pytest.raises(UserError, match=r"yarn.gguf: llama.rope.scaling.type='yarn' \(scaled RoPE\) is not supported"):
        from_gguf(tmp_path / "yarn.gguf", tmp_path / "out", progress=False)
    assert any("yarn" in note for note in open_source(tmp_path / "yarn.gguf").notes)  # inherit only notes it
    assert not (tmp_path / "out").exists()
