"""InternEvo's own LLAMA2 model and rethinktiny's PANGU_PI_PRO compute the same function: the
LLAMA2 state dict loads into ours with strict=True and the logits agree (RoPE layout included)."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

CODE = r"""
import torch
from rethinktiny.internevo.local import launch_local
model_entry = dict(hidden_size=128, num_layers=2, num_attention_heads=4, num_kv_attention_heads=2,
                   vocab_size=512, mlp_ratio=2.75, dtype="torch.float32", use_flash_attn=False,
                   checkpoint=False, no_bias=NO_BIAS, layer_norm_epsilon=1e-5, embed_split_hidden=True,
                   parallel_output=False, embed_grad_scale=1, apply_post_layer_norm=False, norm_type="rmsnorm",
                   num_chunks=1)
launch_local(dict(model_type="LLAMA2", model=model_entry,
                  data=dict(seq_len=32, micro_num=1, micro_bsz=2, total_steps=1, use_packed_dataset=False)))
from internlm.core.context import global_context as gpc
from internlm.utils.registry import MODEL_INITIALIZER
from rethinktiny.config import from_internevo
from rethinktiny.model import PanGuPi
entry = dict(gpc.config.model)
entry["dtype"] = torch.float32
llama = MODEL_INITIALIZER.get_module("LLAMA2")(**entry).eval()
ours = PanGuPi(from_internevo(model_entry)).eval()
ours.load_state_dict(llama.state_dict(), strict=True)
x = torch.randint(0, 512, (2, 32))
with torch.no_grad():
    a, b = llama(input_ids=x), ours(x)
torch.testing.assert_close(b, a.float(), rtol=1e-4, atol=1e-4)
print("PARITY", (a - b).abs().max().item())
"""


def _run(no_bias: bool) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-W", "ignore", "-c", CODE.replace("NO_BIAS", str(no_bias))],
                          cwd=REPO, capture_output=True, text=True, timeout=300)


def test_llama2_without_bias_matches():
    result = _run(True)
    assert result.returncode == 0 and "PARITY" in result.stdout, result.stderr[-4000:]


def test_llama2_with_attention_bias_matches():
    result = _run(False)
    assert result.returncode == 0 and "PARITY" in result.stdout, result.stderr[-4000:]
