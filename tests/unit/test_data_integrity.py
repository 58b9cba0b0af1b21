"""Corrupt or foreign input is one line and exit 2 before any work: a `.bin` damaged under its
`.meta`, non-UTF-8 corpus lines, an `--out` that exists or is one of the inputs."""

import json

import numpy as np
import pytest

from rethinktiny.cli import main
from rethinktiny.data.stats import count_tokens
from rethinktiny.data.tokenized import require_bin_files, write_documents
from rethinktiny.errors import UserError


@pytest.fixture()
def shard(tmp_path):
    path = tmp_path / "data" / "t" / "00000.bin"
    write_documents(path, [[1, 2, 3], [4, 5], [6, 7, 8, 9]])
    return path


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err


@pytest.mark.parametrize("damage", ["cut_last_line", "cut_whole_lines", "other_file"])
def test_a_bin_damaged_under_its_meta_is_refused_by_the_check_and_stats(shard, capsys, damage):
    data = shard.read_bytes()
    if damage == "cut_last_line":
        shard.write_bytes(data[:-5])
    elif damage == "cut_whole_lines":
        shard.write_bytes(data[:data.index(b"\n") + 1])
    else:  # same size, another document at the last offset
        shard.write_bytes(data.replace(b"[6,7,8,9]", b"[6,7,8]  "))
    with pytest.raises(UserError, match=r"00000.bin: .meta row 2 \(byte \d+, 4 tokens\)"):
        require_bin_files(shard.parent.parent)
    assert main(["data", "stats", str(shard.parent.parent)]) == 2
    assert "00000.bin: .meta row 2" in _one_error_line(capsys)


def test_stats_verify_reads_every_line(shard, capsys):
    folder = shard.parent.parent
    shard.write_bytes(shard.read_bytes().replace(b"[4,5]", b"[4,9]"))  # equal size and token count: cheap check passes
    assert count_tokens(folder) == (3, 9)
    shard.write_bytes(shard.read_bytes().replace(b"[4,9]", b"[4,x]"))
    assert count_tokens(folder) == (3, 9)  # a broken middle line needs the full read
    assert main(["data", "stats", "--verify", str(folder)]) == 2
    assert "00000.bin:2: invalid JSON" in _one_error_line(capsys)


def test_missing_or_unreadable_meta(shard):
    meta = shard.with_name("00000.bin.meta")
    meta.write_bytes(meta.read_bytes()[:20])
    with pytest.raises(UserError, match="00000.bin.meta: unreadable .meta index"):
        require_bin_files(shard.parent.parent)
    meta.unlink()
    require_bin_files(shard.parent.parent)  # vocab count and the calibration reader do without
    with pytest.raises(UserError, match="00000.bin.meta: missing; InternEvo needs"):
        require_bin_files(shard.parent.parent, need_meta=True)


def _non_utf8_corpus(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(b'{"text": "fine"}\n{"text": "also fine"}\n{"text": "caf\xe9"}\n')
    return path


def test_non_utf8_input_is_named_with_its_line(tmp_path, tiny_tokenizer, capsys):
    corpus = _non_utf8_corpus(tmp_path)
    commands = {
        "tokenize": ["data", "tokenize", "--input", str(corpus), "--tokenizer", str(tiny_tokenizer),
                     "--dst", str(tmp_path / "tokenized")],
        "train-tokenizer": ["data", "train-tokenizer", "--input", str(corpus), "--dst", str(tmp_path / "tok"),
                            "--vocab-size", "300"],
        "ppl": ["eval", "ppl", "--model", str(tmp_path), "--data", str(corpus), "--out", str(tmp_path / "ppl.json")],
    }
    for name, argv in commands.items():
        assert main(argv) == 2, name
        assert "corpus.jsonl:3: not UTF-8 text (byte 0xe9" in _one_error_line(capsys), name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.jsonl"]  # nothing written, no temporaries


def test_eval_out_refuses_an_existing_file_and_its_own_inputs(tmp_path, capsys):
    data = tmp_path / "valid.jsonl"
    data.write_text(json.dumps({"text": "keep me"}) + "\n")
    before = data.read_bytes()
    for extra in ([], ["--force"]):  # even --force never writes over an input
        assert main(["eval", "ppl", "--model", str(tmp_path), "--data", str(data), "--out", str(data), *extra]) == 2
        assert "--out is the same file as --data" in _one_error_line(capsys)
    assert data.read_bytes() == before
    existing = tmp_path / "result.json"
    existing.write_text("{}")
    assert main(["eval", "ppl", "--model", str(tmp_path), "--data", str(data), "--out", str(existing)]) == 2
    assert "result.json: output exists; pass --force" in _one_error_line(capsys)
    # With --force the check lets it through to the model, which is the next thing to fail here.
    assert main(["eval", "ppl", "--model", str(tmp_path / "none"), "--data", str(data), "--out", str(existing),
                 "--force"]) == 2
    assert "model folder not found" in _one_error_line(capsys)
    assert existing.read_text() == "{}"


def test_data_written_by_tokenize_passes_every_check(tmp_path, sample_valid_corpus, tiny_tokenizer):
    main(["data", "tokenize", "--input", str(sample_valid_corpus), "--tokenizer", str(tiny_tokenizer),
          "--dst", str(tmp_path / "d"), "--shard-tokens", "2000"])
    files = require_bin_files(tmp_path / "d", need_meta=True)
    assert len(files) > 2
    docs, tokens = count_tokens(tmp_path / "d", verify=True)
    assert docs > 0 and tokens == sum(int(np.load(f"{f}.meta")[:, 1].sum()) for f in files)


def test_an_output_folder_never_replaces_an_input(tmp_path, sample_valid_corpus, tiny_tokenizer, capsys):
    corpus = tmp_path / "in" / "corpus.jsonl"
    corpus.parent.mkdir()
    corpus.write_bytes(sample_valid_corpus.read_bytes())
    for dst, what in ((corpus, "is the same file as --input"), (corpus.parent, "holds --input")):
        for argv in (["data", "tokenize", "--tokenizer", str(tiny_tokenizer)], ["data", "train-tokenizer",
                                                                                "--vocab-size", "300"]):
            assert main([*argv, "--input", str(corpus), "--dst", str(dst), "--force"]) == 2
            assert what in _one_error_line(capsys)
    assert corpus.read_bytes() == sample_valid_corpus.read_bytes()
    assert main(["vocab", "inspect", str(tiny_tokenizer), "--text", str(corpus), "--png", str(corpus), "--force"]) == 2
    assert "--png is the same file as --text" in _one_error_line(capsys)
    assert corpus.read_bytes() == sample_valid_corpus.read_bytes()
