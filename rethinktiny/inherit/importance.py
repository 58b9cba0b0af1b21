"""Importance of attention heads, GQA groups, FFN neurons and hidden channels.

Every metric returns `WidthScores` (higher = keep) for the kept source layers:
- `l1` / `l2`: magnitude of all weights attached to a unit (p-norm over rows/columns), streamed
  one layer at a time without calibration data;
- `activation` (Minitron): mean L2 norm of each head's attention output, mean |act(w1 x) * w3 x|
  of each neuron, mean |RMSNorm output| of each hidden channel, on calibration data, one layer's
  hidden states at a time;
- `taylor` (LLM-Pruner's first order): sum over a unit's weights of |w * dL/dw| on calibration
  data, with gradients from the layer-wise backward pass (`layer_runner.py`);
- `learnable`: hard-concrete masks on heads, neurons and hidden channels trained on calibration
  data with the LM loss under a target-size constraint (augmented Lagrangian, as Sheared-LLaMA);
  the final keep probabilities are the scores;
- `random`: seeded random scores (the baseline).
Scores are computed on the depth-pruned model (the kept layers only), which is the model the
student will be. A GQA group's score sums its query heads' scores and its own k/v weights' share.
Augmented-shortcut bottleneck dims (PanGu-π) are always ranked by L2 magnitude.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from rethinktiny.config import ModelConfig
from rethinktiny.errors import UserError
from rethinktiny.inherit.layer_runner import (Gates, LayerRunner, head_backward, layers_backward,
                                           run_layers_forward)
from rethinktiny.inherit.sources import Source

WIDTH_METRICS = ("l1", "l2", "activation", "taylor", "learnable", "random")
CALIBRATED_METRICS = ("activation", "taylor", "learnable")

INPUT_PROJECTIONS = ("attention.wq.weight", "attention.wk.weight", "attention.wv.weight",
                     "feed_forward.w1.weight", "feed_forward.w3.weight")
OUTPUT_PROJECTIONS = ("attention.wo.weight", "feed_forward.w2.weight")


@dataclass
class WidthScores:
    """Scores per unit; per-layer entries are keyed by source layer index."""

    metric: str
    hidden: torch.Tensor
    heads: dict[int, torch.Tensor] = field(default_factory=dict)
    kv_heads: dict[int, torch.Tensor] = field(default_factory=dict)
    ffn: dict[int, torch.Tensor] = field(default_factory=dict)
    shortcut_dims: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)


# ---- turning per-row / per-column sums into unit scores ------------------------------------------

@dataclass
class LayerSums:
    """Per-row and per-column sums of an elementwise saliency (|w|^p or |w*g|) of one layer."""

    rows: dict[str, torch.Tensor] = field(default_factory=dict)
    cols: dict[str, torch.Tensor] = field(default_factory=dict)
    vectors: dict[str, torch.Tensor] = field(default_factory=dict)  # 1-D params: biases (+ norms)


def layer_unit_scores(sums: LayerSums, cfg: ModelConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                   torch.Tensor, list[torch.Tensor]]:
    """(heads, kv groups, ffn neurons, hidden channels, shortcut dims) from one layer's sums."""
    h, k, d = cfg.num_attention_heads, cfg.num_kv_heads, cfg.head_dim
    rows, cols, vec = sums.rows, sums.cols, sums.vectors
    heads = rows["attention.wq.weight"].view(h, d).sum(1) + cols["attention.wo.weight"].view(h, d).sum(1)
    kv_own = (rows["attention.wk.weight"] + rows["attention.wv.weight"]).view(k, d).sum(1)
    if "attention.wq.bias" in vec:
        heads = heads + vec["attention.wq.bias"].view(h, d).sum(1)
        kv_own = kv_own + (vec["attention.wk.bias"] + vec["attention.wv.bias"]).view(k, d).sum(1)
    kv = heads.view(k, h // k).sum(1) + kv_own
    ffn = rows["feed_forward.w1.weight"] + rows["feed_forward.w3.weight"] + cols["feed_forward.w2.weight"]
    hidden = sum(cols[n] for n in INPUT_PROJECTIONS) + sum(rows[n] for n in OUTPUT_PROJECTIONS)
    for name in ("attention.wo.bias", "attention_norm.weight", "ffn_norm.weight"):
        if name in vec:
            hidden = hidden + vec[name]
    shortcut_dims = []
    for j in range(cfg.aug_shortcuts):
        down, up = f"attention.shortcuts.{j}.down.weight", f"attention.shortcuts.{j}.up.weight"
        shortcut_dims.append(rows[down] + cols[up])
        hidden = hidden + cols[down] + rows[up]
    return heads, kv, ffn, hidden, shortcut_dims


def row_col_power_sums(w: torch.Tensor, p: int, row_index: torch.Tensor | None = None,
                       chunk: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums of |w|^p per row and per column, in float32 chunks of rows (bounded memory).

    Args:
        w: 2-D weight (may be memory-mapped, any float dtype).
        p: 1 or 2.
        row_index: only these rows (e.g. the vocabulary rows a token map keeps).
        chunk: rows converted to float32 at a time.
    """
    n = w.shape[0] if row_index is None else len(row_index)
    rows = torch.empty(n, dtype=torch.float64)
    cols = torch.zeros(w.shape[1], dtype=torch.float64)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        block = w[start:stop] if row_index is None else w.index_select(0, row_index[start:stop])
        block = block.to(torch.float32, copy=True)  # the in-place ops below must never touch the source
        block = block.abs_() if p == 1 else block.square_()
        # float32 sums inside a chunk are ~10x faster than float64 ones; chunks add up in float64.
        rows[start:stop] = block.sum(1).double()
        cols += block.sum(0).double()
    return rows, cols


# ---- magnitude (L1 / L2) -----------------------------------------------------------------------

def magnitude_scores(source: Source, layers: list[int], p: int, vocab: torch.Tensor | None = None) -> WidthScores:
    """L1 (p=1) or L2 (p=2) scores, one layer in memory at a time.

    Args:
        source: the checkpoint.
        layers: kept source layers.
        p: 1 or 2.
        vocab: vocabulary rows the target keeps (None: all).
    """
    cfg = source.config
    scores = WidthScores(f"l{p}", torch.zeros(cfg.hidden_size, dtype=torch.float64))
    for index in tqdm(layers, desc=f"L{p} scores", unit="layer"):
        sums = LayerSums()
        for name, w in source.layer(index).items():
            if w.dim() == 2:
                sums.rows[name], sums.cols[name] = row_col_power_sums(w, p)
            elif name.endswith(".bias"):
                sums.vectors[name] = w.double().abs() ** p
        heads, kv, ffn, hidden, dims = layer_unit_scores(sums, cfg)
        root = 1.0 / p
        scores.heads[index], scores.kv_heads[index], scores.ffn[index] = heads ** root, kv ** root, ffn ** root
        scores.shortcut_dims[index] = [s ** root for s in dims]
        scores.hidden += hidden
        source.release()
    for name in ("tok_embeddings.weight", "output.weight"):
        scores.hidden += row_col_power_sums(source.tensor(name), p, vocab)[1]
        source.release()
    scores.hidden = scores.hidden ** (1.0 / p)
    return scores


def shortcut_magnitudes(source: Source, layers: list[int]) -> dict[int, list[torch.Tensor]]:
    """L2 ranking of augmented-shortcut bottleneck dims (used by every metric)."""
    out = {}
    for index in layers:
        tensors = source.layer(index)
        out[index] = []
        for j in range(source.config.aug_shortcuts):
            down = row_col_power_sums(tensors[f"attention.shortcuts.{j}.down.weight"], 2)[0]
            up = row_col_power_sums(tensors[f"attention.shortcuts.{j}.up.weight"], 2)[1]
            out[index].append((down + up).sqrt())
        source.release()
    return out


def random_scores(cfg: ModelConfig, layers: list[int], seed: int) -> WidthScores:
    """Seeded uniform random scores: random selection, the baseline the paper starts from."""
    gen = torch.Generator().manual_seed(seed)
    rand = lambda n: torch.rand(n, generator=gen, dtype=torch.float64)  # noqa: E731
    scores = WidthScores("random", rand(cfg.hidden_size))
    for index in layers:
        scores.heads[index] = rand(cfg.num_attention_heads)
        scores.kv_heads[index] = rand(cfg.num_kv_heads)
        scores.ffn[index] = rand(cfg.intermediate_size)
    return scores


# ---- activation (Minitron) -----------------------------------------------------------------------

def activation_scores(source: Source, layers: list[int], ids: torch.Tensor, micro_rows: int = 4) -> WidthScores:
    """Mean activation magnitudes on calibration rows `ids`, one layer's hidden states at a time.

    Args:
        source: the checkpoint.
        layers: kept source layers.
        ids: [rows, seq] calibration tokens in the source vocabulary.
        micro_rows: rows per forward call.
    """
    cfg = source.config
    tokens, group = ids.numel(), cfg.num_attention_heads // cfg.num_kv_heads
    scores = WidthScores("activation", torch.zeros(cfg.hidden_size, dtype=torch.float64))
    runner = LayerRunner(source, layers, micro_rows)
    bar = tqdm(total=len(layers), desc="activation scores", unit="layer")

    def hooks(index, block):
        heads = scores.heads[index] = torch.zeros(cfg.num_attention_heads, dtype=torch.float64)
        ffn = scores.ffn[index] = torch.zeros(cfg.intermediate_size, dtype=torch.float64)

        def on_wo(m, args):
            per_head = args[0].view(*args[0].shape[:-1], cfg.num_attention_heads, cfg.head_dim)
            heads.add_(per_head.norm(dim=-1).sum((0, 1), dtype=torch.float64) / tokens)

        def on_w2(m, args):
            ffn.add_(args[0].abs().sum((0, 1), dtype=torch.float64) / tokens)

        def on_norm(m, args, out):
            scores.hidden.add_(out.abs().sum((0, 1), dtype=torch.float64) / tokens)

        return [block.attention.wo.register_forward_pre_hook(on_wo),
                block.feed_forward.w2.register_forward_pre_hook(on_w2),
                block.attention_norm.register_forward_hook(on_norm),
                block.ffn_norm.register_forward_hook(on_norm)]

    def visit(index, block, inp, out):
        scores.kv_heads[index] = scores.heads[index].view(cfg.num_kv_heads, group).sum(1)
        bar.update()

    final, _ = run_layers_forward(runner, ids, visit=visit, hooks=hooks)
    bar.close()
    norm = runner.final_norm()
    with torch.no_grad():
        scores.hidden += norm(final).abs().sum((0, 1), dtype=torch.float64) / tokens
    return scores


# ---- Taylor (first order, layer-wise backward) ---------------------------------------------------

def _taylor_sums(params: dict[str, torch.Tensor]) -> LayerSums:
    sums = LayerSums()
    for name, p in params.items():
        if p.grad is None:
            raise RuntimeError(f"no gradient for {name}")
        saliency = (p.detach() * p.grad).abs().double()
        if saliency.dim() == 2:
            sums.rows[name], sums.cols[name] = saliency.sum(1), saliency.sum(0)
        else:
            sums.vectors[name] = saliency
    return sums


def taylor_scores(source: Source, layers: list[int], ids: torch.Tensor, micro_rows: int = 4,
                  vocab: torch.Tensor | None = None) -> WidthScores:
    """|w * dL/dw| summed per unit, gradients accumulated over all calibration rows.

    Args:
        source: the checkpoint.
        layers: kept source layers.
        ids: [rows, seq] calibration tokens in the source vocabulary.
        micro_rows: rows per forward/backward call.
        vocab: vocabulary rows the target keeps (None: all).
    """
    cfg = source.config
    runner = LayerRunner(source, layers, micro_rows)
    scores = WidthScores("taylor", torch.zeros(cfg.hidden_size, dtype=torch.float64))
    final, inputs = run_layers_forward(runner, ids, keep_inputs=True)
    grad, loss, norm, output = head_backward(runner, final, ids, weight_grads=True)
    head_rows = output.detach() * output.grad if vocab is None else (output.detach() * output.grad)[vocab]
    scores.hidden += head_rows.abs().sum(0, dtype=torch.float64) + (norm.weight * norm.weight.grad).detach().abs().double()
    del output, norm
    bar = tqdm(total=len(layers), desc="taylor scores (backward)", unit="layer")

    def visit(index, block):
        heads, kv, ffn, hidden, _ = layer_unit_scores(_taylor_sums(dict(block.named_parameters())), cfg)
        scores.heads[index], scores.kv_heads[index], scores.ffn[index] = heads, kv, ffn
        scores.hidden.add_(hidden)
        bar.update()

    grad = layers_backward(runner, inputs, grad, visit, weight_grads=True)
    bar.close()
    scores.hidden += _embedding_taylor(source, ids, grad, vocab)
    scores.extra["calibration_loss"] = loss
    return scores


def _embedding_taylor(source: Source, ids: torch.Tensor, grad: torch.Tensor, vocab: torch.Tensor | None) -> torch.Tensor:
    """Per hidden channel sum of |E * dL/dE| over the embedding rows the calibration touched."""
    used, inverse = ids.reshape(-1).unique(return_inverse=True)
    row_grads = torch.zeros(len(used), grad.shape[-1], dtype=torch.float64)
    row_grads.index_add_(0, inverse, grad.reshape(-1, grad.shape[-1]).double())
    if vocab is not None:  # rows the target drops do not speak for hidden channels
        keep = torch.isin(used, vocab)
        used, row_grads = used[keep], row_grads[keep]
    rows = source.tensor("tok_embeddings.weight").index_select(0, used).double()
    source.release()
    return (rows * row_grads).abs().sum(0)


# ---- learnable gates (hard concrete, Sheared-LLaMA style) ---------------------------------------

# Hard-concrete distribution (Louizos et al. 2018): stretched to (GAMMA, ZETA) and clipped to [0, 1],
# so sampled gates are exactly 0 or 1 with non-zero probability.
HC_BETA, HC_GAMMA, HC_ZETA = 2.0 / 3.0, -0.1, 1.1


def hard_concrete_sample(log_alpha: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A differentiable gate sample in [0, 1] (reparameterised through `log_alpha`)."""
    u = torch.rand(log_alpha.shape, generator=gen).clamp(1e-6, 1 - 1e-6)
    s = torch.sigmoid((u.log() - (1 - u).log() + log_alpha) / HC_BETA)
    return (s * (HC_ZETA - HC_GAMMA) + HC_GAMMA).clamp(0.0, 1.0)


def hard_concrete_keep_probability(log_alpha: torch.Tensor) -> torch.Tensor:
    """P(gate > 0): the expected L0 size of a unit."""
    return torch.sigmoid(log_alpha - HC_BETA * torch.log(torch.tensor(-HC_GAMMA / HC_ZETA)))


def learnable_scores(source: Source, layers: list[int], ids: torch.Tensor, target: ModelConfig,
                     steps: int = 300, lr: float = 0.1, dual_lr: float = 1.0, micro_rows: int = 4,
                     seed: int = 0) -> WidthScores:
    """Learn hard-concrete masks on heads, FFN neurons and hidden channels under a target size;
    scores = each unit's final keep probability.

    Sampled masks switch units fully off, so the LM loss sees the effect of removing them (the
    first-order signal of deterministic gates near 1 is ~0 at a trained optimum). The size
    constraint "expected kept share of each kind <= its keep ratio" uses an augmented Lagrangian
    as Sheared-LLaMA: loss + sum_k lam_k e_k + e_k^2, the multipliers lam_k rising by dual ascent
    while the masks are too large. Each step runs `micro_rows` calibration rows forward and
    backward layer by layer, so memory is one layer's weights plus the kept layers' inputs.

    Args:
        source: the checkpoint.
        layers: kept source layers.
        ids: [rows, seq] calibration tokens in the source vocabulary.
        target: the target shape (its keep ratios are the constraint).
        steps: optimisation steps.
        lr: Adam learning rate on the mask parameters log_alpha.
        dual_lr: ascent rate of the Lagrange multipliers.
        micro_rows: rows per step.
        seed: order of calibration rows and mask samples.
    """
    cfg = source.config
    if steps < 1:
        raise UserError(f"learnable masks need at least one step, got {steps}")
    log_alpha = _initial_mask_parameters(cfg, layers)
    ratios = {"hidden": target.hidden_size / cfg.hidden_size,
              "heads": target.num_attention_heads / cfg.num_attention_heads,
              "ffn": target.intermediate_size / cfg.intermediate_size}
    multipliers = {kind: 0.0 for kind in ratios}
    optimizer = torch.optim.Adam([log_alpha["hidden"], *log_alpha["heads"].values(), *log_alpha["ffn"].values()],
                                 lr=lr)
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(ids.shape[0], generator=gen)
    runner = LayerRunner(source, layers, micro_rows)
    losses = []
    for step in tqdm(range(steps), desc="learnable masks", unit="step"):
        rows = order[(torch.arange(micro_rows) + step * micro_rows) % ids.shape[0]]
        optimizer.zero_grad()
        gates = Gates({i: hard_concrete_sample(t, gen) for i, t in log_alpha["heads"].items()},
                      {i: hard_concrete_sample(t, gen) for i, t in log_alpha["ffn"].items()},
                      hard_concrete_sample(log_alpha["hidden"], gen))
        loss, gate_grads = _gate_gradients(runner, ids[rows], gates)
        losses.append(loss)
        excess = _size_excess(log_alpha, ratios)
        penalty = sum(multipliers[k] * e + e ** 2 for k, e in excess.items())
        # LM-loss gradients arrive per sampled gate; the penalty is differentiated directly.
        torch.autograd.backward([*_gate_list(gates), penalty], [*gate_grads, None])
        optimizer.step()
        for kind, e in excess.items():  # dual ascent; the constraint is one-sided, so lam >= 0
            multipliers[kind] = max(0.0, multipliers[kind] + dual_lr * float(e.detach()))
    scores = _mask_scores(log_alpha, cfg, losses)
    scores.extra["mask_multipliers"] = {k: round(v, 6) for k, v in multipliers.items()}
    return scores


def _initial_mask_parameters(cfg: ModelConfig, layers: list[int]) -> dict:
    # Every unit starts equal and almost surely on (keep probability ~0.99): the data breaks ties.
    start = lambda n: torch.full((n,), 3.0, requires_grad=True)  # noqa: E731
    return {"hidden": start(cfg.hidden_size),
            "heads": {i: start(cfg.num_attention_heads) for i in layers},
            "ffn": {i: start(cfg.intermediate_size) for i in layers}}


def _gate_list(gates: Gates) -> list[torch.Tensor]:
    return [gates.hidden, *(gates.heads[i] for i in sorted(gates.heads)), *(gates.ffn[i] for i in sorted(gates.ffn))]


def _gate_gradients(runner: LayerRunner, ids: torch.Tensor, gates: Gates) -> tuple[float, list[torch.Tensor]]:
    """One layer-wise forward/backward with gates: the loss and dL/dgate for `_gate_list(gates)`."""
    leaves = Gates({i: g.detach().requires_grad_(True) for i, g in gates.heads.items()},
                   {i: g.detach().requires_grad_(True) for i, g in gates.ffn.items()},
                   gates.hidden.detach().requires_grad_(True))
    final, inputs = run_layers_forward(runner, ids, keep_inputs=True, gates=leaves)
    grad, loss, _, _ = head_backward(runner, final, ids, weight_grads=False)
    # Each recomputed layer applies the same leaf gates, so their .grad sums over layers.
    grad = layers_backward(runner, inputs, grad, None, weight_grads=False, gates=leaves)
    torch.autograd.backward(runner.embed(ids) * leaves.hidden, grad)
    return loss, [leaf.grad for leaf in _gate_list(leaves)]


def _size_excess(log_alpha: dict, ratios: dict[str, float]) -> dict[str, torch.Tensor]:
    """Expected kept share minus keep ratio, per kind of unit."""
    keep = hard_concrete_keep_probability
    return {"hidden": keep(log_alpha["hidden"]).mean() - ratios["hidden"],
            "heads": keep(torch.cat(list(log_alpha["heads"].values()))).mean() - ratios["heads"],
            "ffn": keep(torch.cat(list(log_alpha["ffn"].values()))).mean() - ratios["ffn"]}


def _mask_scores(log_alpha: dict, cfg: ModelConfig, losses: list[float]) -> WidthScores:
    group = cfg.num_attention_heads // cfg.num_kv_heads
    keep = hard_concrete_keep_probability
    with torch.no_grad():
        scores = WidthScores("learnable", keep(log_alpha["hidden"]).double())
        for i, t in log_alpha["heads"].items():
            scores.heads[i] = keep(t).double()
            scores.kv_heads[i] = scores.heads[i].view(cfg.num_kv_heads, group).sum(1)
        for i, t in log_alpha["ffn"].items():
            scores.ffn[i] = keep(t).double()
    scores.extra["mask_losses"] = [round(x, 6) for x in losses]
    return scores


# ---- block influence (layer importance) -----------------------------------------------------------

def block_influence(source: Source, ids: torch.Tensor, micro_rows: int = 4) -> list[float]:
    """ShortGPT's block influence of every source layer: 1 - mean cosine(input, output) per token.

    Runs the whole source once, one layer's hidden states at a time.

    Args:
        source: the checkpoint.
        ids: [rows, seq] calibration tokens in the source vocabulary.
        micro_rows: rows per forward call.
    """
    runner = LayerRunner(source, list(range(source.config.num_layers)), micro_rows)
    influence = {}
    bar = tqdm(total=source.config.num_layers, desc="block influence", unit="layer")

    def visit(index, block, inp, out):
        cos = torch.nn.functional.cosine_similarity(inp.double(), out.double(), dim=-1)
        influence[index] = float(1.0 - cos.mean())
        bar.update()

    run_layers_forward(runner, ids, visit=visit)
    bar.close()
    return [influence[i] for i in range(source.config.num_layers)]
