"""`data train-tokenizer` keeps text as written: identity normalization, whitespace and newlines
kept, so decode(encode(x)) == x on every document of the bundled sample."""

from __future__ import annotations

import json

import pytest

from rethinktiny.cli import main
from rethinktiny.data.prepare import train_tokenizer
from rethinktiny.errors import UserError
from rethinktiny.vocab.spmodel import load_model_proto

from tests.conftest import REPO


def load_sentencepiece(path):
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(path))


def _sample_texts() -> list[str]:
    texts = []
    for path in sorted((REPO / "data" / "sample").glob("*.jsonl")):
        texts.extend(json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line)
    return texts


@pytest.fixture(scope="module")
def identity_tokenizer(tmp_path_factory):
    # The Makefile's sample tokenizer settings (4,096 pieces on the training sample).
    return train_tokenizer(REPO / "data" / "sample" / "train.jsonl", tmp_path_factory.mktemp("tok") / "t", 4096)


def test_round_trip_is_exact_on_the_whole_sample(identity_tokenizer):
    texts = _sample_texts()
    # the sample has what a normalizer would change, so the round trip below can fail
    assert any("\n" in t for t in texts) and any("\t" in t for t in texts) and any("  " in t for t in texts)
    sp = load_sentencepiece(identity_tokenizer)
    decoded = sp.decode(sp.encode(texts))
    mismatched = [i for i, (a, b) in enumerate(zip(texts, decoded)) if a != b]
    assert len(texts) > 5000 and not mismatched


def test_settings_keep_whitespace(identity_tokenizer):
    spec = load_model_proto(identity_tokenizer)
    assert spec.normalizer_spec.name == "identity"
    assert not spec.normalizer_spec.remove_extra_whitespaces
    assert spec.trainer_spec.byte_fallback and spec.trainer_spec.split_by_whitespace
    sp = load_sentencepiece(identity_tokenizer)
    for text in ("def f():\n\treturn  1\n", "\r\n\u3000全角，标点！\n", " leading and trailing  ", "\x0b\x0c\u2028"):
        assert sp.decode(sp.encode(text)) == text


def test_normalization_option_chooses_another_rule(tmp_path):
    path = train_tokenizer(REPO / "data" / "sample" / "train.jsonl", tmp_path / "nfkc", 2000,
                           character_coverage=0.995,
                           normalization="nmt_nfkc")
    assert load_model_proto(path).normalizer_spec.name == "nmt_nfkc"
    sp = load_sentencepiece(path)
    assert sp.decode(sp.encode("a\nb")) == "a b"  # the reason identity is the default


def test_unknown_rule_is_a_user_error(tmp_path, capsys):
    with pytest.raises(UserError, match="--normalization"):
        train_tokenizer(REPO / "data" / "sample" / "train.jsonl", tmp_path / "x", 1000, normalization="nfd")
    assert not (tmp_path / "x").exists()
    assert main(["data", "train-tokenizer", "--input", str(REPO / "data" / "sample" / "train.jsonl"),
                 "--dst", str(tmp_path / "y"), "--vocab-size", "1000", "--normalization", "nfd"]) == 2
    assert not (tmp_path / "y").exists()
