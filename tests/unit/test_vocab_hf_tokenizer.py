"""Hugging Face tokenizer files give SentencePiece's ids on any text (write_hf_tokenizer)."""

import io
import json
import random

import numpy as np
import pytest
import sentencepiece as spm

from rethinktiny.errors import UserError
from rethinktiny.vocab.hf_tokenizer import HF_FILES, write_hf_tokenizer
from rethinktiny.vocab.prune import prune_sentencepiece
from rethinktiny.vocab.spmodel import load_model_proto

transformers = pytest.importorskip("transformers")

USER_DEFINED = ["<|im_start|>", "<|im_end|>", "<tool>", "<to"]
EDGE_TEXTS = [
    "", " ", "   ", "a", " leading space", "trailing space ", "two  spaces   three",
    "\ttab\nnewline\r\nCRLF", "Hello, world! The quick brown fox.", "中文测试，混合 English 文本。",
    "emoji 😀👍🏽🇩🇪 and ZWJ 👨‍👩‍👧",
    "rare: 𝔘𓀀ꙮ\U0010FFFD \x00 \x7f",
    "full-width ｔｅｘｔ　space ～ and ﬁ ligature Ⅻ ① ㍻",
    "combining e\u0301 ｅ\u0301 \u1100\u1161\u11a8 क़", "▁literal ▁▁ marker ▁", "<s> </s> <unk> <0x41> literal",
    "<|im_start|>user\nhi<|im_end|>", "<|im_start|>", " <|im_start|> ", "<|im_end|></s>", "x<tool><s>",
    "<to<tool>to<|im_end|><0x0A>", "code:\n    def f(x):\n        return x  # done\n",
]


def _texts(sample_valid_corpus, n_random=1500, seed=0):
    rng = random.Random(seed)
    docs = [json.loads(line)["text"] for line in open(sample_valid_corpus, encoding="utf-8")]
    alphabet = (list("abcxyz ABC  .,<>/|_0x1") + USER_DEFINED +
                ["  ", "\n", "\r\n", "\t", "中", "文", "😀", "▁", "ｔ", "\u3000", "e\u0301", "ﬁ", "𝔘", "<s>", "</s>",
                 "<0x41>", "～"])
    fuzz = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 25))) for _ in range(n_random)]
    snippets = [d[i:i + rng.randint(1, 60)] for d in docs[:300] for i in (0, len(d) // 2)]
    return EDGE_TEXTS + docs + fuzz + snippets


def _train(texts, path, **options):
    model = io.BytesIO()
    settings = dict(model_writer=model, vocab_size=2000, model_type="bpe", byte_fallback=True,
                    character_coverage=0.995, num_threads=2, minloglevel=2, max_sentence_length=1 << 16)
    settings.update(options)
    spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), **settings)
    path.write_bytes(model.getvalue())
    return path


@pytest.fixture(scope="module")
def corpus_texts(sample_corpus):
    return [json.loads(line)["text"] for line in open(sample_corpus, encoding="utf-8")][:3000]


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory, corpus_texts, tiny_tokenizer):
    """The project's fixture tokenizer plus three trained here, and a pruned one."""
    folder = tmp_path_factory.mktemp("hf_tok")
    found = {"fixture": tiny_tokenizer}
    found["default_norm_user_defined"] = _train(corpus_texts, folder / "a.model", user_defined_symbols=USER_DEFINED)
    found["remove_ws_fixture_like"] = _train(corpus_texts, folder / "b.model", remove_extra_whitespaces=True,
                                             allow_whitespace_only_pieces=True)
    found["identity_no_prefix_user_defined"] = _train(
        corpus_texts, folder / "c.model", normalization_rule_name="identity", add_dummy_prefix=False,
        remove_extra_whitespaces=False, user_defined_symbols=USER_DEFINED)
    proto = load_model_proto(found["default_norm_user_defined"])
    processor = spm.SentencePieceProcessor(model_file=str(found["default_norm_user_defined"]))
    counts = np.bincount(np.concatenate([np.asarray(ids, dtype=np.int64) for ids in processor.encode(corpus_texts)]),
                         minlength=len(proto.pieces))
    pruned = folder / "pruned.model"
    pruned.write_bytes(prune_sentencepiece(proto, counts, 1200).proto.SerializeToString())
    found["pruned"] = pruned
    return found


