import math

import pytest
import torch

from rethinktiny.arch.measure import measure_model, random_model, resolve_device, resolve_dtype
from rethinktiny.arch.speed import measure_rows, measure_speed
from rethinktiny.config import get_preset
from rethinktiny.errors import UserError
from rethinktiny.model import generate

SMALL = get_preset("tiny").replace(num_layers=2, vocab_size=512)
CPU = torch.device("cpu")


@pytest.mark.parametrize("cfg", [SMALL, SMALL.replace(tie_embeddings=True, series_terms=2, aug_shortcuts=1,
                                                      aug_shortcut_dim=8, attention_bias=True)])
def test_random_model_shape_and_values(cfg):
    model = random_model(cfg, CPU, torch.bfloat16, seed=3)
    assert all(p.dtype == torch.bfloat16 and p.device == CPU for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) == cfg.num_params()
    assert (model.output.weight is model.tok_embeddings.weight) == cfg.tie_embeddings
    assert torch.equal(model.norm.weight, torch.ones_like(model.norm.weight))
    weight = model.layers[1].feed_forward.w2.weight.float()
    assert 0.015 < weight.std().item() < 0.025 and torch.isfinite(weight).all()
    same = random_model(cfg, CPU, torch.bfloat16, seed=3).state_dict()
    other = random_model(cfg, CPU, torch.bfloat16, seed=4).state_dict()
    assert all(torch.equal(value, same[key]) for key, value in model.state_dict().items())
    assert not torch.equal(model.state_dict()["layers.0.attention.wq.weight"], other["layers.0.attention.wq.weight"])


def test_random_model_decodes_like_the_uncached_forward():
    """The model being timed is a working PanGuPi: cached greedy decoding reproduces full forwards."""
    model = random_model(SMALL, CPU, torch.float32, seed=0)
    prompt = [5, 17, 300, 2]
    new_ids = generate(model, prompt, 4)
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(4):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    assert new_ids == ids[len(prompt):]


def test_measure_returns_positive_speeds():
    speed = measure_speed(SMALL, "cpu", "fp32", prompt_len=8, decode_steps=3, warmup_steps=1)
    assert speed.prefill_tokens_per_s > 0 and math.isfinite(speed.prefill_tokens_per_s)
    assert speed.decode_tokens_per_s > 0 and math.isfinite(speed.decode_tokens_per_s)
    assert speed.decode_best_tokens_per_s >= speed.decode_tokens_per_s and speed.decode_cpu_s_per_token >= 0
    bf16 = measure_model(random_model(SMALL, CPU, torch.bfloat16), prompt_len=4, decode_steps=2, warmup_steps=0)
    assert bf16.decode_tokens_per_s > 0


def test_bad_measure_options():
    with pytest.raises(UserError, match="--measure: expected cpu or cuda"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="--measure cuda: no CUDA device"):
            resolve_device("cuda")
    with pytest.raises(UserError, match="--measure-dtype: unknown dtype 'int4'"):
        resolve_dtype("int4", CPU)
    with pytest.raises(UserError, match="float16 is not supported on CPU"):
        resolve_dtype("fp16", CPU)
    with pytest.raises(UserError, match="--decode-steps must be at least 1"):
        measure_speed(SMALL, decode_steps=0)
    with pytest.raises(UserError, match="--threads must be positive"):
        measure_rows([], threads=0)
