"""`arch sweep --measure llama.cpp`: each shape as a GGUF file with a placeholder vocabulary, timed
in llama-cpp-python (when it is installed; it is built from its sdist, see bench/gguf_parity.py)."""

from __future__ import annotations

import json
import math

import pytest

gguf = pytest.importorskip("gguf")

from rethinktiny.arch.llama_cpp_speed import gguf_outtype  # noqa: E402
from rethinktiny.checkpoint import save_model_only  # noqa: E402
from rethinktiny.cli import main  # noqa: E402
from rethinktiny.config import ModelConfig  # noqa: E402
from rethinktiny.convert.gguf_export import placeholder_vocab, to_gguf  # noqa: E402
from rethinktiny.errors import UserError  # noqa: E402
from rethinktiny.model import PanGuPi  # noqa: E402

TINY_SWEEP = ["arch", "sweep", "--params", "3e6", "--vocab", "4096", "--heads-dim", "32", "--layers", "2:6:2",
              "--per-depth", "1", "--tolerance", "0.1", "--no-presets"]
QUICK = ["--prompt-len", "4", "--decode-steps", "2", "--warmup-steps", "1"]


def test_placeholder_vocabulary_gguf(tmp_path):
    cfg = ModelConfig(hidden_size=32, num_layers=1, num_attention_heads=2, num_kv_heads=2, intermediate_size=64,
                      vocab_size=300)
    save_model_only(tmp_path / "ckpt", PanGuPi(cfg).state_dict(), cfg)
    path = to_gguf(tmp_path / "ckpt", tmp_path / "out", placeholder_vocab(300), outtype="f32", context_length=256,
                   progress=False)
    fields = {name: field.contents() for name, field in gguf.GGUFReader(path).fields.items()}
    tokens, types = fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.token_type"]
    assert len(tokens) == len(set(tokens)) == 300 and tokens[:3] == ["<unk>", "<s>", "</s>"]
    assert types.count(gguf.TokenType.BYTE) == 256 and tokens[3 + 0x0A] == "<0x0A>"
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["args"]["tokenizer"] == "placeholder vocabulary"
    with pytest.raises(UserError, match="at least 259"):
        placeholder_vocab(100)


def test_dtypes():
    assert (gguf_outtype("fp32"), gguf_outtype("float16")) == ("f32", "f16")
    with pytest.raises(UserError, match="float32 or float16"):
        gguf_outtype("bf16")


def test_bad_dtype_exits_2_before_measuring(capsys):
    assert main([*TINY_SWEEP, "--measure", "llama.cpp", "--measure-dtype", "bf16", *QUICK]) == 2
    assert "llama.cpp is timed in float32 or float16" in capsys.readouterr().err


def test_sweep_measured_in_llama_cpp(tmp_path):
    pytest.importorskip("llama_cpp")
    rows_json = tmp_path / "rows.json"
    assert main([*TINY_SWEEP, "--measure", "llama.cpp", *QUICK, "--json", str(rows_json)]) == 0
    rows = json.loads(rows_json.read_text())["rows"]
    assert [row["layers"] for row in rows] == [2, 4]
    for row in rows:
        assert math.isfinite(row["decode_tokens_per_s"]) and row["decode_tokens_per_s"] > 0
        assert row["prefill_tokens_per_s"] > 0
