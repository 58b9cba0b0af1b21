"""vocab prune: exact size, special pieces by type, no dead pieces, consistent token map, errors."""

import io
import json

import numpy as np
import pytest
import sentencepiece as spm

from rethinktiny.config import get_preset
from rethinktiny.errors import UserError
from rethinktiny.vocab.sum_counts import write_frequency_file
from rethinktiny.vocab.prune import build_pruned_proto, prune_sentencepiece, prune_tokenizer, required_ids
from rethinktiny.vocab.reach import dead_pieces
from rethinktiny.vocab.spmodel import (BYTE, CONTROL, NORMAL, USER_DEFINED, load_model_proto,
                                       processor_from_proto)
from rethinktiny.vocab.tokenmap import load_token_map

USER_DEFINED_PIECES = ["<|im_start|>", "<|im_end|>", "[MASK]"]
ROUND_TRIP = ["The quick brown fox jumps over the lazy dog.", "中文分词与压缩词表的测试。", "emoji 😀🎉👍🏽 mixed",
              "rare 𝔘𓀀ꙮ ẞ ǅ", "<|im_start|>user\nhello<|im_end|>", "  indented\tcode() {}\n"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, sample_corpus):
    """A BPE tokenizer with byte fallback, user-defined pieces and identity normalization (so that
    decode(encode(x)) == x), plus token counts over its training text."""
    texts = [json.loads(line)["text"] for line in open(sample_corpus, encoding="utf-8")][:3000]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=model, vocab_size=2000, model_type="bpe",
        byte_fallback=True, character_coverage=0.995, user_defined_symbols=USER_DEFINED_PIECES,
        normalization_rule_name="identity", remove_extra_whitespaces=False, num_threads=2, minloglevel=2,
        max_sentence_length=1 << 16)
    path = tmp_path_factory.mktemp("prune") / "tokenizer.model"
    path.write_bytes(model.getvalue())
    processor = spm.SentencePieceProcessor(model_file=str(path))
    counts = np.bincount(np.concatenate([np.asarray(ids, dtype=np.int64) for ids in processor.encode(texts)]),
                         minlength=processor.get_piece_size())
    freq = path.with_name("total_token_freq.json")
    write_frequency_file(freq, counts)
    return path, counts, freq


@pytest.mark.parametrize("vocab_num", [700, 1200, 2000])
def test_prune_invariants(trained, vocab_num):
    path, counts, _ = trained
    proto = load_model_proto(path)
    result = prune_sentencepiece(proto, counts, vocab_num)
    pruned = result.proto
    assert len(pruned.pieces) == vocab_num == len(result.new_to_old)
    assert result.new_to_old == sorted(result.new_to_old)
    # Every non-normal piece survives, found by type, with its id mapped.
    assert set(required_ids(proto)) <= set(result.new_to_old)
    for new_id, old_id in enumerate(result.new_to_old):
        assert pruned.pieces[new_id] == proto.pieces[old_id]
    types = [p.type for p in pruned.pieces]
    assert types.count(BYTE) == 256 and types.count(USER_DEFINED) == len(USER_DEFINED_PIECES)
    assert types.count(CONTROL) == 2
    assert dead_pieces(pruned) == []
    original, small = processor_from_proto(proto), processor_from_proto(pruned)
    assert (small.unk_id(), small.bos_id(), small.eos_id()) == (0, 1, 2)
    for text in ROUND_TRIP:
        assert small.decode(small.encode(text)) == text
        new_ids = small.encode(text)
        # Mapped back, the pruned encoding decodes with the original tokenizer too.
        assert original.decode([result.new_to_old[i] for i in new_ids]) == text


def test_identity_prune_keeps_every_encoding(trained):
    path, counts, _ = trained
    proto = load_model_proto(path)
    assert dead_pieces(proto) == []  # a freshly trained model produces all its pieces
    result = prune_sentencepiece(proto, counts, len(proto.pieces))
    assert result.new_to_old == list(range(len(proto.pieces)))
    text = " ".join(ROUND_TRIP)
    assert processor_from_proto(result.proto).encode(text) == processor_from_proto(proto).encode(text)


