"""Bad input: a one-line UserError naming what is wrong, and nothing written."""

import json

import pytest

from rethinktiny.checkpoint import load_model
from rethinktiny.cli import main
from rethinktiny.errors import UserError
from rethinktiny.inherit.apply import inherit
from tests.unit.inherit_helpers import CFG, NO_DATA, make_source


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    folder = tmp_path_factory.mktemp("src") / "ckpt"
    make_source(folder)
    return folder


def _fails(tmp_path, match, src, target=CFG, **kwargs):
    dst = tmp_path / "out"
    with pytest.raises(UserError, match=match) as info:
        inherit(src, target, dst, **{**NO_DATA, **kwargs})
    assert "\n" not in str(info.value)
    assert not dst.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


@pytest.mark.parametrize("key, value", [("hidden_size", 256), ("num_layers", 5), ("num_attention_heads", 8),
                                        ("intermediate_size", 400)])
def test_target_larger_than_source(tmp_path, src, key, value):
    target = CFG.replace(**{key: value})
    _fails(tmp_path, f"target {key} {value} is larger than the source's", src, target)


def test_target_kv_heads_and_vocab_larger(tmp_path, src):
    _fails(tmp_path, "target num_kv_heads 4 is larger", src, CFG.replace(num_kv_heads=4))
    _fails(tmp_path, "target vocab_size 5000 is larger than the source's 4096", src, CFG.replace(vocab_size=5000))
    _fails(tmp_path, "pass --token-map", src, CFG.replace(vocab_size=1000))


def test_heads_that_do_not_fit_gqa_groups(tmp_path, src):
    # source: 4 heads over 2 kv heads (2 per group); target 2 heads on 1 kv head is fine, 4 on 1 is not
    _fails(tmp_path, "do not fit the source's GQA groups: 4 query heads per kv head", src,
           CFG.replace(num_kv_heads=1))


def test_head_dim_mismatch(tmp_path, src):
    _fails(tmp_path, "head_dim 16 .* differs from the source's 32", src, CFG.replace(hidden_size=64))


def _token_map(tmp_path, new_to_old, old_vocab=CFG.vocab_size):
    path = tmp_path / "map.json"
    path.write_text(json.dumps({"format": "rethinktiny.token_map.v1", "old_vocab_size": old_vocab,
                                "new_to_old": new_to_old}))
    return path


def test_bad_token_maps(tmp_path, src):
    too_long = tmp_path / "long.json"
    too_long.write_text(json.dumps(list(range(CFG.vocab_size + 1))))
    _fails(tmp_path, "token map has 4097 entries, more than the source vocabulary", src,
           CFG.replace(vocab_size=CFG.vocab_size), token_map=too_long)
    _fails(tmp_path, r"new_to_old\[1\] = 4096 is outside", src, CFG.replace(vocab_size=3),
           token_map=_token_map(tmp_path, [0, 4096, 2]))
    _fails(tmp_path, "token map is for a vocabulary of 5000", src, CFG.replace(vocab_size=3),
           token_map=_token_map(tmp_path, [0, 1, 2], old_vocab=5000))
    _fails(tmp_path, "has 3 entries but the target vocab_size is 4", src, CFG.replace(vocab_size=4),
           token_map=_token_map(tmp_path, [0, 1, 2]))
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{nope")
    _fails(tmp_path, "not a JSON token map", src, CFG.replace(vocab_size=4), token_map=bad_json)


def test_missing_calibration_and_bad_choices(tmp_path, src):
    _fails(tmp_path, "--width taylor needs calibration data", src, width="taylor")
    _fails(tmp_path, r"--layers block-influence \(the default\) needs calibration data", src, layers="block-influence")
    _fails(tmp_path, r"--width activation \(the default\) needs calibration data: pass --calib .* or --width random "
           "--layers first-last", src, width="activation")
    _fails(tmp_path, "--width 'magnitude'", src, width="magnitude")
    _fails(tmp_path, "lists 2 layers but the target has 4", src, layers="0,1")
    _fails(tmp_path, "unknown preset 'huge'", src, target="huge")
    _fails(tmp_path, "source folder not found", tmp_path / "nowhere")


def test_existing_destination_needs_force(tmp_path, src):
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="output exists; pass --force"):
        inherit(src, CFG, dst, **NO_DATA)
    assert (dst / "keep.txt").read_text() == "mine"
    inherit(src, CFG, dst, force=True, **NO_DATA)
    assert not (dst / "keep.txt").exists() and load_model(dst).cfg == CFG


def test_calibration_ids_outside_vocabulary(tmp_path, src):
    from rethinktiny.data.tokenized import write_documents

    write_documents(tmp_path / "calib" / "en" / "00000.bin", [[1, 2, 3] * 20, [5000] * 40])
    _fails(tmp_path, "calibration token id 5000 is outside the source vocabulary", src, width="activation",
           calib=tmp_path / "calib", calib_tokens=64, calib_seq_len=16, seed=0)


def test_cli_writes_and_reports_errors(tmp_path, src, capsys):
    config = tmp_path / "small.py"
    config.write_text("model_type = 'PANGU_PI_PRO'\n"
                      "model = dict(num_layers=2, hidden_size=64, num_attention_heads=2, num_kv_attention_heads=1,\n"
                      "             intermediate_size=128, vocab_size=4096, no_bias=True)\n")
    assert main(["inherit", "--src", str(src), "--target", str(config), "--dst", str(tmp_path / "out"),
                 "--layers", "uniform", "--width", "l1"]) == 0
    model = load_model(tmp_path / "out")
    assert (model.cfg.num_layers, model.cfg.hidden_size, model.cfg.intermediate_size) == (2, 64, 128)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["command"] == "inherit" and manifest["args"]["width"] == "l1"
    report = json.loads((tmp_path / "out" / "inherit_report.json").read_text())
    assert report["layers"]["kept"] == [0, 3]
    assert main(["inherit", "--src", str(src), "--target", "pangu_pi_1b_pro", "--dst", str(tmp_path / "big"),
                 "--width", "random", "--layers", "first-last"]) == 2
    assert "error: target hidden_size 1792 is larger than the source's 128" in capsys.readouterr().err
    assert not (tmp_path / "big").exists()
