"""HF <-> ours parity à la litgpt: tiny random LlamaForCausalLM models (GQA or not, attention
bias or not, tied or untied) imported and exported; logits, tensors and greedy text compared."""

from __future__ import annotations

import json
import runpy
from dataclasses import dataclass
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

transformers = pytest.importorskip("transformers")
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from rethinktiny.checkpoint import load_model, save_model_only  # noqa: E402
from rethinktiny.config import ModelConfig  # noqa: E402
from rethinktiny.convert.export import to_hf  # noqa: E402
from rethinktiny.convert.import_hf import from_hf  # noqa: E402
from rethinktiny.rotary_layout import half_to_interleaved, interleaved_to_half  # noqa: E402
from rethinktiny.model import PanGuPi, generate  # noqa: E402
from tests.unit.shard_helpers import save_like_internevo  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


VOCAB = 96


@dataclass
class SentencePieceFixture:
    path: Path
    vocab_size: int


@pytest.fixture(scope="module")
def tiny_sp(tiny_tokenizer) -> SentencePieceFixture:
    """The fixture tokenizer (conftest) and its piece count."""
    from rethinktiny.tokenizer import load_tokenizer

    return SentencePieceFixture(tiny_tokenizer, load_tokenizer(tiny_tokenizer).vocab_size)


