import json
import runpy

import pytest

from rethinktiny.arch.explorer import render_row_config, row_config
from rethinktiny.cli import main
from rethinktiny.config import PRESETS, from_internevo, internevo_ffn_width
from rethinktiny.errors import UserError

TINY_SWEEP = ["arch", "sweep", "--params", "3e6", "--vocab", "4096", "--heads-dim", "32", "--layers", "2:6:2",
              "--per-depth", "1", "--tolerance", "0.1"]
QUICK_MEASURE = ["--measure", "cpu", "--prompt-len", "4", "--decode-steps", "2", "--warmup-steps", "1"]


def test_sweep_table_marks_the_presets(capsys):
    assert main(["arch", "sweep", "--params", "1.0e9", "--vocab", "48000", "--layers", "12:32:4"]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0]
    for column in ("layers", "hidden", "ffn", "expansion", "params M", "emb+head", "non-emb M",
                   "train GFLOP/tok", "KV KiB/tok"):
        assert column in header
    preset_lines = [line for line in out.splitlines() if "Pro" in line]
    assert len(preset_lines) == 2 and "1792" in preset_lines[0] and "17.4%" in preset_lines[0]
    assert "decode tok/s" not in header


def test_measured_sweep_writes_plot_and_json(tmp_path, capsys):
    plot, rows_json = tmp_path / "speed.png", tmp_path / "rows.json"
    args = [*TINY_SWEEP, *QUICK_MEASURE, "--plot", str(plot), "--json", str(rows_json)]
    assert main(args) == 0
    assert "decode tok/s" in capsys.readouterr().out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    payload = json.loads(rows_json.read_text())
    assert payload["spec"]["params"] == 3_000_000
    assert [row["layers"] for row in payload["rows"]] == [2, 4]  # no 6-layer shape within 10%
    for row in payload["rows"]:
        assert row["decode_tokens_per_s"] > 0 and row["prefill_tokens_per_s"] > 0
        assert row["params"] == row["embedding_params"] + row["non_embedding_params"]
    # Existing outputs are refused before any measuring, and left as they were.
    before = plot.read_bytes()
    assert main(args) == 2
    assert "output exists; pass --force" in capsys.readouterr().err
    assert plot.read_bytes() == before
    assert main([*TINY_SWEEP, "--plot", str(plot), "--force"]) == 0
    assert plot.read_bytes() != before


def test_unmeasured_plot(tmp_path):
    plot = tmp_path / "flops.png"
    assert main([*TINY_SWEEP, "--plot", str(plot)]) == 0
    assert plot.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("extra, message", [
    (["--layers", "6:2"], "--layers: empty range"),
    (["--layers", "2-6"], "--layers: expected START:STOP"),
    (["--expansion", "4:2"], "--expansion: empty range"),
    (["--params", "1e4"], "smaller than the embedding"),
    (["--heads-dim", "33"], "--heads-dim must be a positive even"),
    (["--measure-dtype", "fp16", *QUICK_MEASURE], "float16 is not supported on CPU"),
])
def test_sweep_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, extra, message):
    plot = tmp_path / "out.png"
    assert main([*TINY_SWEEP, *extra, "--plot", str(plot)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    assert not plot.exists()


def test_config_round_trips_through_internevo(tmp_path, capsys):
    out = tmp_path / "row.py"
    assert main(["arch", "config", "--hidden", "1792", "--layers", "21", "--heads", "14", "--expansion", "2.714",
                 "--vocab", "48000", "--output", str(out)]) == 0
    namespace = runpy.run_path(str(out))
    assert namespace["model_type"] == "PANGU_PI_PRO"
    assert from_internevo(namespace["model"]) == PRESETS["pangu_pi_1b_pro"]
    assert main(["arch", "config", "--hidden", "1792", "--layers", "20", "--heads", "14", "--ffn", "4864",
                 "--vocab", "48000", "--kv-heads", "7"]) == 0
    printed = capsys.readouterr().out
    assert "num_kv_attention_heads=7" in printed and "intermediate_size=4864" in printed


def test_config_text_for_a_gqa_tied_row():
    cfg = row_config(1024, 12, 8, 32000, expansion=3.0, kv_heads=2, tie_embeddings=True)
    assert cfg.intermediate_size == internevo_ffn_width(1024, 3.0)
    namespace: dict = {}
    exec(render_row_config(cfg), namespace)  # noqa: S102 - our own generated config text
    assert from_internevo(namespace["model"]) == cfg


@pytest.mark.parametrize("kwargs, message", [
    (dict(hidden=1792, layers=20, heads=15, vocab=48000, expansion=2.7), "not divisible by --heads 15"),
    (dict(hidden=1792, layers=20, heads=14, vocab=48000), "exactly one of --expansion and --ffn"),
    (dict(hidden=1792, layers=20, heads=14, vocab=48000, expansion=2.0, ffn=4096), "exactly one"),
    (dict(hidden=1792, layers=20, heads=14, vocab=48000, expansion=-1.0), "--expansion must be positive"),
    (dict(hidden=1792, layers=20, heads=0, vocab=48000, expansion=2.0), "--heads must be positive"),
    (dict(hidden=1792, layers=20, heads=14, vocab=48000, expansion=2.0, kv_heads=4), "num_kv_heads"),
])
def test_config_bad_input(kwargs, message):
    with pytest.raises(UserError, match=message):
        row_config(**kwargs)


def test_config_cli_refuses_non_divisible_heads(capsys):
    assert main(["arch", "config", "--hidden", "1792", "--layers", "20", "--heads", "15", "--expansion", "2.7",
                 "--vocab", "48000"]) == 2
    assert "not divisible by --heads 15" in capsys.readouterr().err
