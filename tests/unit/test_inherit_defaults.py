"""`rethinktiny inherit`'s defaults are the ones measured on a real teacher (bench/real_teacher.py):
never a magnitude metric, and l1/l2 print what they did to a real LLM."""

import inspect

import pytest

from rethinktiny.cli import build_parser, main
from rethinktiny.cli import inherit as cli_inherit
from rethinktiny.data.tokenized import write_documents
from rethinktiny.inherit.apply import inherit
from tests.unit.inherit_helpers import CFG, make_source

SMALL = CFG.replace(num_layers=2, hidden_size=64, num_attention_heads=2, num_kv_heads=1, intermediate_size=128)


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    folder = tmp_path_factory.mktemp("src") / "ckpt"
    make_source(folder)
    return folder


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    path = tmp_path_factory.mktemp("target") / "small.py"
    path.write_text("model_type = 'PANGU_PI_PRO'\n"
                    f"model = dict(num_layers={SMALL.num_layers}, hidden_size={SMALL.hidden_size}, "
                    f"num_attention_heads={SMALL.num_attention_heads}, num_kv_attention_heads={SMALL.num_kv_heads}, "
                    f"intermediate_size={SMALL.intermediate_size}, vocab_size={SMALL.vocab_size}, no_bias=True)\n")
    return path


def _defaults():
    return build_parser("inherit").parse_args(["inherit", "--src", "s", "--target", "t", "--dst", "d"])


def test_default_metric_is_not_a_magnitude_metric():
    args = _defaults()
    # one set of defaults: the command line's are the Python API's
    api = inspect.signature(inherit).parameters
    assert args.width == api["width"].default and args.layers == api["layers"].default
    assert args.calib_tokens == api["calib_tokens"].default and args.calib_seq_len == api["calib_seq_len"].default
    assert args.width not in cli_inherit.MAGNITUDE_METRICS and args.width != "random"
    assert cli_inherit.magnitude_warning(args.width) is None
    # The figures the warning quotes are measurements: magnitude ranked below random selection,
    # random selection below the default, all below uniform guessing.
    m = cli_inherit.MEASURED
    assert m["activation"] < m["random"] < min(m["l1"], m["l2"])
    assert m["random"] < m["uniform guess"] < min(m["l1"], m["l2"])  # what the warning says


@pytest.mark.parametrize("width", ["l1", "l2"])
def test_magnitude_metric_prints_the_warning(tmp_path, src, target, capsys, width):
    assert main(["inherit", "--src", str(src), "--target", str(target), "--dst", str(tmp_path / "out"),
                 "--width", width, "--layers", "first-last"]) == 0
    err = capsys.readouterr().err
    assert f"warning: --width {width} ranks heads, neurons and channels by weight magnitude" in err
    assert f"{cli_inherit.MEASURED[width]:.2f}" in err and "--width activation --calib" in err
    assert (tmp_path / "out" / "model_tp0_pp0.pt").is_file()


def test_default_command_line_warns_nothing(tmp_path, src, target, capsys):
    calib = tmp_path / "calib"
    write_documents(calib / "en" / "00000.bin", [list(range(1, 200)), list(range(300, 500))])
    assert main(["inherit", "--src", str(src), "--target", str(target), "--dst", str(tmp_path / "out"),
                 "--calib", str(calib), "--calib-tokens", "128", "--calib-seq-len", "64"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_default_metric_without_calibration_names_both_ways_out(tmp_path, src, target, capsys):
    assert main(["inherit", "--src", str(src), "--target", str(target), "--dst", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --width activation (the default) needs calibration data")
    assert "pass --calib" in err and "--width random --layers first-last" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
