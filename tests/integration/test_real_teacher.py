"""The real teacher folder (`make real-teacher`) tokenizes as its GGUF says: llama.cpp's `smollm`
pre-type, digits one by one, which transformers' GGUF loader alone drops."""

import json
import os
from pathlib import Path

import pytest

from rethinktiny.convert.gguf_export import bpe_pre_type
from rethinktiny.tokenizer import load_tokenizer

TEACHER = Path(os.environ.get("RETHINKTINY_TEACHER", Path("~/.cache/rethinktiny/smollm2-135m").expanduser()))
pytestmark = pytest.mark.skipif(not (TEACHER / "manifest.json").is_file(),
                                reason=f"no real teacher at {TEACHER}: run `make real-teacher`")


def test_teacher_pre_tokenizer_is_the_ggufs():
    from rethinktiny.convert.gguf_read import GGUFWeights

    manifest = json.loads((TEACHER / "manifest.json").read_text())
    gguf = Path(manifest["gguf"]["path"])
    if not gguf.is_file():
        pytest.skip(f"{gguf}: the GGUF the teacher was built from is not installed here")
    pre = GGUFWeights(gguf).field("tokenizer.ggml.pre")
    saved = json.loads((TEACHER / "tokenizer.json").read_text())["pre_tokenizer"]
    assert pre == "smollm" and bpe_pre_type(saved, TEACHER) == pre == manifest["gguf"]["pre_tokenizer"]


def test_teacher_tokenizes_digits_one_by_one_and_round_trips():
    tokenizer = load_tokenizer(TEACHER)
    text = "In 2024, 15 cats ate 300 fish."
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    digits = [tokenizer.decode([i]) for i in ids if tokenizer.decode([i]).strip().isdigit()]
    assert digits == list("202415300")
