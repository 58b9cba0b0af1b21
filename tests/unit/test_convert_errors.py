"""Bad input to `convert to-hf` / `convert from-hf`: a one-line UserError naming the file or key,
and nothing half-written (no destination, no temporary sibling left behind)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from rethinktiny.checkpoint import save_model_only  # noqa: E402
from rethinktiny.config import ModelConfig  # noqa: E402
from rethinktiny.convert.export import to_hf  # noqa: E402
from rethinktiny.convert.import_hf import from_hf  # noqa: E402
from rethinktiny.errors import UserError  # noqa: E402
from rethinktiny.model import PanGuPi  # noqa: E402


CFG = ModelConfig(hidden_size=32, num_layers=2, num_attention_heads=4, num_kv_heads=2, intermediate_size=64,
                  vocab_size=80)


def assert_nothing_written(dst: Path) -> None:
    assert not dst.exists()
    assert not [p for p in dst.parent.iterdir() if p.name.startswith(f".{dst.name}.")]


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hf") / "llama"
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=80, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def _copy_with_config(src: Path, dst: Path, **changes) -> Path:
    dst.mkdir()
    for path in src.iterdir():
        (dst / path.name).write_bytes(path.read_bytes())
    config = json.loads((src / "config.json").read_text())
    config.update(changes)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def test_from_hf_missing_folder(tmp_path):
    with pytest.raises(UserError, match="nowhere: Hugging Face model folder not found"):
        from_hf(tmp_path / "nowhere", tmp_path / "out")
    assert_nothing_written(tmp_path / "out")


def test_from_hf_folder_without_config_or_weights(tmp_path, hf_folder):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"config.json: not found"):
        from_hf(tmp_path / "empty", tmp_path / "out")
    weightless = tmp_path / "weightless"
    weightless.mkdir()
    (weightless / "config.json").write_text((hf_folder / "config.json").read_text())
    with pytest.raises(UserError, match="weightless: no model weights"):
        from_hf(weightless, tmp_path / "out")
    assert_nothing_written(tmp_path / "out")


@pytest.mark.parametrize("changes, message", [
    ({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}, "unsupported architecture model_type='gpt2'"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "scaled RoPE"),
    ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
    ({"mlp_bias": True}, "mlp_bias"),
    ({"num_hidden_layers": 3}, r"missing tensor model.layers.2.input_layernorm.weight \(9 missing\)"),
    ({"intermediate_size": 48}, r"shape mismatch for layers.0.feed_forward.w1.weight"),
    ({"attention_bias": True}, r"missing tensor model.layers.0.self_attn.q_proj.bias"),
])
def test_from_hf_unsupported_or_inconsistent(tmp_path, hf_folder, changes, message):
    src = _copy_with_config(hf_folder, tmp_path / "src", **changes)
    with pytest.raises(UserError, match=message):
        from_hf(src, tmp_path / "out", progress=False)
    assert_nothing_written(tmp_path / "out")


def test_from_hf_unknown_tensor_is_named(tmp_path, hf_folder):
    from safetensors.torch import load_file, save_file

    src = _copy_with_config(hf_folder, tmp_path / "src")
    tensors = load_file(src / "model.safetensors")
    tensors["model.layers.0.mlp.extra.weight"] = torch.zeros(2)
    save_file(tensors, src / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(UserError, match="tensor model.layers.0.mlp.extra.weight has no equivalent"):
        from_hf(src, tmp_path / "out", progress=False)
    assert_nothing_written(tmp_path / "out")


def test_from_hf_refuses_existing_destination(tmp_path, hf_folder):
    (tmp_path / "out").mkdir()
    with pytest.raises(UserError, match="output exists; pass --force"):
        from_hf(hf_folder, tmp_path / "out")
    from_hf(hf_folder, tmp_path / "out", force=True, progress=False)
    assert (tmp_path / "out" / "model_tp0_pp0.pt").is_file()


def test_to_hf_missing_folder_and_no_model_files(tmp_path):
    with pytest.raises(UserError, match="nowhere: checkpoint folder not found"):
        to_hf(tmp_path / "nowhere", tmp_path / "out")
    (tmp_path / "empty" / "5").mkdir(parents=True)
    with pytest.raises(UserError, match="no model_tp"):
        to_hf(tmp_path / "empty", tmp_path / "out")
    assert_nothing_written(tmp_path / "out")


def test_to_hf_without_model_config_asks_for_config(tmp_path):
    (tmp_path / "ckpt").mkdir()
    torch.save(PanGuPi(CFG).state_dict(), tmp_path / "ckpt" / "model_tp0_pp0.pt")
    with pytest.raises(UserError, match="pass the InternEvo config file with --config"):
        to_hf(tmp_path / "ckpt", tmp_path / "out")
    assert_nothing_written(tmp_path / "out")


def test_pangu_pi_extras_have_no_llama_equivalent(tmp_path):
    cfg = CFG.replace(series_terms=2, aug_shortcuts=1, aug_shortcut_dim=8)
    save_model_only(tmp_path / "ckpt", PanGuPi(cfg).state_dict(), cfg)
    with pytest.raises(UserError, match="series-informed activation .* and augmented shortcuts .* no "
                                        "LlamaForCausalLM equivalent"):
        to_hf(tmp_path / "ckpt", tmp_path / "out")
    assert_nothing_written(tmp_path / "out")


def test_tokenizer_vocab_size_must_match(tmp_path, tiny_tokenizer):
    from rethinktiny.tokenizer import load_tokenizer

    pieces = load_tokenizer(tiny_tokenizer).vocab_size
    save_model_only(tmp_path / "ckpt", PanGuPi(CFG).state_dict(), CFG)
    with pytest.raises(UserError, match=rf"tokenizer.model: tokenizer has {pieces} pieces but the model's "
                                        rf"vocab_size is 80"):
        to_hf(tmp_path / "ckpt", tmp_path / "out", tokenizer=tiny_tokenizer.parent)
    with pytest.raises(UserError, match="missing.model: tokenizer file not found"):
        to_hf(tmp_path / "ckpt", tmp_path / "out", tokenizer=tmp_path / "missing.model")
    assert_nothing_written(tmp_path / "out")


def test_shape_error_found_while_writing_leaves_nothing(tmp_path):
    state = PanGuPi(CFG).state_dict()
    state["layers.1.feed_forward.w2.weight"] = torch.zeros(32, 48)  # only the last layer is wrong
    save_model_only(tmp_path / "ckpt", state, CFG)
    with pytest.raises(UserError, match=r"shape mismatch for layers.1.feed_forward.w2.weight: "
                                        r"checkpoint \(32, 48\), model config \(32, 64\)"):
        to_hf(tmp_path / "ckpt", tmp_path / "out", max_shard_size="10KB", progress=False)
    assert_nothing_written(tmp_path / "out")


def test_unexpected_key_and_bad_flags(tmp_path):
    state = PanGuPi(CFG).state_dict()
    state["layers.0.attention.extra"] = torch.zeros(1)
    save_model_only(tmp_path / "ckpt", state, CFG)
    with pytest.raises(UserError, match="unexpected key layers.0.attention.extra"):
        to_hf(tmp_path / "ckpt", tmp_path / "out")
    save_model_only(tmp_path / "good", PanGuPi(CFG).state_dict(), CFG)
    with pytest.raises(UserError, match="--dtype: unknown dtype 'int8'"):
        to_hf(tmp_path / "good", tmp_path / "out", dtype="int8")
    with pytest.raises(UserError, match="--max-shard-size: cannot read 'lots'"):
        to_hf(tmp_path / "good", tmp_path / "out", max_shard_size="lots")
    assert_nothing_written(tmp_path / "out")
