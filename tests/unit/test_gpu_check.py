"""bench/gpu_check.py's pieces that need no training run: a failing check is a row, not a crash;
the random data's token-weighted context; InternEvo's LLAMA2 entry has our model's shape."""

import importlib.util

import pytest

from tests.conftest import REPO


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "bench" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_failing_check_is_a_failed_row(gpu_check):
    table = gpu_check.Table()

    def broken(_table):
        raise RuntimeError("first line\nno GPU memory left")

    assert table.run("broken", broken) is None
    table.run("fine", lambda t: t.add("fine", "ok", "detail"))
    assert table.rows == [("broken", "FAILED", "RuntimeError: no GPU memory left"), ("fine", "ok", "detail")]
    assert "| broken | FAILED |" in table.render()


def test_random_data_context(gpu_check, tmp_path):
    from rethinktiny.data.stats import count_tokens

    context = gpu_check.write_random_data(tmp_path, vocab=100, seq_len=64, tokens=5000)
    documents, tokens = count_tokens(tmp_path)
    assert tokens >= 5000 and 8 <= context <= 64 and documents > 1


def test_llama2_entry_has_our_shape(gpu_check):
    from rethinktiny.config import from_internevo
    from rethinktiny.configfiles.load import load_config_file

    raw = load_config_file(REPO / "configs" / "LLM1B.py")
    entry = gpu_check.llama2_config(raw, use_flash_attn=True)
    assert entry["model_type"] == "LLAMA2" and entry["model"]["use_flash_attn"] is True
    ours, theirs = from_internevo(raw["model"]), from_internevo({**entry["model"], "no_bias": True})
    assert theirs == ours and theirs.num_params() == ours.num_params()
