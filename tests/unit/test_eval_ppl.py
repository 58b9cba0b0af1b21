"""`eval ppl`: the same held-out loss from an HF export and from its InternEvo checkpoint, equal
to a direct computation, independent of batching; bad input is a clear error."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")

from rethinktiny.checkpoint import save_model_only  # noqa: E402
from rethinktiny.config import ModelConfig  # noqa: E402
from rethinktiny.convert.export import to_hf  # noqa: E402
from rethinktiny.tokenizer import load_tokenizer  # noqa: E402
from rethinktiny.errors import UserError  # noqa: E402
from rethinktiny.evaluate import document_windows, evaluate_perplexity  # noqa: E402
from rethinktiny.model import PanGuPi  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


DOCS = 12


@pytest.fixture(scope="module")
def held_out(tmp_path_factory) -> Path:
    """12 held-out documents (two long, the rest short) so a CPU test scores them in seconds."""
    lines = (REPO / "data/sample/valid.jsonl").read_text(encoding="utf-8").splitlines()
    path = tmp_path_factory.mktemp("heldout") / "valid.jsonl"
    path.write_text("\n".join(lines[10:10 + DOCS]) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_tokenizer):
    """A random tiny model saved as an InternEvo checkpoint and exported to HF with its tokenizer."""
    root = tmp_path_factory.mktemp("eval")
    sp_path = tiny_tokenizer
    cfg = ModelConfig(hidden_size=48, num_layers=2, num_attention_heads=4, num_kv_heads=2, intermediate_size=96,
                      vocab_size=load_tokenizer(sp_path).vocab_size, attention_bias=True)
    torch.manual_seed(0)
    model = PanGuPi(cfg).eval()
    save_model_only(root / "ckpt" / "100", model.state_dict(), cfg)
    to_hf(root / "ckpt", root / "hf", tokenizer=sp_path, progress=False)
    return {"root": root, "sp": sp_path, "cfg": cfg, "model": model}


def test_hf_export_and_checkpoint_give_the_same_loss(setup, held_out):
    ours = evaluate_perplexity(setup["root"] / "ckpt", held_out, tokenizer=setup["sp"], seq_len=64, batch_size=4,
                               max_documents=DOCS, progress=False)
    hf = evaluate_perplexity(setup["root"] / "hf", held_out, seq_len=64, batch_size=4, max_documents=DOCS,
                             progress=False)
    assert (ours.form, hf.form) == ("internevo", "huggingface")
    assert ours.tokens == hf.tokens and ours.windows == hf.windows > ours.documents == DOCS
    assert hf.loss == pytest.approx(ours.loss, rel=1e-5)
    assert ours.perplexity == pytest.approx(math.exp(ours.loss))


def test_loss_equals_direct_computation_for_any_batching(setup, held_out):
    sp = load_tokenizer(setup["sp"])
    texts = [json.loads(line)["text"] for line in held_out.read_text(encoding="utf-8").splitlines()[:5]]
    total, count = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([[sp.bos_id] + sp.encode(text) + [sp.eos_id]])
            logits = setup["model"](ids[:, :-1])
            total += F.cross_entropy(logits[0], ids[0, 1:], reduction="sum").item()
            count += ids.shape[1] - 1
    for batch_size in (1, 3):
        result = evaluate_perplexity(setup["root"] / "ckpt", held_out, tokenizer=setup["sp"], seq_len=4096,
                                     batch_size=batch_size, max_documents=5, progress=False)
        assert result.tokens == count
        assert result.loss == pytest.approx(total / count, rel=1e-5)


@pytest.mark.parametrize("length, seq_len", [(2, 1), (10, 3), (9, 4), (100, 100), (101, 100)])
def test_windows_predict_every_token_once(length, seq_len):
    ids = list(range(length))
    windows = document_windows(ids, seq_len)
    targets = [t for w in windows for t in w[1:]]
    assert targets == ids[1:] and all(2 <= len(w) <= seq_len + 1 for w in windows)


def test_internevo_config_file_for_a_checkpoint_without_model_config(setup, held_out, tmp_path):
    cfg = setup["cfg"]
    (tmp_path / "ckpt").mkdir()
    torch.save(setup["model"].state_dict(), tmp_path / "ckpt" / "model_tp0_pp0.pt")
    config_file = tmp_path / "model_cfg.py"
    config_file.write_text(
        'model_type = "PANGU_PI_PRO"\n'
        f"model = dict(num_attention_heads={cfg.num_attention_heads}, num_kv_attention_heads={cfg.num_kv_heads},"
        f" hidden_size={cfg.hidden_size}, num_layers={cfg.num_layers}, intermediate_size={cfg.intermediate_size},"
        f" vocab_size={cfg.vocab_size}, no_bias=False)\n")
    with pytest.raises(UserError, match="pass the InternEvo config file with --config"):
        evaluate_perplexity(tmp_path / "ckpt", held_out, tokenizer=setup["sp"], max_documents=2, progress=False)
    from_file = evaluate_perplexity(tmp_path / "ckpt", held_out, config=config_file, tokenizer=setup["sp"],
                                    max_documents=3, progress=False)
    from_json = evaluate_perplexity(setup["root"] / "ckpt", held_out, tokenizer=setup["sp"], max_documents=3,
                                    progress=False)
    assert from_file.loss == pytest.approx(from_json.loss, rel=1e-6)


def test_cli_prints_and_writes_json(setup, held_out, tmp_path, capsys):
    from rethinktiny.cli import main

    out = tmp_path / "ppl.json"
    assert main(["eval", "ppl", "--model", str(setup["root"] / "hf"), "--data", str(held_out), "--max-docs", "2",
                 "--seq-len", "128", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["form"] == "huggingface" and result["documents"] == 2
    assert f"loss {result['loss']:.4f}" in capsys.readouterr().out


def test_bad_input(setup, held_out, tmp_path):
    with pytest.raises(UserError, match="nowhere: model folder not found"):
        evaluate_perplexity(tmp_path / "nowhere", held_out, progress=False)
    with pytest.raises(UserError, match="ckpt: no tokenizer.model or tokenizer.json next to the model; pass --tokenizer"):
        evaluate_perplexity(setup["root"] / "ckpt", held_out, max_documents=1, progress=False)
    wrong = setup["cfg"].replace(vocab_size=setup["cfg"].vocab_size + 8)
    save_model_only(tmp_path / "wrong", PanGuPi(wrong).state_dict(), wrong)
    with pytest.raises(UserError, match=rf"tokenizer has {setup['cfg'].vocab_size} pieces but the model's "
                                        rf"vocab_size is {wrong.vocab_size}"):
        evaluate_perplexity(tmp_path / "wrong", held_out, tokenizer=setup["sp"], max_documents=1, progress=False)
    with pytest.raises(UserError, match="is a Hugging Face folder"):
        evaluate_perplexity(setup["root"] / "hf", held_out, config=tmp_path / "x.py", progress=False)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(UserError, match="empty.jsonl: no documents"):
        evaluate_perplexity(setup["root"] / "hf", empty, progress=False)
    with pytest.raises(UserError, match="missing.jsonl: corpus file not found"):
        evaluate_perplexity(setup["root"] / "hf", tmp_path / "missing.jsonl", progress=False)
