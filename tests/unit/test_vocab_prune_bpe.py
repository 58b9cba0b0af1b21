"""vocab prune on a byte-level BPE tokenizer.json: exact size, added and byte tokens kept, no
unreachable token, lossless round trip, transformers parity, token map, count on HF-tokenized data,
errors that write nothing."""

import json
from pathlib import Path

import numpy as np
import pytest

from rethinktiny.cli import main
from rethinktiny.data.tokenized import BinWriter
from rethinktiny.errors import UserError
from rethinktiny.vocab.bpe_prune import (build_pruned_json, bpe_word, byte_alphabet, merge_ranks, prune_bpe,
                                         prune_tokenizer_json, required_ids, unreachable_tokens)
from rethinktiny.vocab.count import count_folder
from rethinktiny.vocab.sum_counts import merge_counts, write_frequency_file
from rethinktiny.vocab.tokenmap import load_token_map

REPO = Path(__file__).resolve().parents[2]
SAMPLE = sorted((REPO / "data" / "sample").glob("*.jsonl"))
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
SIZES = [400, 900, 1502]


def _texts(path: Path) -> list[str]:
    return [json.loads(line)["text"] for line in open(path, encoding="utf-8")]


@pytest.fixture(scope="module")
def documents() -> list[str]:
    """Every document of the bundled sample (English, Chinese, code)."""
    return [text for path in SAMPLE for text in _texts(path)]


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory) -> Path:
    """A real byte-level BPE (SmolLM2's layout: digits split, ByteLevel, specials 0-2) trained with
    `tokenizers` on the sample, plus a plain added token and a special one added after training
    (high ids) that the post-processor appends, so renumbering the post-processor is tested; the
    config has transformers 4.x's `added_tokens_decoder` (ids as keys)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1500, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(_texts(REPO / "data" / "sample" / "train.jsonl"), trainer)
    tokenizer.add_tokens(["<think>"])
    tokenizer.add_special_tokens(["<|eot|>"])
    eot = tokenizer.token_to_id("<|eot|>")
    tokenizer.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="$A <|eot|>", pair="$A <|eot|> $B:1 <|eot|>:1",
                                      special_tokens=[("<|eot|>", eot)])])
    folder = tmp_path_factory.mktemp("bpe") / "original"
    folder.mkdir()
    tokenizer.save(str(folder / "tokenizer.json"))
    added = {str(t["id"]): {k: v for k, v in t.items() if k != "id"}
             for t in json.loads(tokenizer.to_str())["added_tokens"]}
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": SPECIALS[0], "eos_token": SPECIALS[0],
        "unk_token": SPECIALS[0], "added_tokens_decoder": added}), encoding="utf-8")
    return folder


def _body(folder: Path) -> dict:
    return json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))


def _fast(body: dict):
    from tokenizers import Tokenizer

    return Tokenizer.from_str(json.dumps(body))


@pytest.fixture(scope="module")
def counted(hf_folder, tmp_path_factory, documents):
    """The sample tokenized with the HF tokenizer into InternEvo .bin files, counted by `vocab
    count --tokenizer` and summed by `vocab merge`: (frequency file, dense counts)."""
    from rethinktiny.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(hf_folder)
    root = tmp_path_factory.mktemp("bpe_counts")
    for path in SAMPLE[:1]:  # counts from train.jsonl only; valid.jsonl stays unseen
        with BinWriter(root / "data" / "sample" / f"{path.stem}.bin") as writer:
            for ids in tokenizer.encode_batch(_texts(path)):
                writer.write(tokenizer.frame(ids))
    summary = count_folder(root / "data", root / "counts", process_num=2, tokenizer=hf_folder)
    assert summary.malformed_lines == 0 and summary.documents == len(_texts(SAMPLE[0]))
    freq = root / "total_token_freq.json"
    counts = merge_counts(root / "counts", freq)
    return freq, counts


@pytest.fixture(scope="module")
def pruned(hf_folder, counted, tmp_path_factory):
    """{size: output folder of prune_tokenizer_json}."""
    root = tmp_path_factory.mktemp("bpe_pruned")
    return {n: (prune_tokenizer_json(hf_folder, counted[0], n, root / str(n)), root / str(n)) for n in SIZES}


def test_merge_simulation_matches_tokenizers(hf_folder, documents):
    """`bpe_word` (used for merge paths) is Hugging Face BPE: same result on every vocabulary token
    and on every pre-token of 100 documents."""
    body = _body(hf_folder)
    ranks = merge_ranks(body["model"])
    fast = _fast(body)
    words = list(body["model"]["vocab"])
    for text in documents[::57]:
        words += [w for w, _ in fast.pre_tokenizer.pre_tokenize_str(text)]
    for word in words:
        assert bpe_word(list(word), ranks)[0] == [t.value for t in fast.model.tokenize(word)]


def test_merge_simulation_on_a_pair_listed_twice():
    from tokenizers import models

    vocab, merges = {"a": 0, "b": 1, "c": 2, "ab": 3, "bc": 4}, [("a", "b"), ("b", "c"), ("a", "b")]
    ranks = merge_ranks({"merges": [list(m) for m in merges]})
    assert bpe_word(list("abc"), ranks)[0] == [t.value for t in models.BPE(vocab, merges).tokenize("abc")]


@pytest.mark.parametrize("n", SIZES)
def test_prune_invariants(hf_folder, pruned, n):
    report, folder = pruned[n]
    old, new = _body(hf_folder), _body(folder)
    token_map = load_token_map(folder)
    assert token_map.new_vocab_size == n == report["new_vocab_size"] == len(_fast(new).get_vocab(True))
    assert list(token_map.new_to_old) == sorted(token_map.new_to_old) and token_map.old_vocab_size == 1502
    ids = set(new["model"]["vocab"].values()) | {a["id"] for a in new["added_tokens"]}
    assert sorted(ids) == list(range(n))  # dense
    required = required_ids(old)
    assert required.all <= set(token_map.new_to_old) and len(required.byte) == 256
    old_names = {i: t for t, i in old["model"]["vocab"].items()}
    for new_id, old_id in enumerate(token_map.new_to_old):  # same token, added tokens with their flags
        assert new["model"]["vocab"].get(old_names.get(old_id)) in (new_id, None)
    assert [dict(a, id=None) for a in new["added_tokens"]] == [dict(a, id=None) for a in old["added_tokens"]]
    assert [token_map.new_to_old[a["id"]] for a in new["added_tokens"]] == [a["id"] for a in old["added_tokens"]]
    for key in ("normalizer", "pre_tokenizer", "decoder"):
        assert new[key] == old[key]
    kept_merges = [m for m in new["model"]["merges"]]
    assert kept_merges == [m for m in old["model"]["merges"] if m in kept_merges]  # order kept
    assert report["unreachable_tokens"] == 0 and report["merges"]["kept"] == len(kept_merges)
    assert report["tokens_by_kind"]["kept"]["merged"] == n - 261


@pytest.mark.parametrize("n", SIZES)
def test_every_kept_token_is_reachable(pruned, n):
    """Model rule: the BPE model given the token's string as one pre-token returns the token.
    Pipeline rule, for tokens whose bytes are text the pre-tokenizer keeps whole: encoding that
    text gives exactly the token."""
    folder = pruned[n][1]
    body = _body(folder)
    fast = _fast(body)
    required = required_ids(body).all
    merged = {t: i for t, i in body["model"]["vocab"].items() if i not in required}
    assert unreachable_tokens(body) == []
    whole = 0
    for token, i in merged.items():
        assert [t.id for t in fast.model.tokenize(token)] == [i]
        text = fast.decode([i])
        if "\ufffd" in text or len(fast.pre_tokenizer.pre_tokenize_str(text)) != 1:
            continue  # part of a UTF-8 character, or text the pre-tokenizer splits
        whole += 1
        assert fast.encode(text, add_special_tokens=False).ids == [i]
    assert whole > len(merged) // 2  # the pipeline rule is not vacuous (84-87% of the tokens here)


@pytest.mark.parametrize("n", SIZES[:2])  # the full size is the identity (test below)
def test_round_trip(pruned, documents, n):
    fast = _fast(_body(pruned[n][1]))
    eot = fast.token_to_id("<|eot|>")
    assert eot == n - 1  # renumbered: the last kept id (it was 1501)
    encoded = [e.ids for e in fast.encode_batch(documents)]
    assert all(ids[-1] == eot for ids in encoded)  # the post-processor appends the renumbered id
    assert fast.decode_batch(encoded) == documents


def test_transformers_parity(pruned, documents):
    """AutoTokenizer loads the pruned folder and gives our ids, with and without special tokens."""
    from transformers import AutoTokenizer

    from rethinktiny.tokenizer import load_tokenizer

    folder = pruned[SIZES[0]][1]
    texts = documents[::3]  # a third: transformers' batch call is the slowest step of this file
    encoded = [e.ids for e in _fast(_body(folder)).encode_batch(texts)]
    auto = AutoTokenizer.from_pretrained(str(folder))
    assert auto(texts)["input_ids"] == encoded
    assert auto(texts, add_special_tokens=False)["input_ids"] == load_tokenizer(folder).encode_batch(texts) \
        == [ids[:-1] for ids in encoded]


@pytest.mark.parametrize("n", SIZES[:2])
def test_token_map_gives_original_ids(hf_folder, pruned, documents, n):
    """Text whose original encoding uses only kept tokens is encoded the same way, through the map."""
    token_map = load_token_map(pruned[n][1])
    kept = set(token_map.new_to_old)
    original, small = _fast(_body(hf_folder)), _fast(_body(pruned[n][1]))
    lines = {line for text in documents[::2] for line in text.splitlines() if line.strip()}
    lines = sorted(lines)
    checked = 0
    for old, new in zip(original.encode_batch(lines), small.encode_batch(lines)):
        if set(old.ids) <= kept:
            checked += 1
            assert [token_map.new_to_old[i] for i in new.ids] == old.ids
    assert checked >= 100  # the fewest at 400 ids (106 lines of a third of the documents)


def test_ignore_merges_layout(hf_folder, counted, documents):
    """LLaMA-3's `ignore_merges`: a pre-token that is a whole token is looked up; still no
    unreachable token and a lossless round trip after pruning."""
    body = _body(hf_folder)
    body["model"]["ignore_merges"] = True
    body["added_tokens"], body["post_processor"] = body["added_tokens"][:3], None
    body["model"]["vocab"]["Ġzzqq"] = 1500  # no merge forms it: produced only by the lookup
    counts = np.append(counted[1][:1500], 10 ** 9)
    new, token_map, report = prune_bpe(body, counts, 400)
    assert report["unreachable_tokens"] == 0 and new["model"]["ignore_merges"] is True
    fast = _fast(new)
    assert token_map.new_to_old[fast.token_to_id("Ġzzqq")] == 1500
    assert fast.encode(" zzqq", add_special_tokens=False).ids == [fast.token_to_id("Ġzzqq")]
    texts = documents[::5]
    assert fast.decode_batch([e.ids for e in fast.encode_batch(texts)]) == texts


def test_config_files_renumbered(pruned):
    folder = pruned[400][1]
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    decoder = {v["content"]: int(k) for k, v in config["added_tokens_decoder"].items()}
    assert decoder == {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2, "<think>": 398, "<|eot|>": 399}
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "report.json", "token_map.json",
                                                        "tokenizer.json", "tokenizer_config.json"]


def test_identity_prune_keeps_every_encoding(hf_folder, counted, documents):
    body = _body(hf_folder)
    new, token_map, report = prune_bpe(body, counted[1], 1502)
    assert token_map.new_to_old == tuple(range(1502)) and new == body and report["unreachable_tokens"] == 0


def test_frequency_only_trim_leaves_unreachable_and_ours_does_not(hf_folder, counted, pruned):
    """The baseline (top-n by frequency, merges between kept tokens) keeps dead tokens."""
    body, counts = _body(hf_folder), counted[1]
    required = required_ids(body).all
    top = [i for i in np.argsort(-counts, kind="stable") if i not in required][:400 - len(required)]
    naive = build_pruned_json(body, sorted(required | set(int(i) for i in top)))
    assert len(unreachable_tokens(naive)) > 10
    assert pruned[400][0]["unreachable_tokens"] == 0


def test_cli_count_merge_prune(hf_folder, tmp_path, capsys):
    from rethinktiny.inherit.apply import read_token_map
    from rethinktiny.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(hf_folder)
    with BinWriter(tmp_path / "data" / "en" / "0.bin") as writer:
        for ids in tokenizer.encode_batch(_texts(SAMPLE[1])):
            writer.write(tokenizer.frame(ids))
    assert main(["vocab", "count", "--src", str(tmp_path / "data"), "--dst", str(tmp_path / "c"),
                 "--tokenizer", str(hf_folder / "tokenizer.json")]) == 0
    assert main(["vocab", "merge", "--src", str(tmp_path / "c"), "--dst", str(tmp_path / "f.json")]) == 0
    assert main(["vocab", "prune", "--tokenizer", str(hf_folder), "--counts", str(tmp_path / "f.json"),
                 "--vocab-num", "600", "--dst", str(tmp_path / "p")]) == 0
    assert "600 of 1502 ids, 0 unreachable" in capsys.readouterr().out
    assert read_token_map(tmp_path / "p" / "token_map.json", 1502, 600).shape == (600,)
    report = json.loads((tmp_path / "p" / "report.json").read_text())
    assert report["embedding_share"]["new"]["vocab_size"] == 600


def _fails(capsys, argv: list[str], needle: str, dst: Path) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:") and needle in err, err
    assert not dst.exists() and not list(dst.parent.glob(f".{dst.name}*"))


def _prune_argv(tokenizer, counts, n, dst) -> list[str]:
    return ["vocab", "prune", "--tokenizer", str(tokenizer), "--counts", str(counts), "--vocab-num", str(n),
            "--dst", str(dst)]


def test_bad_input_is_one_line_and_writes_nothing(hf_folder, counted, tmp_path, capsys):
    from tokenizers import Tokenizer, models, pre_tokenizers

    freq, counts = counted
    dst = tmp_path / "out"
    _fails(capsys, _prune_argv(hf_folder, freq, 260, dst), "smaller than the 261 ids", dst)
    _fails(capsys, _prune_argv(hf_folder, freq, 1503, dst), "larger than the tokenizer (1502 ids)", dst)
    # Not BPE: a Unigram tokenizer.json; BPE without byte-level pre-tokenization.
    unigram = tmp_path / "unigram" / "tokenizer.json"
    unigram.parent.mkdir()
    Tokenizer(models.Unigram([("<unk>", 0.0), ("a", -1.0), ("b", -2.0)], 0)).save(str(unigram))
    _fails(capsys, _prune_argv(unigram, freq, 2, dst), "model.type is 'Unigram'", dst)
    metaspace = Tokenizer(models.BPE({"a": 0, "b": 1, "ab": 2}, [("a", "b")]))
    metaspace.pre_tokenizer = pre_tokenizers.Metaspace()
    (tmp_path / "ms").mkdir()
    metaspace.save(str(tmp_path / "ms" / "tokenizer.json"))
    _fails(capsys, _prune_argv(tmp_path / "ms", freq, 2, dst), "no ByteLevel step", dst)
    (tmp_path / "broken.json").write_text("{not json", encoding="utf-8")
    _fails(capsys, _prune_argv(tmp_path / "broken.json", freq, 300, dst), "broken.json: not a JSON", dst)
    # Counts from another tokenizer: an id beyond this one, or a recorded vocabulary size that differs.
    write_frequency_file(tmp_path / "big.json", np.arange(2000))
    _fails(capsys, _prune_argv(hf_folder, tmp_path / "big.json", 600, dst), "token id 1502 is outside", dst)
    small = _body(hf_folder)
    small["added_tokens"] = small["added_tokens"][:3]  # same merges, 1,500 ids
    small["post_processor"] = None
    (tmp_path / "small").mkdir()
    (tmp_path / "small" / "tokenizer.json").write_text(json.dumps(small), encoding="utf-8")
    _fails(capsys, _prune_argv(tmp_path / "small", freq, 600, dst), "counted for a tokenizer of 1502 ids", dst)
    with pytest.raises(UserError, match="outside the tokenizer"):
        prune_bpe(small, counts, 600)
    # An added token's id that the tokenizers library would not give it (it numbers added tokens
    # outside the vocabulary itself): renumbering could not keep the ids straight.
    drift = _body(hf_folder)
    drift["model"]["vocab"]["Ġzzqq"] = 1502
    with pytest.raises(UserError, match="'<think>' has id 1500 in the file but 1501 when loaded"):
        prune_bpe(drift, np.append(counts, 1), 600)


def test_count_refuses_ids_outside_the_tokenizer(hf_folder, tmp_path, capsys):
    with BinWriter(tmp_path / "data" / "x" / "0.bin") as writer:
        writer.write([5, 6, 1502])
    assert main(["vocab", "count", "--src", str(tmp_path / "data"), "--dst", str(tmp_path / "c"),
                 "--tokenizer", str(hf_folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "token id 1502 is outside the tokenizer" in err
    assert not (tmp_path / "c" / "manifest.json").exists()


def test_byte_alphabet_is_256_distinct_characters():
    assert len(set(byte_alphabet())) == 256