def test_naive_top_k_leaves_dead_pieces_and_ours_does_not(trained):
    """The seed's top-k keeps pieces whose merge path is gone; the check finds them."""
    path, counts, _ = trained
    proto = load_model_proto(path)
    normal = [i for i, p in enumerate(proto.pieces) if p.type == NORMAL]
    by_count = sorted(normal, key=lambda i: -counts[i])
    naive = build_pruned_proto(proto, sorted(required_ids(proto) + by_count[:400]))
    assert len(dead_pieces(naive)) > 0
    assert dead_pieces(prune_sentencepiece(proto, counts, len(naive.pieces)).proto) == []


def test_pruned_model_beats_naive_top_k_on_its_corpus(trained, sample_valid_corpus):
    path, counts, _ = trained
    proto = load_model_proto(path)
    normal = [i for i, p in enumerate(proto.pieces) if p.type == NORMAL]
    by_count = sorted(normal, key=lambda i: (-counts[i], i))
    naive = build_pruned_proto(proto, sorted(required_ids(proto) + by_count[:400]))
    ours = prune_sentencepiece(proto, counts, len(naive.pieces)).proto
    held_out = [json.loads(line)["text"] for line in open(sample_valid_corpus, encoding="utf-8")]
    tokens = lambda p: sum(map(len, processor_from_proto(p).encode(held_out)))  # noqa: E731
    assert tokens(ours) < tokens(naive)


def test_prune_tokenizer_writes_folder_deterministically(trained, tmp_path):
    path, counts, freq = trained
    first = prune_tokenizer(path, freq, 1000, tmp_path / "a", preset="pangu_pi_1b_pro")
    prune_tokenizer(path.parent, freq, 1000, tmp_path / "b", preset="pangu_pi_1b_pro")  # folder form
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted(["tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                            "token_map.json", "report.json", "manifest.json"])
    for name in names:
        if name != "manifest.json":  # records the argument as given (file vs folder)
            assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    token_map = load_token_map(tmp_path / "a")
    old, new = load_model_proto(path), load_model_proto(tmp_path / "a")
    assert token_map.old_vocab_size == len(old.pieces) and token_map.new_vocab_size == len(new.pieces) == 1000
    assert all(new.pieces[n].piece == old.pieces[o].piece for n, o in enumerate(token_map.new_to_old))
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report == first and report["dead_pieces"] == 0
    kept = counts[token_map.index()].sum()
    assert report["coverage"]["token_coverage"] == pytest.approx(kept / counts.sum())
    assert report["pieces_by_type"]["kept"]["byte"] == 256
    share = get_preset("pangu_pi_1b_pro").replace(vocab_size=1000).embedding_share()
    assert report["embedding_share"]["new"]["share"] == pytest.approx(share)


@pytest.mark.parametrize("vocab_num, message", [(2001, "larger than"), (100, "smaller than the 262 pieces")])
def test_vocab_num_out_of_range(trained, tmp_path, vocab_num, message):
    path, _, freq = trained
    with pytest.raises(UserError, match=message):
        prune_tokenizer(path, freq, vocab_num, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bad_inputs_write_nothing(trained, tmp_path):
    path, _, freq = trained
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps({"5": 1, "2000": 3}))
    with pytest.raises(UserError, match="token id 2000 is outside the tokenizer"):
        prune_tokenizer(path, outside, 1000, tmp_path / "out")
    not_sp = tmp_path / "bogus.model"
    not_sp.write_bytes(b"\x08\x96\x01 definitely not sentencepiece")
    with pytest.raises(UserError, match="not a SentencePiece model"):
        prune_tokenizer(not_sp, freq, 1000, tmp_path / "out")
    with pytest.raises(UserError, match="unknown preset"):
        prune_tokenizer(path, freq, 1000, tmp_path / "out", preset="nope")
    assert not (tmp_path / "out").exists()
    (tmp_path / "out").mkdir()
    with pytest.raises(UserError, match="output exists; pass --force"):
        prune_tokenizer(path, freq, 1000, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []
    prune_tokenizer(path, freq, 1000, tmp_path / "out", force=True)
    assert (tmp_path / "out" / "tokenizer.model").is_file()
