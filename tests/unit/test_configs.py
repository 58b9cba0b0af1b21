"""configs/*.py and `rethinktiny config export`: InternEvo's own parser reads them, they build their
model (the 1B/1.5B shapes on the meta device), and an exported file round-trips to its ModelConfig."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rethinktiny.config import get_preset
from rethinktiny.configfiles.export import TrainOptions, export_config, render_config
from rethinktiny.configfiles.load import apply_overrides, load_config_file, model_config_from_file
from rethinktiny.errors import UserError
from rethinktiny.model import PanGuPi

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "configs").glob("*.py"))


def test_internevo_parser_alone_registers_our_model_type():
    """A process that never imports rethinktiny: InternEvo's Config.from_file runs the config,
    which registers PANGU_PI_PRO itself, and leaves no module/function in the config namespace."""
    code = ("import sys\n"
            "from internlm.core.context import Config\n"
            "assert 'rethinktiny' not in sys.modules\n"
            f"cfg = Config.from_file({str(REPO / 'configs' / 'LLM1B.py')!r})\n"
            "from rethinktiny.internevo.api import model_registry\n"
            "import types\n"
            "bad = [k for k, v in cfg.items() if isinstance(v, (types.ModuleType, types.FunctionType, type))]\n"
            "print(model_registry().has(cfg.model_type), bad)\n")
    result = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split("\n")[0] == "True []"


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_config_builds_its_model_on_meta(path):
    cfg = model_config_from_file(path)
    with torch.device("meta"):
        model = PanGuPi(cfg)
    assert sum(p.numel() for p in model.parameters()) == cfg.num_params()


def test_presets_in_configs():
    # LLM1B.py keeps the seed's 20 layers; the preset has the paper table's 21 (the file says so).
    assert get_preset("pangu_pi_1b_pro").num_layers == 21
    assert model_config_from_file(REPO / "configs" / "LLM1B.py") == get_preset("pangu_pi_1b_pro").replace(num_layers=20)
    assert "num_layers 20 (preset: 21)" in (REPO / "configs" / "LLM1B.py").read_text()
    assert model_config_from_file(REPO / "configs" / "LLM1.5B.py") == get_preset("pangu_pi_1.5b_pro")
    assert load_config_file(REPO / "configs" / "LLM1B.py")["data"]["seq_len"] == 2048


@pytest.mark.parametrize("preset", ["pangu_pi_1b_pro", "pangu_pi_7b", "tiny"])
def test_export_round_trip(tmp_path, preset):
    cfg = get_preset(preset).replace(vocab_size=12345)
    path = export_config(tmp_path / "c.py", cfg=cfg, opts=TrainOptions(inherit="/ckpt/inherited", resample="/r"))
    assert model_config_from_file(path) == cfg
    loaded = load_config_file(path)
    assert loaded["ckpt"]["load_ckpt_info"] == dict(path="/ckpt/inherited", content=("model",), ckpt_type="inherited")
    assert loaded["data"]["sampler"] == "multi_round" and loaded["data"]["selected_batches"] == "/r/selected.npy"
    with pytest.raises(UserError, match="output exists"):
        export_config(path, cfg=cfg)


def test_bad_configs_fail_at_load(tmp_path):
    text = render_config(get_preset("tiny"))
    bad_heads = tmp_path / "bad_heads.py"
    bad_heads.write_text(text.replace("num_attention_heads=4,", "num_attention_heads=3,"))
    with pytest.raises(UserError, match="not divisible by num_attention_heads 3"):
        model_config_from_file(bad_heads)
    bad_preset = tmp_path / "bad_preset.py"
    bad_preset.write_text(text.replace('preset="tiny"', 'preset="pangu_pi_3b"'))
    with pytest.raises(UserError, match="unknown preset 'pangu_pi_3b'"):
        model_config_from_file(bad_preset)


def test_overrides():
    config = {"data": {"total_steps": 5}, "model": {}}
    apply_overrides(config, ["data.total_steps=40", "model.dtype=torch.float32", "ckpt_note='x'",
                             "ckpt=dict(load_ckpt_info=dict(path='local:/a', content=('model',)), auto_resume=False)"])
    assert config["data"]["total_steps"] == 40 and config["model"]["dtype"] == "torch.float32"
    assert config["ckpt"] == {"load_ckpt_info": {"path": "local:/a", "content": ("model",)}, "auto_resume": False}
    with pytest.raises(UserError, match="no 'nope'"):
        apply_overrides(config, ["nope.x=1"])
    with pytest.raises(UserError, match="expected KEY=VALUE"):
        apply_overrides(config, ["data.total_steps"])


def test_cpu_export_is_a_cpu_run(tmp_path):
    cfg = get_preset("tiny").replace(series_terms=2, aug_shortcuts=1, aug_shortcut_dim=16)
    path = export_config(tmp_path / "cpu.py", cfg=cfg, opts=TrainOptions(cpu_ranks=2))
    loaded = load_config_file(path)
    assert loaded["model_type"] == "PANGU_PI" and loaded["launch"] == {"nproc_per_node": 2}
    assert loaded["model"]["dtype"] == "torch.float32" and loaded["data"]["num_worker"] == 0
    assert not loaded["hybrid_zero_optimizer"]["overlap_sync_grad"] and loaded["enable_tb"] is False
    # ZeRO-1 over all ranks: the cluster default of 8 is more than 2 ranks have (InternEvo refuses it).
    assert loaded["parallel"]["zero1"]["size"] == -1
    assert load_config_file(export_config(tmp_path / "z.py", cfg=cfg, opts=TrainOptions(cpu_ranks=2, zero1_size=2))
                            )["parallel"]["zero1"]["size"] == 2
    assert model_config_from_file(path) == cfg


@pytest.mark.parametrize("path", [*CONFIGS, "exported"], ids=[*(p.name for p in CONFIGS), "exported"])
def test_configs_carry_the_keys_internevos_builder_and_trainer_read(path, tmp_path):
    """InternEvo's newest create_model pops apply_post_layer_norm, its trainer reads mlp_ratio
    (KeyError without them), and qk_interleaved records our RoPE layout (its default is False)."""
    if path == "exported":
        path = export_config(tmp_path / "c.py", preset="pangu_pi_1b_pro", opts=TrainOptions(cpu_ranks=2))
    model = load_config_file(path)["model"]
    assert model["apply_post_layer_norm"] is False and model["qk_interleaved"] is True
    assert model["mlp_ratio"] == model["intermediate_size"] / model["hidden_size"]
