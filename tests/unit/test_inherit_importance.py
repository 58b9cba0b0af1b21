"""Importance metrics: the layer-wise engine equals plain autograd on the whole (kept) model."""

import sys

import pytest
import torch
import torch.nn.functional as F

from rethinktiny.inherit.calib import calibration_batches
from rethinktiny.checkpoint import save_model_only
from rethinktiny.inherit.importance import (LayerSums, _gate_gradients, activation_scores, block_influence,
                                            hard_concrete_keep_probability, hard_concrete_sample, layer_unit_scores,
                                            learnable_scores, magnitude_scores, taylor_scores)
from rethinktiny.inherit.layer_choice import top_indices
from rethinktiny.inherit.layer_runner import Gates, LayerRunner, gate_hooks
from rethinktiny.inherit.sources import open_source, release_mapped_files
from rethinktiny.model import PanGuPi
from tests.unit.inherit_helpers import CFG, make_source

KEPT = [0, 2, 3]
IDS = torch.randint(0, CFG.vocab_size, (6, 20), generator=torch.Generator().manual_seed(2))


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    folder = tmp_path_factory.mktemp("src") / "ckpt"
    make_source(folder, CFG.replace(attention_bias=True))
    return open_source(folder)


def full_model_reference(runner: LayerRunner) -> PanGuPi:
    """The kept layers as one ordinary PanGuPi, to compare the layer-wise passes with plain autograd."""
    cfg = runner.cfg.replace(num_layers=len(runner.layers))
    model = PanGuPi(cfg)
    state = {"tok_embeddings.weight": runner.source.tensor("tok_embeddings.weight").float(),
             "norm.weight": runner.source.tensor("norm.weight").float(),
             "output.weight": runner.source.tensor("output.weight").float()}
    for new, index in enumerate(runner.layers):
        state.update({f"layers.{new}.{k}": v.float() for k, v in runner.source.layer(index).items()})
    model.load_state_dict(state, strict=True)
    return model


def _mean_loss(model, ids, hidden_gate=None):
    if hidden_gate is not None:
        model.tok_embeddings.register_forward_hook(lambda m, a, out: out * hidden_gate)
    logits = model(ids)[:, :-1]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def _sums_from_grads(named):
    sums = LayerSums()
    for name, p in named:
        s = (p.detach() * p.grad).abs().double()
        if s.dim() == 2:
            sums.rows[name], sums.cols[name] = s.sum(1), s.sum(0)
        else:
            sums.vectors[name] = s
    return sums


def test_layerwise_taylor_equals_full_model_autograd(source):
    scores = taylor_scores(source, KEPT, IDS, micro_rows=4)
    model = full_model_reference(LayerRunner(source, KEPT))
    loss = _mean_loss(model, IDS)
    loss.backward()
    assert scores.extra["calibration_loss"] == pytest.approx(loss.item(), rel=1e-5)
    hidden = torch.zeros(CFG.hidden_size, dtype=torch.float64)
    for new, index in enumerate(KEPT):
        heads, kv, ffn, layer_hidden, _ = layer_unit_scores(
            _sums_from_grads(model.layers[new].named_parameters()), source.config)
        torch.testing.assert_close(scores.heads[index], heads, rtol=1e-4, atol=1e-9)
        torch.testing.assert_close(scores.kv_heads[index], kv, rtol=1e-4, atol=1e-9)
        torch.testing.assert_close(scores.ffn[index], ffn, rtol=1e-4, atol=1e-9)
        hidden += layer_hidden
    for p in (model.tok_embeddings.weight, model.output.weight):
        hidden += (p.detach() * p.grad).abs().double().sum(0)
    hidden += (model.norm.weight.detach() * model.norm.weight.grad).abs().double()
    torch.testing.assert_close(scores.hidden, hidden, rtol=1e-4, atol=1e-9)


