"""The q/k rotary layout a checkpoint records, and rotate-half checkpoints read in our layout."""

import pytest
import torch

from rethinktiny.checkpoint import (InternEvoCheckpoint, qk_interleaved_of, read_qk_interleaved, save_model_only,
                                    write_model_config)
from rethinktiny.config import get_preset
from rethinktiny.rotary_layout import interleaved_to_half
from rethinktiny.errors import UserError
from rethinktiny.model import PanGuPi

CFG = get_preset("tiny").replace(num_layers=2, vocab_size=64)
Q_K = ("attention.wq.weight", "attention.wk.weight")


def _internevo_folder(folder, state, entry):
    """A step folder as InternEvo writes it: the shard and the raw model entry as model_config.pt."""
    folder.mkdir(parents=True)
    torch.save(state, folder / "model_tp0_pp0.pt")
    torch.save(entry, folder / "model_config.pt")
    return folder


def _entry(**layout):
    return dict(hidden_size=CFG.hidden_size, num_layers=CFG.num_layers, num_attention_heads=CFG.num_attention_heads,
                num_kv_attention_heads=CFG.num_kv_heads, intermediate_size=CFG.intermediate_size,
                vocab_size=CFG.vocab_size, no_bias=True, **layout)


def test_layout_keys():
    assert qk_interleaved_of({}, "m") is True  # InternEvo 0.4.x saved neither key and rotated pairs
    assert qk_interleaved_of({"qk_interleaved": False}, "m") is False
    assert qk_interleaved_of({"adapt_hf": True}, "m") is False
    assert qk_interleaved_of({"adapt_hf": False, "qk_interleaved": True}, "m") is True
    with pytest.raises(UserError, match="m: qk_interleaved=True contradicts adapt_hf=True"):
        qk_interleaved_of({"adapt_hf": True, "qk_interleaved": True}, "m")
    with pytest.raises(UserError, match="qk_interleaved must be True or False, got 'no'"):
        qk_interleaved_of({"qk_interleaved": "no"}, "m")


def test_our_checkpoints_record_their_layout(tmp_path):
    save_model_only(tmp_path / "m", PanGuPi(CFG).state_dict(), CFG)
    assert read_qk_interleaved(tmp_path / "m") is True
    write_model_config(tmp_path / "j", CFG)
    assert '"qk_interleaved": true' in (tmp_path / "j" / "model_config.json").read_text()


@pytest.mark.parametrize("layout", [dict(qk_interleaved=False), dict(adapt_hf=True)])
def test_rotate_half_checkpoint_reads_in_our_layout(tmp_path, layout):
    ours = {k: v.clone() for k, v in PanGuPi(CFG).state_dict().items()}
    theirs = dict(ours)
    for name in list(theirs):
        if name.endswith(Q_K):
            heads = CFG.num_attention_heads if ".wq." in name else CFG.num_kv_heads
            theirs[name] = interleaved_to_half(theirs[name], heads).contiguous()
    assert not torch.equal(theirs["layers.0.attention.wq.weight"], ours["layers.0.attention.wq.weight"])
    folder = _internevo_folder(tmp_path / "5", theirs, _entry(**layout))
    ckpt = InternEvoCheckpoint(folder)
    assert ckpt.qk_interleaved is False
    for name, tensor in ours.items():
        torch.testing.assert_close(ckpt.tensor(name), tensor, rtol=0, atol=0)


def test_interleaved_internevo_checkpoint_is_read_as_is(tmp_path):
    ours = PanGuPi(CFG).state_dict()
    folder = _internevo_folder(tmp_path / "5", ours, _entry(qk_interleaved=True))
    assert torch.equal(InternEvoCheckpoint(folder).tensor("layers.1.attention.wk.weight"),
                       ours["layers.1.attention.wk.weight"])