@pytest.mark.parametrize("name", ["fixture", "default_norm_user_defined", "remove_ws_fixture_like",
                                  "identity_no_prefix_user_defined", "pruned"])
def test_hf_ids_equal_sentencepiece_ids(name, tokenizers, tmp_path, sample_valid_corpus):
    model = tokenizers[name]
    write_hf_tokenizer(model, tmp_path)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    sp = spm.SentencePieceProcessor(model_file=str(model))
    texts = _texts(sample_valid_corpus)
    expected = sp.encode(texts)
    got = hf(texts)["input_ids"]
    wrong = [(t, [sp.id_to_piece(i) for i in g], [sp.id_to_piece(i) for i in e])
             for t, g, e in zip(texts, got, expected) if g != e]
    assert not wrong, f"{len(wrong)}/{len(texts)} differ, first: {wrong[0]}"
    assert [hf.decode(ids) for ids in expected[:300]] == [sp.decode(ids) for ids in expected[:300]]


def test_files_written_and_deterministic(tokenizers, tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir(), second.mkdir()
    write_hf_tokenizer(tokenizers["default_norm_user_defined"], first)
    write_hf_tokenizer(tokenizers["default_norm_user_defined"], second)
    for name in HF_FILES:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    assert (first / "tokenizer.model").read_bytes() == tokenizers["default_norm_user_defined"].read_bytes()
    config = json.loads((first / "tokenizer_config.json").read_text())
    assert config["add_bos_token"] is False and config["split_special_tokens"] is True


def test_special_tokens_and_optional_bos_eos(tokenizers, tmp_path):
    sp = spm.SentencePieceProcessor(model_file=str(tokenizers["fixture"]))
    write_hf_tokenizer(tokenizers["fixture"], tmp_path, add_bos_token=True, add_eos_token=True)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert (hf.bos_token_id, hf.eos_token_id, hf.unk_token_id) == (sp.bos_id(), sp.eos_id(), sp.unk_id())
    assert hf("hello world")["input_ids"] == [sp.bos_id()] + sp.encode("hello world") + [sp.eos_id()]
    # The literal text "<s>" is characters, not the BOS id, exactly as in SentencePiece.
    assert hf("<s>", add_special_tokens=False)["input_ids"] == sp.encode("<s>")


def test_user_defined_piece_alone_keeps_dummy_prefix(tokenizers, tmp_path):
    model = tokenizers["default_norm_user_defined"]
    write_hf_tokenizer(model, tmp_path)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    sp = spm.SentencePieceProcessor(model_file=str(model))
    for text in ["<|im_start|>", "<|im_start|>hi", "a<|im_end|>"]:
        assert hf(text)["input_ids"] == sp.encode(text)
    assert len(sp.encode("<|im_start|>")) == 2  # "▁" then the piece: the case a naive export gets wrong


def test_not_sentencepiece_is_a_clear_error(tmp_path):
    bogus = tmp_path / "tokenizer.model"
    bogus.write_bytes(b"this is not a protobuf \xff\xfe")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(UserError, match="not a SentencePiece model"):
        write_hf_tokenizer(bogus, out)
    assert list(out.iterdir()) == []


def test_missing_destination_folder(tokenizers, tmp_path):
    with pytest.raises(UserError, match="output folder not found"):
        write_hf_tokenizer(tokenizers["fixture"], tmp_path / "missing")
    with pytest.raises(UserError, match="tokenizer file not found"):
        write_hf_tokenizer(tmp_path / "nope.model", tmp_path)
