"""One dtype vocabulary: every `--dtype` accepts the same strings and refuses the same ones."""

from __future__ import annotations

import pytest
import torch

from rethinktiny.cli import main
from rethinktiny.dtypes import dtype_name, parse_dtype
from rethinktiny.errors import UserError

SPELLINGS = {torch.float32: ("float32", "fp32", "torch.float32"),
             torch.bfloat16: ("bfloat16", "bf16", "torch.bfloat16"),
             torch.float16: ("float16", "fp16", "torch.float16")}


@pytest.mark.parametrize("dtype", list(SPELLINGS))
def test_every_spelling_names_one_dtype(dtype):
    for text in SPELLINGS[dtype]:
        assert parse_dtype(text) is dtype and parse_dtype(text, keep=True) is dtype
    assert parse_dtype(dtype) is dtype and dtype_name(dtype) == str(dtype).removeprefix("torch.")


def test_keep_only_where_asked():
    assert parse_dtype("auto", keep=True) is None and parse_dtype("source", keep=True) is None
    with pytest.raises(UserError, match="--dtype: unknown dtype 'auto'"):
        parse_dtype("auto")


@pytest.mark.parametrize("bad", ["int8", "float64", "FP32", "", "torch.int8"])
def test_unknown_names_the_flag_and_the_choices(bad):
    with pytest.raises(UserError, match=rf"model\.dtype: unknown dtype '{bad}'; choose one of float32, bfloat16"):
        dtype_name(bad, flag="model.dtype")


# Every command with a dtype flag: (words before the flag, flag, whether it keeps the input's dtype).
DTYPE_FLAGS = [(["convert", "to-hf", "--src", "s", "--dst", "d"], "--dtype", True),
               (["convert", "from-hf", "--src", "s", "--dst", "d"], "--dtype", True),
               (["inherit", "--src", "s", "--target", "t", "--dst", "d"], "--dtype", True),
               (["eval", "ppl", "--model", "m", "--data", "d"], "--dtype", False),
               (["arch", "sweep", "--params", "1B", "--vocab", "48000"], "--measure-dtype", False)]


@pytest.mark.parametrize("words, flag, keep", DTYPE_FLAGS, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_every_dtype_flag_parses_the_same_strings(words, flag, keep, monkeypatch, capsys):
    import rethinktiny.cli as cli

    seen = []
    monkeypatch.setattr(cli, "run_command", lambda func, args: seen.append(getattr(args, flag[2:].replace("-", "_"))))
    for dtype, spellings in SPELLINGS.items():
        for text in spellings:
            main([*words, flag, text])
            assert seen.pop() == dtype_name(dtype)
    if keep:
        main([*words, flag, "source"])
        assert seen.pop() == "auto"
    with pytest.raises(SystemExit) as exit_info:  # argparse's usage error: exit 2, one line
        main([*words, flag, "int8"])
    assert exit_info.value.code == 2
    assert "unknown dtype 'int8'" in capsys.readouterr().err


def test_config_export_writes_internevo_spelling(monkeypatch):
    import rethinktiny.cli as cli

    seen = []
    monkeypatch.setattr(cli, "run_command", lambda func, args: seen.append(args.dtype))
    for text in ("bf16", "bfloat16", "torch.bfloat16", "fp32", "tf32", "torch.tf32"):
        main(["config", "export", "--dtype", text])
    assert seen == ["torch.bfloat16"] * 3 + ["torch.float32"] + ["torch.tf32"] * 2
    main(["config", "export"])
    assert seen[-1] == "torch.bfloat16"  # the default stays the seed's
    with pytest.raises(SystemExit):
        main(["config", "export", "--dtype", "int8"])
