import pytest
import torch

from rethinktiny.checkpoint import (InternEvoCheckpoint, check_state_dict, find_step_folder, load_model,
                                    read_model_config, save_model_only)
from rethinktiny.config import get_preset
from rethinktiny.errors import UserError
from rethinktiny.model import PanGuPi
from tests.unit.shard_helpers import save_like_internevo, split_like_internevo

CFG = get_preset("tiny").replace(attention_bias=True)


@pytest.mark.parametrize("tp, pp, embed_split_hidden", [(2, 1, False), (1, 2, False), (2, 2, True)])
def test_merged_shards_equal_the_full_checkpoint(tmp_path, tp, pp, embed_split_hidden):
    state = PanGuPi(CFG).state_dict()
    step = tmp_path / "ckpt" / "20"
    save_like_internevo(step, state, tp, [3, 1] if pp == 2 else [4], embed_split_hidden)
    ckpt = InternEvoCheckpoint(tmp_path / "ckpt", config=CFG)  # parent folder -> latest step
    assert ckpt.folder == step and ckpt.num_layers == CFG.num_layers
    merged = ckpt.state_dict()
    assert set(merged) == set(state)
    for name in state:
        torch.testing.assert_close(merged[name], state[name], rtol=0, atol=0)


def test_missing_shard_is_named(tmp_path):
    state = PanGuPi(CFG).state_dict()
    for (t, p), shard in split_like_internevo(state, 2, [4]).items():
        if t == 0:
            torch.save(shard, tmp_path / f"model_tp{t}_pp{p}.pt")
    torch.save({}, tmp_path / "model_tp1_pp1.pt")
    with pytest.raises(UserError, match="missing shard model_tp0_pp1.pt"):
        InternEvoCheckpoint(tmp_path, config=CFG)


def test_latest_step_and_empty_folder(tmp_path):
    with pytest.raises(UserError, match="no model_tp"):
        find_step_folder(tmp_path)
    for step in ("5", "40", "7"):
        (tmp_path / step).mkdir()
        torch.save({}, tmp_path / step / "model_tp0_pp0.pt")
    assert find_step_folder(tmp_path).name == "40"


def test_a_step_folder_without_internevo_s_marker_is_passed_over(tmp_path, capsys):
    # InternEvo writes <step>.step last, once every rank saved; 40 was interrupted midway.
    for step in ("5", "20", "40"):
        (tmp_path / step).mkdir()
        torch.save({}, tmp_path / step / "model_tp0_pp0.pt")
    for step in ("5", "20"):
        torch.save({"step": int(step)}, tmp_path / step / f"{step}.step")
    assert find_step_folder(tmp_path).name == "20"
    assert "step folder(s) 40 have no <step>.step marker" in capsys.readouterr().err
    torch.save({"step": 40}, tmp_path / "40" / "40.step")
    assert find_step_folder(tmp_path).name == "40"
    assert find_step_folder(tmp_path / "5").name == "5"  # a step folder given itself is taken as it is


IDS = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])


def test_save_model_only_round_trip(tmp_path):
    model = PanGuPi(CFG).eval()
    save_model_only(tmp_path / "m", model.state_dict(), CFG)
    assert read_model_config(tmp_path / "m") == CFG
    loaded = load_model(tmp_path / "m")
    assert loaded.cfg == CFG and not loaded.training
    assert torch.equal(loaded(IDS), model(IDS))
    assert load_model(tmp_path / "m", dtype="bf16").output.weight.dtype == torch.bfloat16


@pytest.mark.parametrize("tp, pp", [(1, 1), (2, 2)])
def test_load_model_drops_rotary_buffers(tmp_path, tp, pp):
    # InternEvo's rotary module may save inv_freq; the model recomputes it from rope_theta
    model = PanGuPi(CFG).eval()
    state = {**model.state_dict(), **{f"layers.{i}.attention.rotary_emb.inv_freq": torch.ones(CFG.head_dim // 2)
                                      for i in range(CFG.num_layers)}}
    stages = [CFG.num_layers // pp] * (pp - 1) + [CFG.num_layers - (pp - 1) * (CFG.num_layers // pp)]
    save_like_internevo(tmp_path / "ckpt", state, tp, stages)
    torch.testing.assert_close(load_model(tmp_path / "ckpt", CFG)(IDS), model(IDS), rtol=0, atol=0)


def test_tied_head_is_the_embedding_whether_saved_or_not(tmp_path):
    tied = CFG.replace(tie_embeddings=True)
    model = PanGuPi(tied).eval()
    with_head = model.state_dict()  # a tied model's state dict names the head too
    without_head = {k: v for k, v in with_head.items() if k != "output.weight"}
    for name, state in (("with", with_head), ("without", without_head)):
        save_model_only(tmp_path / name, state, tied)
        loaded = load_model(tmp_path / name)
        assert loaded.output.weight is loaded.tok_embeddings.weight
        assert torch.equal(loaded(IDS), model(IDS))
    other = {**with_head, "output.weight": with_head["output.weight"] + 1.0}
    save_model_only(tmp_path / "other", other, tied)
    with pytest.raises(UserError, match="tie_embeddings is set but the saved output.weight differs"):
        load_model(tmp_path / "other")
    save_model_only(tmp_path / "untied", without_head, CFG)  # an untied model needs its head
    with pytest.raises(UserError, match="missing key output.weight"):
        load_model(tmp_path / "untied")


def test_load_model_refuses_another_model(tmp_path):
    save_model_only(tmp_path / "m", PanGuPi(CFG).state_dict(), CFG)
    with pytest.raises(UserError, match="different model: norm_eps is 1e-05 there but 1e-06 in the config"):
        load_model(tmp_path / "m", CFG.replace(norm_eps=1e-6))
    (tmp_path / "m" / "model_config.json").unlink()
    with pytest.raises(UserError, match="pass the InternEvo config file with --config"):
        load_model(tmp_path / "m")
    with pytest.raises(UserError, match=r"shape mismatch for layers\.0\.feed_forward\.w1\.weight"):
        load_model(tmp_path / "m", CFG.replace(intermediate_size=CFG.intermediate_size + 32))


def test_check_state_dict_names_key_and_shapes():
    expected = {k: v.shape for k, v in PanGuPi(CFG).state_dict().items()}
    state = PanGuPi(CFG.replace(intermediate_size=256)).state_dict()
    with pytest.raises(UserError, match=r"shape mismatch for layers.0.feed_forward.w1.weight: checkpoint \(256, 128\), model \(352, 128\)"):
        check_state_dict(state, expected, "ckpt")


def test_internevo_model_config_pt_is_read_without_unpickling_code(tmp_path):
    Config = pytest.importorskip("internlm.core.context").Config
    entry = Config(dict(num_attention_heads=4, vocab_size=4096, hidden_size=128, num_layers=4, mlp_ratio=2.75,
                        num_kv_attention_heads=2, dtype=torch.bfloat16, no_bias=True))
    torch.save(entry, tmp_path / "model_config.pt")
    cfg = read_model_config(tmp_path)
    assert (cfg.hidden_size, cfg.num_kv_heads, cfg.intermediate_size) == (128, 2, 512)


def test_config_pickle_with_foreign_class_is_refused(tmp_path):
    import collections
    torch.save({"x": collections.Counter()}, tmp_path / "model_config.pt")
    with pytest.raises(UserError, match="refusing to load collections.Counter"):
        read_model_config(tmp_path)