def random_hf_llama(kv_heads: int, bias: bool, tied: bool, seed: int = 0) -> LlamaForCausalLM:
    """A tiny LlamaForCausalLM with weights large enough that attention is sharp (so a wrong
    rotary layout cannot hide in near-uniform attention)."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=kv_heads, attention_bias=bias,
                         tie_word_embeddings=tied, rms_norm_eps=1e-5, rope_theta=500.0,
                         max_position_embeddings=64)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(1.0 + 0.2 * torch.randn_like(param))
            else:
                param.normal_(0.0, 0.3)
    return model.eval()


def hf_tensors(folder: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(path))
    return tensors


def load_hf(folder: Path) -> LlamaForCausalLM:
    return LlamaForCausalLM.from_pretrained(str(folder), local_files_only=True).eval()


def test_rotary_permute_matches_meta_layout():
    # one head of 4 channels: interleaved pairs (0,1), (2,3) -> rotate_half halves [0, 2 | 1, 3]
    rows = torch.arange(8.0).reshape(8, 1)  # two heads
    assert interleaved_to_half(rows, 2).flatten().tolist() == [0, 2, 1, 3, 4, 6, 5, 7]
    weight = torch.randn(24, 5)
    assert torch.equal(half_to_interleaved(interleaved_to_half(weight, 3), 3), weight)


@pytest.mark.parametrize("kv_heads, bias, tied", [(4, False, False), (2, True, False), (2, False, True),
                                                  (1, True, True)])
def test_hf_to_ours_to_hf(tmp_path, kv_heads, bias, tied):
    hf = random_hf_llama(kv_heads, bias, tied)
    hf.save_pretrained(tmp_path / "hf")
    from_hf(tmp_path / "hf", tmp_path / "ours", progress=False)
    ours = load_model(tmp_path / "ours")
    assert (ours.cfg.num_kv_heads, ours.cfg.attention_bias, ours.cfg.tie_embeddings) == (kv_heads, bias, tied)
    ids = torch.randint(0, VOCAB, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(ids).logits
        torch.testing.assert_close(ours(ids), expected)

    to_hf(tmp_path / "ours", tmp_path / "hf2", max_shard_size="40KB", progress=False)
    original, exported = hf_tensors(tmp_path / "hf"), hf_tensors(tmp_path / "hf2")
    assert sorted(original) == sorted(exported)
    for name, tensor in original.items():
        assert exported[name].dtype == tensor.dtype and torch.equal(exported[name], tensor), name
    assert len(list((tmp_path / "hf2").glob("model-*-of-*.safetensors"))) > 1  # really sharded
    with torch.no_grad():
        torch.testing.assert_close(load_hf(tmp_path / "hf2")(ids).logits, expected, rtol=0, atol=0)


def test_from_hf_reads_pytorch_model_bin(tmp_path):
    # older HF folders ship pytorch_model.bin instead of safetensors
    hf = random_hf_llama(2, False, False)
    hf.save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "model.safetensors").unlink()
    torch.save(hf.state_dict(), tmp_path / "hf" / "pytorch_model.bin")
    from_hf(tmp_path / "hf", tmp_path / "ours", progress=False)
    ids = torch.randint(0, VOCAB, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(load_model(tmp_path / "ours")(ids), hf(ids).logits)


def test_greedy_generation_is_identical(tmp_path):
    hf = random_hf_llama(kv_heads=2, bias=True, tied=False, seed=3)
    hf.save_pretrained(tmp_path / "hf")
    from_hf(tmp_path / "hf", tmp_path / "ours", progress=False)
    ours = load_model(tmp_path / "ours")
    prompt = [5, 17, 42, 8, 63]
    with torch.no_grad():
        hf_out = hf.generate(torch.tensor([prompt]), max_new_tokens=20, do_sample=False, eos_token_id=None,
                             pad_token_id=0)[0, len(prompt):].tolist()
    ours_out = generate(ours, prompt, 20)
    assert ours_out == hf_out and len(set(ours_out)) > 1


def random_ours(cfg: ModelConfig, seed: int = 0) -> PanGuPi:
    torch.manual_seed(seed)
    model = PanGuPi(cfg)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(1.0 + 0.2 * torch.randn_like(param) if "norm" in name else 0.3 * torch.randn_like(param))
    return model.eval()


OURS_CFG = ModelConfig(hidden_size=64, num_layers=3, num_attention_heads=4, num_kv_heads=2, intermediate_size=96,
                       vocab_size=VOCAB, attention_bias=True, rope_theta=500.0)


@pytest.mark.parametrize("tp, stages", [(1, [3]), (2, [2, 1])])
def test_internevo_checkpoint_to_hf(tmp_path, tp, stages):
    """From our side: a tp/pp-sharded InternEvo checkpoint exports to HF with our logits."""
    ours = random_ours(OURS_CFG)
    step = tmp_path / "ckpt" / "50"
    save_model_only(step, ours.state_dict(), OURS_CFG)  # model_config.json next to the shards
    (step / "model_tp0_pp0.pt").unlink()
    save_like_internevo(step, ours.state_dict(), tp, stages)
    (tmp_path / "ckpt" / "10").mkdir()  # an older step must not be taken
    torch.save({}, tmp_path / "ckpt" / "10" / "model_tp0_pp0.pt")

    to_hf(tmp_path / "ckpt", tmp_path / "hf", progress=False)
    ids = torch.randint(0, VOCAB, (2, 33), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(load_hf(tmp_path / "hf")(ids).logits, ours(ids))
    manifest = json.loads((tmp_path / "hf" / "manifest.json").read_text())
    assert manifest["source_step_folder"] == str(step) and manifest["source_tp_pp"] == [tp, len(stages)]


def test_dtype_flag_and_config_files(tmp_path):
    ours = random_ours(OURS_CFG.replace(tie_embeddings=True))
    save_model_only(tmp_path / "ckpt", ours.state_dict(), ours.cfg)
    to_hf(tmp_path / "ckpt", tmp_path / "hf", dtype="bfloat16", max_position_embeddings=128, progress=False)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["dtype"] == "bfloat16"
    assert config["tie_word_embeddings"] and config["max_position_embeddings"] == 128
    index = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())
    tensors = hf_tensors(tmp_path / "hf")
    assert set(index["weight_map"]) == set(tensors) and "lm_head.weight" not in tensors
    assert index["metadata"]["total_size"] == sum(t.numel() * 2 for t in tensors.values())
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}
    hf = LlamaForCausalLM.from_pretrained(str(tmp_path / "hf"), local_files_only=True, dtype=torch.float32)
    assert torch.equal(hf.lm_head.weight, hf.model.embed_tokens.weight)
    assert torch.equal(hf.model.embed_tokens.weight, ours.tok_embeddings.weight.detach().bfloat16().float())


def test_seed_command_and_cli(tmp_path, tiny_sp, monkeypatch):
    cfg = OURS_CFG.replace(vocab_size=tiny_sp.vocab_size)
    save_model_only(tmp_path / "origin_ckpt" / "7", random_ours(cfg).state_dict(), cfg)
    # The seed's script, run as __main__ in this process (a subprocess costs seconds of imports).
    argv = ["convert2hf.py", "--src_folder", str(tmp_path / "origin_ckpt"), "--tgt_folder", str(tmp_path / "hf_ckpt"),
            "--tokenizer", str(tiny_sp.path.parent)]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(REPO / "tools/transformers/convert2hf.py"), run_name="__main__")
    assert exit_info.value.code == 0
    assert (tmp_path / "hf_ckpt" / "tokenizer.json").is_file()
    first = hf_tensors(tmp_path / "hf_ckpt")
    from rethinktiny.cli import main

    assert main(["convert", "from-hf", "--src", str(tmp_path / "hf_ckpt"), "--dst", str(tmp_path / "back")]) == 0
    assert (tmp_path / "back" / "tokenizer.model").read_bytes() == tiny_sp.path.read_bytes()
    assert main(["convert", "to-hf", "--src", str(tmp_path / "back"), "--dst", str(tmp_path / "hf_ckpt")]) == 2
    assert main(["convert", "to-hf", "--src", str(tmp_path / "back"), "--dst", str(tmp_path / "hf_ckpt"),
                 "--tokenizer", str(tiny_sp.path), "--force"]) == 0
    again = hf_tensors(tmp_path / "hf_ckpt")
    assert again.keys() == first.keys() and all(torch.equal(again[k], first[k]) for k in first)
