"""tools/make_real_teacher.py without the 93 MB package: the pre-tokenizer mapping and what counts
as a finished folder (tests/integration/test_real_teacher.py checks the real folder)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from rethinktiny.convert.gguf_export import bpe_pre_type
from rethinktiny.errors import UserError

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "tools" / "make_real_teacher.py"
spec = importlib.util.spec_from_file_location("make_real_teacher", TOOL)
make_real_teacher = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make_real_teacher)


@pytest.mark.parametrize("pre, expected", [("smollm", "smollm"), ("gpt2", "gpt2"), (None, "gpt2")])
def test_gguf_pre_type_round_trips_through_the_export_mapping(pre, expected):
    from tokenizers import Tokenizer
    from tokenizers.models import BPE

    tokenizer = Tokenizer(BPE())
    tokenizer.pre_tokenizer = make_real_teacher.gguf_pre_tokenizer(pre, Path("x.gguf"))
    assert bpe_pre_type(json.loads(tokenizer.to_str())["pre_tokenizer"], Path("x.gguf")) == expected


def test_smollm_pre_tokenizer_splits_digits_one_by_one():
    pre = make_real_teacher.gguf_pre_tokenizer("smollm", Path("x.gguf"))
    pieces = [piece for piece, _ in pre.pre_tokenize_str("in 2024, 15 cats")]
    assert pieces == ["in", "Ġ", "2", "0", "2", "4", ",", "Ġ", "1", "5", "Ġcats"]


def test_unknown_pre_type_is_a_one_line_error_naming_the_file():
    with pytest.raises(UserError, match=r"model.gguf: tokenizer.ggml.pre 'llama-bpe' has no known") as info:
        make_real_teacher.gguf_pre_tokenizer("llama-bpe", Path("model.gguf"))
    assert "\n" not in str(info.value)


def _folder(tmp_path, manifest):
    for name in make_real_teacher.REQUIRED_FILES:
        (tmp_path / name).write_text("{}")
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    return tmp_path


@pytest.mark.parametrize("manifest, complete", [
    ({"gguf": {"sha256": "0" * 64}}, False),  # built before the pre-tokenizer was restored: rebuilt
    ({"gguf": {"sha256": "0" * 64, "pre_tokenizer": "smollm"}}, True),
])
def test_check_says_whether_the_folder_is_current(tmp_path, manifest, complete):
    folder = _folder(tmp_path, manifest)
    assert make_real_teacher.is_complete(folder) is complete
    result = subprocess.run([sys.executable, str(TOOL), "--check", "--dst", str(folder)], capture_output=True)
    assert result.returncode == (0 if complete else 1)
    (folder / "model.safetensors").unlink()
    assert not make_real_teacher.is_complete(folder)
