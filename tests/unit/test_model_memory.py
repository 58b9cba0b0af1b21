"""What the model keeps for backward (saved-tensor bytes, the CPU proxy of GPU activation memory)
and that the memory-lean pieces compute what the plain autograd versions computed."""

import pytest
import torch
import torch.nn.functional as F

from rethinktiny.config import ModelConfig, get_preset
from rethinktiny.model import (
    PanGuPi, RMSNorm, apply_rope, chunked_cross_entropy, rope_cos_sin,
)

TINY = get_preset("tiny")


def saved_bytes(fn, exclude=()):
    """(bytes of the storages autograd saves while `fn` runs, each counted once, `exclude`d
    tensors' storages left out; fn's result)."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    sizes = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in skip:
            sizes[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = fn()
    return sum(sizes.values()), out


def reference_rmsnorm(x, weight, eps):
    """The previous RMSNorm, plain autograd."""
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return (normed * weight.float()).to(x.dtype)


def packed_batch(tokens, vocab, seed=0):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (1, tokens), generator=generator)
    cu_seqlens = torch.tensor([0, tokens // 3, tokens // 2, tokens], dtype=torch.int32)
    return ids, dict(cu_seqlens=cu_seqlens, max_seqlen=tokens - tokens // 2)


def model_loss(model, ids, batch):
    return chunked_cross_entropy(model(ids, **batch), ids.roll(-1, dims=1))


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_rmsnorm_equals_the_plain_autograd_version(dtype, tol):
    torch.manual_seed(0)
    norm = RMSNorm(96, 1e-5).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(96) + 0.5)
    x = (torch.randn(3, 17, 96) * 4).to(dtype).requires_grad_()
    grad = torch.randn(3, 17, 96).to(dtype)
    out = norm(x)
    out.backward(grad)
    x_ref = x.detach().clone().requires_grad_()
    w_ref = norm.weight.detach().clone().requires_grad_()
    ref = reference_rmsnorm(x_ref, w_ref, 1e-5)
    ref.backward(grad)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)  # the same forward arithmetic
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=tol, atol=tol)
    torch.testing.assert_close(norm.weight.grad.float(), w_ref.grad.float(), rtol=tol, atol=tol * 10)


def test_rmsnorm_keeps_its_bf16_input_and_one_fp32_number_per_row():
    norm = RMSNorm(256, 1e-5).to(torch.bfloat16)
    x = torch.randn(1, 512, 256, dtype=torch.bfloat16, requires_grad=True)
    lean, _ = saved_bytes(lambda: norm(x), exclude=[norm.weight])
    plain, _ = saved_bytes(lambda: reference_rmsnorm(x, norm.weight, 1e-5), exclude=[norm.weight])
    assert lean == 512 * 256 * 2 + 512 * 4  # x in bf16 + 1/rms in fp32
    assert plain > 512 * 256 * 8  # fp32 copies of x and of the normalised rows


def test_rope_keeps_only_the_cos_sin_tables():
    positions = torch.arange(512).unsqueeze(0)
    cos, sin = rope_cos_sin(positions, 32, 10000.0)
    q = torch.randn(1, 512, 4, 32, dtype=torch.bfloat16, requires_grad=True)
    saved, out = saved_bytes(lambda: apply_rope(q, cos, sin))
    assert out.dtype == torch.bfloat16
    assert saved == cos.nbytes + sin.nbytes  # nothing of the size of q


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_cross_entropy_equals_torch(label_smoothing, dtype):
    torch.manual_seed(0)
    logits = (torch.randn(2, 500, 333) * 3).to(dtype).requires_grad_()
    labels = torch.randint(0, 333, (2, 500))
    labels[:, ::7] = -100  # InternEvo labels the tokens after each document's end -100
    loss = chunked_cross_entropy(logits, labels, label_smoothing, chunk=128)  # 1000 rows: 8 chunks, the last short
    loss.backward()
    ours = logits.grad
    logits.grad = None
    ref = F.cross_entropy(logits.float().view(-1, 333), labels.view(-1), label_smoothing=label_smoothing)
    ref.backward()
    assert ours.dtype == dtype and loss.dtype == torch.float32
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-6)
    # gradients are about 1/857 (the unmasked rows): bf16 rounds them to 3 significant digits
    rtol, atol = (1e-5, 1e-9) if dtype == torch.float32 else (1e-2, 1e-6)
    torch.testing.assert_close(ours.float(), logits.grad.float(), rtol=rtol, atol=atol)


def test_chunked_cross_entropy_keeps_the_logits_and_one_number_per_row():
    logits = torch.randn(4096, 1000, dtype=torch.bfloat16, requires_grad=True)
    labels = torch.randint(0, 1000, (4096,))
    saved, loss = saved_bytes(lambda: chunked_cross_entropy(logits, labels, chunk=512))
    per_row = 8 + 1 + 4  # targets (int64), valid mask, log-sum-exp (fp32)
    assert saved == logits.nbytes + 4096 * per_row + 8  # + the token count
    assert saved < logits.numel() * 4 / 1.5  # no fp32 copy of the logits (4 bytes each)
    loss.backward()
    assert logits.grad.dtype == torch.bfloat16


def test_checkpointing_changes_saved_bytes_not_losses_or_gradients():
    ids, batch = packed_batch(96, TINY.vocab_size)
    results = {}
    for share in (0.0, 0.5, 1.0):
        torch.manual_seed(0)
        model = PanGuPi(TINY.replace(checkpoint=share)).train()
        saved, loss = saved_bytes(lambda: model_loss(model, ids, batch), exclude=list(model.parameters()))
        loss.backward()
        results[share] = saved, loss.detach(), {n: p.grad for n, p in model.named_parameters()}
    base_saved, base_loss, base_grads = results[0.0]
    for share in (0.5, 1.0):
        saved, loss, grads = results[share]
        torch.testing.assert_close(loss, base_loss, rtol=0, atol=0)
        for name, grad in grads.items():
            torch.testing.assert_close(grad, base_grads[name], rtol=1e-6, atol=1e-7, msg=name)
    assert results[1.0][0] < results[0.5][0] < base_saved
    block_input = 96 * TINY.hidden_size * 4
    per_block = (base_saved - results[1.0][0]) / TINY.num_layers
    assert per_block > 15 * block_input  # a full block keeps far more than its input


def test_checkpoint_share_recomputes_the_first_layers_in_training_only():
    cfg = TINY.replace(num_layers=4, checkpoint=0.3)  # 0.4.9 reads it as layers 0 and 1 (i < 1.2)
    assert cfg.checkpoint_layers == 2
    assert TINY.replace(checkpoint=True).checkpoint_layers == TINY.num_layers
    model = PanGuPi(cfg).train()
    calls = [0] * cfg.num_layers
    for i, layer in enumerate(model.layers):
        layer.register_forward_pre_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    ids, batch = packed_batch(32, cfg.vocab_size)
    model_loss(model, ids, batch).backward()
    assert calls == [2, 2, 1, 1]  # checkpointed blocks run again in backward
    model.eval()
    model_loss(model, ids, batch).backward()
    assert calls == [3, 3, 2, 2]


def test_model_checkpoint_entry_reaches_the_config_and_back():
    from rethinktiny.config import from_internevo, to_internevo
    from rethinktiny.errors import UserError

    entry = to_internevo(TINY)
    assert "checkpoint" not in entry and from_internevo(entry).checkpoint == 0
    for value, share in ((True, 1.0), (False, 0.0), (1, 1.0), (0.25, 0.25)):
        cfg = from_internevo({**entry, "checkpoint": value})
        assert cfg.checkpoint == share and from_internevo(to_internevo(cfg)).checkpoint == share
    assert "checkpoint" not in TINY.replace(checkpoint=1.0).to_dict()  # not part of a saved model
    for bad in (1.5, -0.1, "yes"):
        with pytest.raises(UserError, match="checkpoint must be True, False or a share of layers"):
            from_internevo({**entry, "checkpoint": bad})


def test_lean_block_saves_at_most_the_documented_bytes():
    # 2-layer 1792-wide shape at 64 tokens in bf16: per block, about 40 bytes per token and width
    # unit (38 rows + 2 for the per-document output; the plain-autograd norms made it 52).
    cfg = ModelConfig(hidden_size=1792, num_layers=2, num_attention_heads=14, num_kv_heads=14,
                      intermediate_size=4864, vocab_size=512)
    ids, batch = packed_batch(64, cfg.vocab_size)
    per_layer = []
    for layers in (1, 2):
        torch.manual_seed(0)
        model = PanGuPi(cfg.replace(num_layers=layers)).to(torch.bfloat16).train()
        saved, _ = saved_bytes(lambda: model(ids, **batch), exclude=list(model.parameters()))
        per_layer.append(saved)
    per_token_width = (per_layer[1] - per_layer[0]) / 64 / 1792
    assert 38 < per_token_width < 41


def test_packed_forward_reads_nothing_back_from_the_device(monkeypatch):
    # On the meta device every .item()/.tolist()/int() of a tensor raises: with max_seqlen given,
    # everything of forward but the attention kernel (stood in for here: flash-attn's varlen call
    # reads nothing back either) runs without one.
    from rethinktiny import model as model_module

    monkeypatch.setattr(model_module.Attention, "_packed_attention", lambda self, q, k, v, packed, groups: q)
    with torch.device("meta"):
        model = PanGuPi(TINY).train()
        ids = torch.zeros(1, 64, dtype=torch.long)
        cu_seqlens = torch.tensor([0, 20, 64], dtype=torch.int32)
        logits = model(ids, cu_seqlens=cu_seqlens, indexes=torch.arange(64).unsqueeze(0), max_seqlen=44)
        chunked_cross_entropy(logits, ids).backward()
        with pytest.raises((RuntimeError, NotImplementedError)):
            model(ids, cu_seqlens=cu_seqlens)  # without max_seqlen it must read the longest document


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_model_equals_the_plain_autograd_model(monkeypatch, dtype, tol):
    # The whole model (packed, checkpointing on) against itself with the previous RMSNorm and no
    # checkpointing: the same logits, loss and parameter gradients.
    ids, batch = packed_batch(48, TINY.vocab_size)

    def run(cfg):
        torch.manual_seed(0)
        model = PanGuPi(cfg).to(dtype).train()
        logits = model(ids, **batch)
        loss = chunked_cross_entropy(logits, ids.roll(-1, dims=1))
        loss.backward()
        return logits.detach(), loss.detach(), {n: p.grad.float() for n, p in model.named_parameters()}

    lean = run(TINY.replace(checkpoint=1.0))
    monkeypatch.setattr(RMSNorm, "forward", lambda self, x: reference_rmsnorm(x, self.weight, self.eps))
    plain = run(TINY)
    torch.testing.assert_close(lean[0], plain[0], rtol=0, atol=0)
    torch.testing.assert_close(lean[1], plain[1], rtol=0, atol=0)
    for name, grad in lean[2].items():
        scale = plain[2][name].abs().max().item() + 1e-12
        torch.testing.assert_close(grad / scale, plain[2][name] / scale, rtol=tol, atol=tol, msg=name)
