"""One HF export that frames text the way training did (every document starts with <s>) for
transformers' `generate` and `pipeline`; its context length is the training sequence length; and
`eval ppl` reports bits per byte / nats per character by the documented rule."""

from __future__ import annotations

import json
import math

import pytest
import torch

pytest.importorskip("transformers")

from rethinktiny.checkpoint import save_model_only  # noqa: E402
from rethinktiny.config import ModelConfig  # noqa: E402
from rethinktiny.convert.context_length import (CONFIG_TEXT_FILE, seq_len_from_config_text,  # noqa: E402
                                                training_seq_len)
from rethinktiny.convert.export import to_hf  # noqa: E402
from rethinktiny.errors import UserError  # noqa: E402
from rethinktiny.evaluate import evaluate_perplexity  # noqa: E402
from rethinktiny.model import PanGuPi, generate  # noqa: E402
from rethinktiny.vocab.spmodel import load_model_proto  # noqa: E402

from tests.conftest import REPO  # noqa: E402

PROMPTS = ["def f(x):\n\treturn", "今天天气", "The quick brown fox"]


def _sp(path):
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(path))


@pytest.fixture(scope="module")
def export(tmp_path_factory, tiny_tokenizer):
    """A tiny model whose next token depends on context (weights scaled up from init), saved as a
    training step folder with InternEvo's config_file.pt, exported with defaults."""
    root = tmp_path_factory.mktemp("clients")
    cfg = ModelConfig(hidden_size=64, num_layers=2, num_attention_heads=4, num_kv_heads=2, intermediate_size=128,
                      vocab_size=len(load_model_proto(tiny_tokenizer).pieces))
    torch.manual_seed(0)
    model = PanGuPi(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2:
                p.mul_(4.0)
    save_model_only(root / "ckpt", model.state_dict(), cfg)
    text = "SEQ_LEN = 256\ndata = dict(seq_len=SEQ_LEN, micro_bsz=2)\n# overridden on the command line (--set):\n"
    torch.save(text + "# data.seq_len=96\n# data.total_steps=3\n", root / "ckpt" / CONFIG_TEXT_FILE)
    to_hf(root / "ckpt", root / "hf", tokenizer=tiny_tokenizer, progress=False)
    return root, model.eval(), _sp(tiny_tokenizer)


def test_context_length_is_the_training_seq_len(export):
    root, _, _ = export
    config = json.loads((root / "hf" / "config.json").read_text())
    manifest = json.loads((root / "hf" / "manifest.json").read_text())
    assert config["max_position_embeddings"] == 96  # the --set override wins over SEQ_LEN
    assert manifest["max_position_embeddings"]["from"].endswith(f"{CONFIG_TEXT_FILE}: data.seq_len")


def test_seq_len_sources(tmp_path):
    assert seq_len_from_config_text("SEQ_LEN = 4096\nmodel = dict()\ndata = dict(seq_len=SEQ_LEN)\n", "c") == 4096
    assert seq_len_from_config_text('data = {"seq_len": 512, "micro_bsz": 1}\n', "c") == 512
    assert seq_len_from_config_text("model = dict(num_layers=2)\n", "c") is None
    with pytest.raises(UserError, match="c: data.seq_len is not a positive integer literal"):
        seq_len_from_config_text("data = dict(seq_len=2 ** 10)\n", "c")
    for config in (REPO / "configs" / "tiny_cpu.py", REPO / "configs" / "LLM1B.py"):
        found = training_seq_len(tmp_path, config)
        assert found is not None and found[1] == f"{config}: data.seq_len"
    assert training_seq_len(tmp_path, REPO / "configs" / "tiny_cpu.py")[0] == 256
    assert training_seq_len(tmp_path, None) is None


def test_generate_and_pipeline_start_with_bos(export):
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    root, ours, sp = export
    tok = AutoTokenizer.from_pretrained(str(root / "hf"), local_files_only=True)
    hf = AutoModelForCausalLM.from_pretrained(str(root / "hf"), local_files_only=True).eval()
    pipe = pipeline("text-generation", model=hf, tokenizer=tok, device="cpu")
    bos_matters = 0
    for prompt in PROMPTS:
        ids = tok(prompt, return_tensors="pt").input_ids
        assert ids[0].tolist() == [sp.bos_id()] + sp.encode(prompt)  # one <s>, as in training
        want = generate(ours, [sp.bos_id()] + sp.encode(prompt), max_new_tokens=8)
        without_bos = generate(ours, sp.encode(prompt), max_new_tokens=8)
        out = hf.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False)
        assert out[0, ids.shape[1]:].tolist() == want
        text = pipe(prompt, max_new_tokens=8, min_new_tokens=8, do_sample=False, return_full_text=False)
        assert text[0]["generated_text"] == sp.decode(want)
        assert pipe.preprocess(prompt)["input_ids"][0].tolist() == ids[0].tolist()
        bos_matters += want != without_bos
    assert bos_matters  # so a dropped <s> would have been caught above


def test_bits_per_byte_rule(export, tmp_path):
    root, _, sp = export
    texts = [json.loads(line)["text"] for line in (REPO / "data/sample/valid.jsonl").read_text().splitlines()[:12]]
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    with_eos = evaluate_perplexity(root / "hf", data, seq_len=64, progress=False)
    without = evaluate_perplexity(root / "hf", data, seq_len=64, add_eos=False, progress=False)
    num_bytes = sum(len(t.encode("utf-8")) for t in texts)
    assert with_eos.bytes == without.bytes == num_bytes > sum(len(t) for t in texts) == with_eos.characters
    for result in (with_eos, without):
        assert result.nll == pytest.approx(result.loss * result.tokens, rel=1e-9)
        assert result.bits_per_byte == pytest.approx(result.nll / math.log(2) / num_bytes, rel=1e-12)
        assert result.nats_per_character == pytest.approx(result.nll / result.characters, rel=1e-12)
    # EOS adds one predicted token per document and its NLL, but no bytes
    assert with_eos.tokens - without.tokens == len(texts) and with_eos.nll > without.nll
    assert without.tokens == sum(len(sp.encode(t)) for t in texts)
