"""Bad input and failing ranks end with a clear message and a non-zero exit status."""

import pytest

from .helpers import REPO, explain, start_finetune, train_tiny


@pytest.mark.parametrize("override, message", [
    ("model_type='PANGU_PI_MAX'", "model_type 'PANGU_PI_MAX' is unknown"),
    ("model.num_attention_heads=3", "hidden_size 128 is not divisible by num_attention_heads 3"),
    ("data.train_folder='/nonexistent/data'", "/nonexistent/data: data folder not found"),
])
def test_bad_config_fails_before_any_process_starts(override, message):
    result = start_finetune("--set", override, timeout=120)
    assert result.returncode == 2, explain(result)
    assert result.stderr.strip().splitlines()[-1] == f"error: {result.stderr.strip().splitlines()[-1][7:]}"
    assert message in result.stderr and "Traceback" not in result.stderr


def test_empty_data_folder(tmp_path):
    (tmp_path / "en").mkdir()
    result = start_finetune("--set", f"data.train_folder={tmp_path}", timeout=120)
    assert result.returncode == 2 and "no .bin files found" in result.stderr


def test_missing_config_file():
    result = start_finetune(config=REPO / "configs" / "nope.py", timeout=120)
    assert result.returncode == 2 and "config file not found" in result.stderr


def test_a_rank_that_raises_fails_the_job(tmp_path, tokenized_sample):
    config = tmp_path / "rank1_fails.py"
    config.write_text(
        f"exec(open({str(REPO / 'configs' / 'tiny_cpu.py')!r}).read())\n"
        "import os as _os\n"
        "if _os.environ.get('RANK') == '1':\n"
        "    raise RuntimeError('rank 1 cannot read its config')\n")
    result = train_tiny(tmp_path / "ckpt", tokenized_sample, 2, config=config, timeout=300)
    assert result.returncode != 0, explain(result)
    assert "rank 1 cannot read its config" in result.stderr