def test_layerwise_gate_gradients_equal_full_model_autograd(source):
    cfg = source.config
    gen = torch.Generator().manual_seed(5)
    gates = Gates({i: torch.rand(cfg.num_attention_heads, generator=gen) for i in KEPT},
                  {i: torch.rand(cfg.intermediate_size, generator=gen) for i in KEPT},
                  torch.rand(cfg.hidden_size, generator=gen))
    loss, grads = _gate_gradients(LayerRunner(source, KEPT, micro_rows=4), IDS, gates)

    leaves = Gates({i: g.clone().requires_grad_(True) for i, g in gates.heads.items()},
                   {i: g.clone().requires_grad_(True) for i, g in gates.ffn.items()},
                   gates.hidden.clone().requires_grad_(True))
    model = full_model_reference(LayerRunner(source, KEPT))
    model.requires_grad_(False)
    for new, index in enumerate(KEPT):
        gate_hooks(model.layers[new], leaves.heads[index], leaves.ffn[index], leaves.hidden)
    reference = _mean_loss(model, IDS, leaves.hidden)
    reference.backward()
    assert loss == pytest.approx(reference.item(), rel=1e-5)
    expected = [leaves.hidden.grad, *(leaves.heads[i].grad for i in KEPT), *(leaves.ffn[i].grad for i in KEPT)]
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)


def test_activation_and_block_influence_equal_full_model_statistics(source):
    cfg = source.config
    scores = activation_scores(source, KEPT, IDS, micro_rows=4)
    model = full_model_reference(LayerRunner(source, KEPT))
    seen = {}
    for new in range(len(KEPT)):
        block = model.layers[new]
        block.attention.wo.register_forward_pre_hook(lambda m, a, n=new: seen.__setitem__(("o", n), a[0]))
        block.feed_forward.w2.register_forward_pre_hook(lambda m, a, n=new: seen.__setitem__(("a", n), a[0]))
    with torch.no_grad():
        model(IDS)
    tokens = IDS.numel()
    for new, index in enumerate(KEPT):
        per_head = seen[("o", new)].view(*IDS.shape, cfg.num_attention_heads, cfg.head_dim).norm(dim=-1)
        torch.testing.assert_close(scores.heads[index], per_head.sum((0, 1)).double() / tokens, rtol=1e-5, atol=1e-8)
        torch.testing.assert_close(scores.ffn[index], seen[("a", new)].abs().sum((0, 1)).double() / tokens,
                                   rtol=1e-5, atol=1e-8)

    influence = block_influence(source, IDS, micro_rows=4)
    full = full_model_reference(LayerRunner(source, list(range(cfg.num_layers))))
    with torch.no_grad():
        hidden = full.tok_embeddings(IDS)
        cos, sin = LayerRunner(source, []).rope(IDS.shape[1])
        for i, block in enumerate(full.layers):
            out = block(hidden, cos, sin)
            expected = 1 - F.cosine_similarity(hidden.double(), out.double(), dim=-1).mean()
            assert influence[i] == pytest.approx(float(expected), rel=1e-5)
            hidden = out


def test_streamed_l2_equals_the_formula_on_the_state_dict(source):
    scores = magnitude_scores(source, KEPT, 2)
    cfg, d = source.config, source.config.head_dim
    for index in KEPT:
        t = source.layer(index)
        for h in range(cfg.num_attention_heads):
            rows = slice(h * d, (h + 1) * d)
            parts = [t["attention.wq.weight"][rows], t["attention.wo.weight"][:, rows].T, t["attention.wq.bias"][rows]]
            expected = torch.cat([p.reshape(-1) for p in parts]).double().norm()
            assert float(scores.heads[index][h]) == pytest.approx(float(expected), rel=1e-6)
        n = 17
        neuron = torch.cat([t["feed_forward.w1.weight"][n], t["feed_forward.w3.weight"][n], t["feed_forward.w2.weight"][:, n]])
        assert float(scores.ffn[index][n]) == pytest.approx(float(neuron.double().norm()), rel=1e-6)
    c = 5
    parts = [source.tensor("tok_embeddings.weight")[:, c], source.tensor("output.weight")[:, c]]
    for index in KEPT:
        t = source.layer(index)
        parts += [t[f"{m}.weight"][:, c] for m in ("attention.wq", "attention.wk", "attention.wv",
                                                    "feed_forward.w1", "feed_forward.w3")]
        parts += [t["attention.wo.weight"][c], t["feed_forward.w2.weight"][c], t["attention.wo.bias"][c:c + 1]]
    assert float(scores.hidden[c]) == pytest.approx(float(torch.cat(parts).double().norm()), rel=1e-6)


