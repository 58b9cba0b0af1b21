"""Shared fixtures: a tiny SentencePiece tokenizer trained on the bundled sample, and the sample
tokenized into InternEvo's format. Session-scoped: trained once per test run (about a second)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tiny CPU models on a 2-core machine: one thread per process avoids oversubscription (the
# 2-rank training runs use one core each); subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
SAMPLE_TRAIN = REPO / "data" / "sample" / "train.jsonl"
SAMPLE_VALID = REPO / "data" / "sample" / "valid.jsonl"


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tiny matmuls gain nothing from threads, and OpenMP spin-waits make them 20x slower on a
    shared, busy CPU (this also covers a user's OMP_NUM_THREADS, which the line above keeps)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def sample_corpus() -> Path:
    return SAMPLE_TRAIN


@pytest.fixture(scope="session")
def sample_valid_corpus() -> Path:
    return SAMPLE_VALID


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory) -> Path:
    """A 2,000-piece BPE tokenizer (byte fallback) trained on the bundled sample; rare Chinese
    characters (the last 0.5% of character mass) are left to byte pieces to fit 2,000 pieces."""
    from rethinktiny.data.prepare import train_tokenizer

    folder = tmp_path_factory.mktemp("tokenizer") / "tok"
    return train_tokenizer(SAMPLE_TRAIN, folder, vocab_size=2000, character_coverage=0.995)


@pytest.fixture(scope="session")
def hf_bpe_tokenizer(tmp_path_factory) -> Path:
    """A byte-level BPE Hugging Face tokenizer folder (tokenizer.json, SmolLM2's layout: 1,500 ids,
    bos = eos = <|endoftext|> id 0) trained with `tokenizers` on the bundled sample."""
    import json

    from tests.unit.hf_tokenizer_helpers import train_byte_level_bpe, write_hf_folder

    texts = [json.loads(line)["text"] for line in open(SAMPLE_TRAIN, encoding="utf-8")]
    return write_hf_folder(train_byte_level_bpe(texts), tmp_path_factory.mktemp("hf_bpe") / "tok")


@pytest.fixture(scope="session")
def tokenized_sample(tmp_path_factory, tiny_tokenizer) -> Path:
    """The bundled training sample in InternEvo's format (<folder>/<type>/*.bin + .meta)."""
    from rethinktiny.data.prepare import tokenize_corpus

    folder = tmp_path_factory.mktemp("data") / "train"
    tokenize_corpus(SAMPLE_TRAIN, tiny_tokenizer, folder)
    return folder
