"""vocab.compact.prune_vocab: the tokenizer's kind picks the pruning, as `vocab prune` does."""

import json
from collections import Counter

import pytest

from rethinktiny.errors import UserError
from rethinktiny.tokenizer import load_tokenizer
from rethinktiny.vocab.bpe_prune import prune_tokenizer_json
from rethinktiny.vocab.compact import describe_prune, prune_vocab
from rethinktiny.vocab.prune import prune_tokenizer


def _counts(tokenizer_folder, corpus, path):
    texts = [json.loads(line)["text"] for line in corpus.read_text(encoding="utf-8").splitlines()[:300] if line.strip()]
    counts = Counter(i for ids in load_tokenizer(tokenizer_folder).encode_batch(texts) for i in ids)
    path.write_text(json.dumps({str(i): n for i, n in counts.items()}))
    return path


@pytest.mark.parametrize("kind", ["sentencepiece", "bpe"])
def test_prune_vocab_picks_the_pruning_of_the_tokenizer_kind(kind, tiny_tokenizer, hf_bpe_tokenizer, sample_corpus,
                                                             tmp_path):
    folder, direct, size = ((tiny_tokenizer, prune_tokenizer, 1500) if kind == "sentencepiece"
                            else (hf_bpe_tokenizer, prune_tokenizer_json, 1200))
    counts = _counts(folder, sample_corpus, tmp_path / "counts.json")
    report = prune_vocab(folder, counts, size, tmp_path / "api")
    assert report == direct(folder, counts, size, tmp_path / "direct")
    names = sorted(p.name for p in (tmp_path / "api").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "direct").iterdir()) and "token_map.json" in names
    assert report["new_vocab_size"] == size
    line = describe_prune(tmp_path / "api", report)
    assert f"{size} of " in line and ("0 dead" if kind == "sentencepiece" else "0 unreachable") in line
    with pytest.raises(UserError, match="exists"):
        prune_vocab(folder, counts, size, tmp_path / "api")
