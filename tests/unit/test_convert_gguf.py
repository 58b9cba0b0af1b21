"""`convert to-gguf`: the file read back with `gguf.GGUFReader` carries LLaMA metadata, the
vocabulary, BOS/EOS/add-BOS and the training context length, and tensors equal to ours (f32
exactly, f16 as float16, q8_0 within its quantization step), with q/k rows in llama.cpp's order."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from rethinktiny.checkpoint import save_model_only  # noqa: E402
from rethinktiny.cli import main  # noqa: E402
from rethinktiny.config import ModelConfig  # noqa: E402
from rethinktiny.convert.context_length import CONFIG_TEXT_FILE  # noqa: E402
from rethinktiny.convert.gguf_export import to_gguf  # noqa: E402
from rethinktiny.errors import UserError  # noqa: E402
from rethinktiny.model import PanGuPi  # noqa: E402
from rethinktiny.vocab.spmodel import load_model_proto  # noqa: E402

from tests.conftest import SAMPLE_TRAIN  # noqa: E402


def _model(vocab: int, tied: bool = False, kv_heads: int = 2, bias: bool = False) -> ModelConfig:
    return ModelConfig(hidden_size=64, num_layers=2, num_attention_heads=4, num_kv_heads=kv_heads,
                       intermediate_size=96, vocab_size=vocab, tie_embeddings=tied, attention_bias=bias,
                       rope_theta=50000.0, norm_eps=1e-5, name="tiny_gguf")


def _checkpoint(folder, cfg: ModelConfig, seq_len: int | None = 192) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    state = PanGuPi(cfg).state_dict()
    for name, tensor in state.items():  # norms and biases away from their init values
        if tensor.ndim == 1:
            tensor.uniform_(0.5, 1.5)
    save_model_only(folder, state, cfg)
    if seq_len is not None:  # what InternEvo's CheckpointManager saves next to the weights
        torch.save(f"SEQ_LEN = {seq_len}\ndata = dict(seq_len=SEQ_LEN, micro_bsz=2)\n", folder / CONFIG_TEXT_FILE)
    return state


def _fields(reader) -> dict:
    return {name: field.contents() for name, field in reader.fields.items()}


def _tensors(reader) -> dict[str, np.ndarray]:
    """name -> dequantized float32 array in our (rows, cols) order."""
    out = {}
    for t in reader.tensors:
        data = gguf.quants.dequantize(t.data, t.tensor_type)
        out[t.name] = np.asarray(data, dtype=np.float32).reshape([int(d) for d in reversed(t.shape)])
    return out


def _hf_rotate_half_rows(w: torch.Tensor, heads: int) -> torch.Tensor:
    """HF's q/k row order from the interleaved one: per head [x0, x2, ..., x1, x3, ...]."""
    rows = w.shape[0]
    return w.reshape(heads, rows // heads // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _llama_cpp_rows(w_hf: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp converter's permute of HF q/k rows (back to pairs (2i, 2i+1) per head)."""
    rows = w_hf.shape[0]
    return w_hf.reshape(heads, 2, rows // heads // 2, *w_hf.shape[1:]).transpose(1, 2).reshape(w_hf.shape)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("gguf")
    vocab = len(load_model_proto(tiny_tokenizer).pieces)
    cfg = _model(vocab)
    state = _checkpoint(root / "ckpt", cfg)
    paths = {t: to_gguf(root / "ckpt", root / t, tiny_tokenizer, outtype=t, progress=False)
             for t in ("f32", "f16", "q8_0")}
    return cfg, state, paths, tiny_tokenizer


def test_metadata_and_vocabulary(exported):
    cfg, _, paths, sp_path = exported
    proto = load_model_proto(sp_path)
    fields = _fields(gguf.GGUFReader(paths["f16"]))
    assert fields["general.architecture"] == "llama" and fields["general.name"] == "tiny_gguf"
    assert fields["llama.context_length"] == 192  # the training seq_len, not 2048
    assert (fields["llama.embedding_length"], fields["llama.block_count"], fields["llama.feed_forward_length"]) == (
        64, 2, 96)
    assert (fields["llama.attention.head_count"], fields["llama.attention.head_count_kv"]) == (4, 2)
    assert fields["llama.rope.dimension_count"] == 16 and fields["llama.rope.freq_base"] == 50000.0
    assert fields["llama.attention.key_length"] == fields["llama.attention.value_length"] == 16
    assert fields["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-5)
    assert fields["general.file_type"] == gguf.LlamaFileType.MOSTLY_F16
    assert fields["tokenizer.ggml.model"] == "llama"
    assert fields["tokenizer.ggml.tokens"] == [p.piece for p in proto.pieces]
    assert fields["tokenizer.ggml.scores"] == pytest.approx([p.score for p in proto.pieces])
    types = fields["tokenizer.ggml.token_type"]
    assert [types[i] for i in (0, 1, 2)] == [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    assert types.count(gguf.TokenType.BYTE) == 256 and proto.pieces[types.index(gguf.TokenType.BYTE)].piece == "<0x00>"
    spec = proto.trainer_spec
    assert (fields["tokenizer.ggml.bos_token_id"], fields["tokenizer.ggml.eos_token_id"],
            fields["tokenizer.ggml.unknown_token_id"]) == (spec.bos_id, spec.eos_id, spec.unk_id)
    # every training document starts with <s>: llama.cpp must add it too, and no </s>
    assert fields["tokenizer.ggml.add_bos_token"] is True and fields["tokenizer.ggml.add_eos_token"] is False
    assert fields["tokenizer.ggml.add_space_prefix"] is proto.normalizer_spec.add_dummy_prefix


def test_tensors_equal_ours(exported):
    cfg, state, paths, _ = exported
    f32, f16, q8 = (_tensors(gguf.GGUFReader(paths[t])) for t in ("f32", "f16", "q8_0"))
    assert "output.weight" in f32 and len(f32) == len(state)
    pairs = {"token_embd.weight": "tok_embeddings.weight", "output.weight": "output.weight",
             "output_norm.weight": "norm.weight", "blk.1.attn_q.weight": "layers.1.attention.wq.weight",
             "blk.1.attn_k.weight": "layers.1.attention.wk.weight", "blk.0.ffn_gate.weight": "layers.0.feed_forward.w1.weight",
             "blk.0.ffn_up.weight": "layers.0.feed_forward.w3.weight", "blk.0.ffn_down.weight": "layers.0.feed_forward.w2.weight",
             "blk.0.attn_norm.weight": "layers.0.attention_norm.weight", "blk.0.ffn_norm.weight": "layers.0.ffn_norm.weight",
             "blk.0.attn_output.weight": "layers.0.attention.wo.weight"}
    for gname, ours in pairs.items():
        want = state[ours].float().numpy()
        np.testing.assert_array_equal(f32[gname], want)
        np.testing.assert_array_equal(f16[gname], state[ours].half().float().numpy() if want.ndim == 2 else want)
        if want.ndim == 2:
            # Q8_0: blocks of 32, one float16 scale amax/127, values rounded to it: error <= half a
            # step plus the scale's float16 rounding (2**-11 relative) times up to 127 steps
            blocks = want.reshape(-1, 32)
            step = np.abs(blocks).max(axis=1, keepdims=True) / 127
            assert np.all(np.abs(q8[gname].reshape(-1, 32) - blocks) <= step * (0.5 + 127 * 2.0 ** -11))
            assert not np.array_equal(q8[gname], want)
        else:
            np.testing.assert_array_equal(q8[gname], want)


def test_qk_rows_are_what_llama_cpp_converter_makes_of_the_hf_export(exported):
    """llama.cpp's HF converter undoes HF's rotate_half row order; from our (interleaved) rows the
    HF export's rows go through it back to exactly the GGUF's."""
    cfg, state, paths, _ = exported
    f32 = _tensors(gguf.GGUFReader(paths["f32"]))
    for name, heads, gname in (("layers.0.attention.wq.weight", 4, "blk.0.attn_q.weight"),
                               ("layers.0.attention.wk.weight", 2, "blk.0.attn_k.weight")):
        hf_rows = _hf_rotate_half_rows(state[name], heads)
        assert not torch.equal(hf_rows, state[name])
        np.testing.assert_array_equal(f32[gname], _llama_cpp_rows(hf_rows, heads).numpy())


def test_tied_biased_mqa(tmp_path, tiny_tokenizer):
    cfg = _model(len(load_model_proto(tiny_tokenizer).pieces), tied=True, kv_heads=1, bias=True)
    state = _checkpoint(tmp_path / "ckpt", cfg)
    path = to_gguf(tmp_path / "ckpt", tmp_path / "out", tiny_tokenizer, outtype="q8_0", context_length=77,
                   progress=False)
    reader = gguf.GGUFReader(path)
    tensors = _tensors(reader)
    assert "output.weight" not in tensors  # llama.cpp falls back to token_embd
    assert tensors["blk.0.attn_k.weight"].shape == (16, 64) and tensors["blk.0.attn_k.bias"].shape == (16,)
    np.testing.assert_array_equal(tensors["blk.1.attn_output.bias"], state["layers.1.attention.wo.bias"].numpy())
    assert _fields(reader)["llama.context_length"] == 77
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["context_length"] == {"value": 77, "from": "command line"} and manifest["notes"] == []


def _byte_level_bpe(folder):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                       pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    texts = [json.loads(line)["text"] for line in SAMPLE_TRAIN.read_text(encoding="utf-8").splitlines()[:400]]
    tokenizer.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=700, special_tokens=["<|endoftext|>", "<|im_start|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    folder.mkdir()
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}))
    return tokenizer


def test_byte_level_bpe_vocabulary(tmp_path):
    tokenizer = _byte_level_bpe(tmp_path / "tok")
    data = json.loads((tmp_path / "tok" / "tokenizer.json").read_text())
    cfg = _model(tokenizer.get_vocab_size())
    _checkpoint(tmp_path / "ckpt", cfg)
    fields = _fields(gguf.GGUFReader(to_gguf(tmp_path / "ckpt", tmp_path / "out", tmp_path / "tok", progress=False)))
    vocab = tokenizer.get_vocab()
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "smollm"
    assert fields["tokenizer.ggml.tokens"] == sorted(vocab, key=vocab.get)
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    assert fields["tokenizer.ggml.merges"] == merges and len(merges) > 100
    types = fields["tokenizer.ggml.token_type"]
    assert types[:2] == [gguf.TokenType.CONTROL] * 2 and set(types[2:]) == {gguf.TokenType.NORMAL}
    assert fields["tokenizer.ggml.bos_token_id"] == 0 and fields["tokenizer.ggml.eos_token_id"] == 0
    assert fields["tokenizer.ggml.add_bos_token"] is False  # its post-processor adds nothing
    assert "tokenizer.ggml.scores" not in fields


def test_bad_input(tmp_path, tiny_tokenizer, capsys):
    vocab = len(load_model_proto(tiny_tokenizer).pieces)
    _checkpoint(tmp_path / "ckpt", _model(vocab))
    _checkpoint(tmp_path / "small", _model(vocab - 1))
    _checkpoint(tmp_path / "nolen", _model(vocab), seq_len=None)
    with pytest.raises(UserError, match="--outtype"):
        to_gguf(tmp_path / "ckpt", tmp_path / "a", tiny_tokenizer, outtype="q4_0")
    with pytest.raises(UserError, match="vocab_size"):
        to_gguf(tmp_path / "small", tmp_path / "a", tiny_tokenizer)
    assert not (tmp_path / "a").exists()
    with pytest.warns(UserWarning, match="no training config"):  # a model-only checkpoint
        path = to_gguf(tmp_path / "nolen", tmp_path / "nolen_out", tiny_tokenizer, progress=False)
    assert _fields(gguf.GGUFReader(path))["llama.context_length"] == 2048
    (tmp_path / "exists").mkdir()
    args = ["convert", "to-gguf", "--src", str(tmp_path / "ckpt"), "--tokenizer", str(tiny_tokenizer)]
    assert main(args + ["--dst", str(tmp_path / "exists")]) == 2
    assert "output exists" in capsys.readouterr().err
    assert main(args + ["--dst", str(tmp_path / "b"), "--outtype", "q8_0"]) == 0
    assert (tmp_path / "b" / "model.gguf").is_file() and (tmp_path / "b" / "manifest.json").is_file()
