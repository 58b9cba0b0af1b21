"""InternEvo's own INTERNLM2_PUBLIC model (built on CPU by its registry) as an inheritance source:
its state dict saved as tp=2 shards with its `model_config.pt`, read by `open_source`, gives
InternEvo's logits; identity inheritance keeps them."""

import subprocess
import sys
from pathlib import Path

import torch

from rethinktiny.inherit.apply import inherit
from rethinktiny.inherit.sources import InternLM2Source, open_source
from rethinktiny.model import PanGuPi

REPO = Path(__file__).resolve().parents[2]

CODE = r"""
import sys
import torch
from rethinktiny.internevo.local import launch_local
model_entry = dict(hidden_size=64, num_layers=2, num_attention_heads=4, num_kv_attention_heads=2, vocab_size=96,
                   mlp_ratio=2.0, multiple_of=32, dtype="torch.float32", use_flash_attn=False, checkpoint=False,
                   no_bias=NO_BIAS, layer_norm_epsilon=1e-5, embed_split_hidden=False, parallel_output=False,
                   embed_grad_scale=1, apply_post_layer_norm=False, norm_type="rmsnorm", num_chunks=1, rope_base=500)
launch_local(dict(model_type="INTERNLM2_PUBLIC", model=model_entry,
                  data=dict(seq_len=32, micro_num=1, micro_bsz=2, total_steps=1, use_packed_dataset=False)))
from internlm.core.context import global_context as gpc
from internlm.utils.registry import MODEL_INITIALIZER
entry = dict(gpc.config.model)
entry["dtype"] = torch.float32
model = MODEL_INITIALIZER.get_module("INTERNLM2_PUBLIC")(**entry).eval()
torch.manual_seed(0)
with torch.no_grad():  # weights large enough that a wrong head split or rotary order shows
    for name, p in model.named_parameters():
        p.uniform_(0.5, 1.5) if "norm" in name else p.normal_(0, 0.1 if p.dim() == 1 else 0.3)
ids = torch.randint(0, 96, (2, 24), generator=torch.Generator().manual_seed(1))
with torch.no_grad():
    logits = model(input_ids=ids)
torch.save(gpc.config.model, sys.argv[1] + "/model_config.pt")  # what InternEvo's checkpoint saver writes
torch.save({"state": model.state_dict(), "ids": ids, "logits": logits}, sys.argv[1] + "/reference.pt")
print("BUILT")
"""


def _save_tp_shards(state: dict, folder: Path, tp: int) -> None:
    """InternEvo's tensor-parallel split: column-parallel (wqkv, w1, w3, output) by rows,
    row-parallel (wo, w2) by columns, the rest (norms, embedding, wo's bias) replicated."""
    for rank in range(tp):
        shard = {}
        for name, t in state.items():
            if any(k in name for k in ("wqkv", "w1.", "w3.")) or name == "output.weight":
                t = t.chunk(tp, 0)[rank]
            elif name.endswith(("wo.weight", "w2.weight")):
                t = t.chunk(tp, 1)[rank]
            shard[name] = t.clone()
        torch.save(shard, folder / f"model_tp{rank}_pp0.pt")


def _check(tmp_path: Path, no_bias: bool) -> None:
    step = tmp_path / "ckpt" / "10"
    step.mkdir(parents=True)
    result = subprocess.run([sys.executable, "-W", "ignore", "-c", CODE.replace("NO_BIAS", str(no_bias)), str(step)],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "BUILT" in result.stdout, result.stderr[-4000:]
    reference = torch.load(step / "reference.pt", weights_only=True)
    (step / "reference.pt").unlink()
    _save_tp_shards(reference["state"], step, tp=2)
    source = open_source(tmp_path / "ckpt")
    assert isinstance(source, InternLM2Source) and source.config.attention_bias == (not no_bias)
    ours = PanGuPi(source.config)
    ours.load_state_dict({name: source.tensor(name) for name in source.expected}, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(reference["ids"]), reference["logits"], rtol=1e-4, atol=1e-4)
    out = inherit(tmp_path / "ckpt", source.config, tmp_path / "inherited", layers="first-last", width="l2")
    inherited = PanGuPi(source.config)
    inherited.load_state_dict(torch.load(out / "model_tp0_pp0.pt", weights_only=True), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(inherited.eval()(reference["ids"]), reference["logits"], rtol=1e-4, atol=1e-4)


def test_internevo_internlm2_without_bias(tmp_path):
    _check(tmp_path, no_bias=True)


def test_internevo_internlm2_with_bias(tmp_path):
    _check(tmp_path, no_bias=False)
