"""The exported HF tokenizer gives SentencePiece's ids: English, Chinese, emoji, whitespace runs,
leading spaces and the held-out sample."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")
from transformers import AutoTokenizer  # noqa: E402

from rethinktiny.checkpoint import save_model_only  # noqa: E402
from rethinktiny.config import ModelConfig  # noqa: E402
from rethinktiny.convert.export import to_hf  # noqa: E402
from rethinktiny.tokenizer import load_tokenizer  # noqa: E402
from rethinktiny.model import PanGuPi  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello, world! It's 2024: 3.14159 x 10^6 tokens.",
    "今天天气很好，我们去公园散步吧。",
    "混合 mixed 文本 with English と日本語",
    "emoji 😀🎉👍🏽 and 🧑‍💻 family 👨‍👩‍👧",
    "many     spaces\tand\t\ttabs\n\nnew  lines   ",
    "   leading spaces",
    " one leading space",
    "trailing spaces   ",
    "",
    " ",
    "<s> literal specials </s> <unk>",
    "ÀÉÎÕÜ ﬁ ① ｆｕｌｌｗｉｄｔｈ",
]


def held_out_texts(limit: int = 40) -> list[str]:
    lines = (REPO / "data/sample/valid.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["text"] for line in lines[:limit]]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_tokenizer):
    """(SentencePiece model path, HF export folder) for a tiny model with the fixture tokenizer."""
    root = tmp_path_factory.mktemp("tokexport")
    sp_path = tiny_tokenizer
    cfg = ModelConfig(hidden_size=32, num_layers=1, num_attention_heads=2, num_kv_heads=2, intermediate_size=64,
                      vocab_size=load_tokenizer(sp_path).backend.get_piece_size())
    save_model_only(root / "ckpt", PanGuPi(cfg).state_dict(), cfg)
    # "hf": ids exactly sp.encode(text); "hf_bos": the default export, <s> first as in training
    to_hf(root / "ckpt", root / "hf", tokenizer=sp_path, add_bos_token=False, progress=False)
    to_hf(root / "ckpt", root / "hf_bos", tokenizer=sp_path.parent, progress=False)
    return sp_path, root


def test_export_tokenizer_ids_equal_sentencepiece(exported):
    sp_path, root = exported
    sp = load_tokenizer(sp_path).backend
    hf = AutoTokenizer.from_pretrained(str(root / "hf"), local_files_only=True)
    texts = TEXTS + held_out_texts()
    mismatched = [t for t in texts if hf(t)["input_ids"] != sp.encode(t)]
    assert not mismatched, f"{len(mismatched)} of {len(texts)} texts differ, e.g. {mismatched[0]!r}"
    assert hf.decode(sp.encode(TEXTS[2])) == sp.decode(sp.encode(TEXTS[2]))


def test_export_config_carries_special_ids(exported):
    sp_path, root = exported
    sp = load_tokenizer(sp_path).backend
    config = json.loads((root / "hf" / "config.json").read_text())
    generation = json.loads((root / "hf" / "generation_config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"]) == (sp.bos_id(), sp.eos_id())
    assert (generation["bos_token_id"], generation["eos_token_id"]) == (sp.bos_id(), sp.eos_id())


def test_default_export_prepends_bos_only(exported):
    sp_path, root = exported
    sp = load_tokenizer(sp_path).backend
    hf = AutoTokenizer.from_pretrained(str(root / "hf_bos"), local_files_only=True)
    for text in TEXTS[:6]:
        assert hf(text)["input_ids"] == [sp.bos_id()] + sp.encode(text)


@pytest.fixture(scope="module")
def pruned_export(tmp_path_factory, tiny_tokenizer):
    """The fixture tokenizer pruned by `rethinktiny.vocab.prune.prune_sentencepiece` to 1,200 pieces by its
    frequencies on the training sample, exported with a model of the pruned size."""
    import numpy as np

    from rethinktiny.vocab.prune import prune_sentencepiece
    from rethinktiny.vocab.spmodel import load_model_proto

    sp = load_tokenizer(tiny_tokenizer).backend
    lines = (REPO / "data/sample/train.jsonl").read_text(encoding="utf-8").splitlines()
    ids = np.concatenate([np.asarray(doc, dtype=np.int64)
                          for doc in sp.encode([json.loads(line)["text"] for line in lines])])
    counts = np.bincount(ids, minlength=sp.get_piece_size())
    result = prune_sentencepiece(load_model_proto(tiny_tokenizer), counts, 1200)
    root = tmp_path_factory.mktemp("pruned")
    (root / "tok").mkdir()
    sp_path = root / "tok" / "tokenizer.model"
    sp_path.write_bytes(result.proto.SerializeToString())
    cfg = ModelConfig(hidden_size=32, num_layers=1, num_attention_heads=2, num_kv_heads=2, intermediate_size=64,
                      vocab_size=1200)
    save_model_only(root / "ckpt", PanGuPi(cfg).state_dict(), cfg)
    to_hf(root / "ckpt", root / "hf", tokenizer=sp_path, add_bos_token=False, progress=False)
    return sp_path, root / "hf", sp.get_piece_size() - 1200


def test_pruned_tokenizer_ids_equal_sentencepiece(pruned_export):
    sp_path, hf_folder, dropped = pruned_export
    sp = load_tokenizer(sp_path).backend
    hf = AutoTokenizer.from_pretrained(str(hf_folder), local_files_only=True)
    texts = TEXTS + held_out_texts()
    assert dropped == 800 and len(hf) == sp.get_piece_size()
    mismatched = [t for t in texts if hf(t)["input_ids"] != sp.encode(t)]
    assert not mismatched, f"{len(mismatched)} of {len(texts)} texts differ, e.g. {mismatched[0]!r}"