def test_calibration_rows_are_seeded_and_mapped(tokenized_sample):
    a = calibration_batches(tokenized_sample, 1000, 100, seed=1, source_vocab=2000)
    b = calibration_batches(tokenized_sample, 1000, 100, seed=1, source_vocab=2000)
    c = calibration_batches(tokenized_sample, 1000, 100, seed=2, source_vocab=2000)
    assert a.ids.shape == (10, 100) and torch.equal(a.ids, b.ids) and not torch.equal(a.ids, c.ids)
    token_map = torch.arange(2000) * 2
    mapped = calibration_batches(tokenized_sample, 1000, 100, seed=1, source_vocab=4000, token_map=token_map)
    assert torch.equal(mapped.ids, a.ids * 2)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="page release uses madvise via /proc/self/maps")
def test_release_drops_mapped_pages_and_keeps_data(tmp_path):
    torch.save({"w": torch.randn(8 * 1024 * 1024)}, tmp_path / "big.pt")  # 32 MiB
    w = torch.load(tmp_path / "big.pt", mmap=True, weights_only=True)["w"]

    def rss_file_kib():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("RssFile:"))

    before = rss_file_kib()
    total = float(w.sum())
    touched = rss_file_kib()
    assert touched - before > 24 * 1024
    assert release_mapped_files([tmp_path / "big.pt"]) >= 32 * 1024 * 1024
    assert touched - rss_file_kib() > 24 * 1024
    assert float(w.sum()) == total  # pages fault back in from the file


def test_hard_concrete_masks_reach_exact_zero_and_one():
    gen = torch.Generator().manual_seed(0)
    samples = hard_concrete_sample(torch.full((20000,), 0.0), gen)
    assert samples.min() == 0.0 and samples.max() == 1.0
    assert 0.1 < float((samples == 0).float().mean()) < 0.5  # a real chance of switching a unit off
    # the expected L0 share matches how often a sample is non-zero
    for log_alpha in (-1.0, 0.0, 2.0):
        rate = float((hard_concrete_sample(torch.full((20000,), log_alpha), gen) > 0).float().mean())
        assert rate == pytest.approx(float(hard_concrete_keep_probability(torch.tensor(log_alpha))), abs=0.02)


def test_learnable_masks_drop_dead_neurons_and_meet_the_size(tmp_path):
    """Neurons whose weights are zero cannot help the loss: the learned masks must drop them first."""
    model = make_source(tmp_path / "src", CFG)
    state = model.state_dict()
    dead = torch.arange(CFG.intermediate_size // 2, CFG.intermediate_size)  # the upper half of every layer
    for i in range(CFG.num_layers):
        for name, dim in (("w1", 0), ("w3", 0), ("w2", 1)):
            state[f"layers.{i}.feed_forward.{name}.weight"].index_fill_(dim, dead, 0.0)
    save_model_only(tmp_path / "dead", state, CFG)
    source = open_source(tmp_path / "dead")
    target = CFG.replace(intermediate_size=CFG.intermediate_size // 2)
    scores = learnable_scores(source, KEPT, IDS, target, steps=60, micro_rows=6)
    for index in KEPT:
        kept = top_indices(scores.ffn[index], target.intermediate_size)
        assert float(torch.isin(kept, dead).float().mean()) < 0.1, index
    assert scores.extra["mask_multipliers"]["ffn"] > 0 == scores.extra["mask_multipliers"]["hidden"]
