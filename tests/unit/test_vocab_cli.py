"""`rethinktiny vocab ...` and the seed's three documented scripts, end to end; `vocab inspect`."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm

from rethinktiny.cli import main
from rethinktiny.errors import UserError
from rethinktiny.vocab.coverage import coverage_curve, inspect_tokenizer

REPO = Path(__file__).resolve().parents[2]


def test_cli_count_merge_prune_inspect(tokenized_sample, tiny_tokenizer, sample_valid_corpus, tmp_path, capsys):
    assert main(["vocab", "count", "--src", str(tokenized_sample), "--dst", str(tmp_path / "c"),
                 "--process-num", "1"]) == 0
    assert main(["vocab", "merge", "--src", str(tmp_path / "c"), "--dst", str(tmp_path / "f.json")]) == 0
    assert main(["vocab", "prune", "--tokenizer", str(tiny_tokenizer), "--counts", str(tmp_path / "f.json"),
                 "--vocab-num", "1500", "--dst", str(tmp_path / "p")]) == 0
    assert "1500 of 2000 pieces, 0 dead" in capsys.readouterr().out
    assert main(["vocab", "inspect", str(tmp_path / "p"), "--text", str(sample_valid_corpus),
                 "--png", str(tmp_path / "cov.png")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["vocab_size"] == 1500 and (tmp_path / "cov.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # A second prune into the same folder is refused with a one-line error and exit status 2.
    assert main(["vocab", "prune", "--tokenizer", str(tiny_tokenizer), "--counts", str(tmp_path / "f.json"),
                 "--vocab-num", "1500", "--dst", str(tmp_path / "p")]) == 2
    assert "error:" in capsys.readouterr().err


def test_seed_scripts_keep_working(tokenized_sample, tiny_tokenizer, tmp_path):
    """The three commands exactly as the seed documents them (flags included)."""
    tools = REPO / "tools" / "tokenizer"
    run = lambda *args: subprocess.run([sys.executable, *map(str, args)], cwd=tmp_path,  # noqa: E731
                                       capture_output=True, text=True)
    step1 = run(tools / "step1_token_frequency_stat.py", "--src", tokenized_sample, "--dst", "tmp_stat_files_dir",
                "--process_num", "2")
    assert step1.returncode == 0, step1.stderr
    step2 = run(tools / "step2_token_frequency_stat_combie.py", "--src", "tmp_stat_files_dir",
                "--dst", "total_token_freq.json")
    assert step2.returncode == 0, step2.stderr
    step3 = run(tools / "step3_generate_new_tokenizer.py", "--origin_tokenizer_dir", tiny_tokenizer.parent,
                "--vocab_num", "1200", "--output", "new_tokenizer_dir", "--token_freq_file", "total_token_freq.json")
    assert step3.returncode == 0, step3.stderr
    assert spm.SentencePieceProcessor(model_file=str(tmp_path / "new_tokenizer_dir" / "tokenizer.model")
                                      ).get_piece_size() == 1200
    again = run(tools / "step3_generate_new_tokenizer.py", "--origin_tokenizer_dir", tiny_tokenizer.parent,
                "--vocab_num", "999999", "--output", "other", "--token_freq_file", "total_token_freq.json")
    assert again.returncode == 2 and again.stderr.strip().splitlines()[-1].startswith("error: --vocab_num 999999")


def test_inspect_figures(tiny_tokenizer, sample_valid_corpus, tmp_path):
    summary = inspect_tokenizer(tiny_tokenizer, sample_valid_corpus, png=tmp_path / "c.png")
    texts = [json.loads(line)["text"] for line in open(sample_valid_corpus, encoding="utf-8")]
    sp = spm.SentencePieceProcessor(model_file=str(tiny_tokenizer))
    tokens = sum(map(len, sp.encode(texts)))
    assert summary["tokens"] == tokens and summary["characters"] == sum(map(len, texts))
    assert summary["tokens_per_character"] == pytest.approx(tokens / summary["characters"])
    levels = summary["pieces_for_token_coverage"]
    assert levels["0.9"] <= levels["0.95"] <= levels["0.99"] <= levels["0.999"] <= summary["pieces_used"]
    with pytest.raises(UserError, match="output exists"):
        inspect_tokenizer(tiny_tokenizer, sample_valid_corpus, png=tmp_path / "c.png")
    with pytest.raises(UserError, match="text file not found"):
        inspect_tokenizer(tiny_tokenizer, tmp_path / "missing.txt", png=None)


def test_coverage_curve():
    curve = coverage_curve(np.array([1, 0, 5, 4]))
    assert curve.tolist() == [0.5, 0.9, 1.0, 1.0]
