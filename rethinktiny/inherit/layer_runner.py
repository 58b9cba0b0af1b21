"""Run a source model one decoder layer at a time, forward and backward.

Only one layer's weights are in memory at once (loaded from the lazy source into the real
`rethinktiny.model.Block`, then released). The forward pass keeps one layer's hidden states; the
backward pass keeps the input of every kept layer ([tokens, hidden] each, tiny next to the
weights) and recomputes each layer from its input, last layer first, handing the gradient down.
This is activation checkpointing with the weights streamed from disk, and it is what lets Taylor
and learnable-gate scores run without the whole source in memory.

Observation and gating go through forward hooks on the real modules, so the computation is
exactly the model's:
- `attention.wo` input = the concatenated per-head attention outputs [.., heads*head_dim];
- `feed_forward.w2` input = the FFN intermediate act(w1 x) * w3 x;
- `attention` / `feed_forward` outputs = what each branch adds to the residual stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from rethinktiny.inherit.sources import Source
from rethinktiny.model import Block, RMSNorm, rope_cos_sin


@dataclass
class Gates:
    """Multiplicative gates: per query head and FFN neuron of each kept layer, per hidden channel."""

    heads: dict[int, torch.Tensor]
    ffn: dict[int, torch.Tensor]
    hidden: torch.Tensor


class LayerRunner:
    """Loads kept layers of `source` one at a time as float32 `Block` modules.

    Args:
        source: the checkpoint.
        layers: source layer indices to run, in order.
        micro_rows: calibration rows per forward call (bounds attention memory).
    """

    def __init__(self, source: Source, layers: list[int], micro_rows: int = 4) -> None:
        self.source = source
        self.cfg = source.config
        self.layers = layers
        self.micro_rows = micro_rows

    def rope(self, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        return rope_cos_sin(torch.arange(seq_len).unsqueeze(0), self.cfg.head_dim, self.cfg.rope_theta)

    def block(self, index: int, requires_grad: bool = False) -> Block:
        """Source layer `index` as a float32 Block (built on the meta device, weights assigned)."""
        with torch.device("meta"):
            block = Block(self.cfg, index)
        tensors = {k: v.float() for k, v in self.source.layer(index).items()}
        block.load_state_dict(tensors, strict=True, assign=True)
        block.requires_grad_(requires_grad)
        return block

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings [rows, seq, hidden] of `ids` (only the used rows are read)."""
        table = self.source.tensor("tok_embeddings.weight")
        flat = table.index_select(0, ids.reshape(-1)).float()
        return flat.view(*ids.shape, -1)

    def final_norm(self, requires_grad: bool = False) -> RMSNorm:
        """The final RMSNorm (float32)."""
        with torch.device("meta"):
            norm = RMSNorm(self.cfg.hidden_size, self.cfg.norm_eps)
        norm.load_state_dict({"weight": self.source.tensor("norm.weight").float()}, assign=True)
        return norm.requires_grad_(requires_grad)

    def head(self, requires_grad: bool = False) -> tuple[RMSNorm, torch.Tensor]:
        """Final norm module and output matrix (float32; a copy, so its gradient is ours)."""
        output = self.source.tensor("output.weight").to(torch.float32, copy=True)
        return self.final_norm(requires_grad), output.requires_grad_(requires_grad)

    def chunks(self, rows: int) -> list[slice]:
        return [slice(i, min(i + self.micro_rows, rows)) for i in range(0, rows, self.micro_rows)]


def next_token_loss(norm: RMSNorm, output: torch.Tensor, hidden: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Summed next-token cross-entropy of one chunk (divide by the token count outside)."""
    logits = F.linear(norm(hidden[:, :-1]), output)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum")


def gate_hooks(block: Block, heads: torch.Tensor | None, ffn: torch.Tensor | None,
               hidden: torch.Tensor | None) -> list:
    """Install gates on a block; returns the hook handles (remove them when done)."""
    handles = []
    if heads is not None:
        per_row = heads.repeat_interleave(block.attention.cfg.head_dim)
        handles.append(block.attention.wo.register_forward_pre_hook(lambda m, args: (args[0] * per_row,)))
    if ffn is not None:
        handles.append(block.feed_forward.w2.register_forward_pre_hook(lambda m, args: (args[0] * ffn,)))
    if hidden is not None:
        for branch in (block.attention, block.feed_forward):
            handles.append(branch.register_forward_hook(lambda m, args, out: out * hidden))
    return handles


Hooks = Callable[[int, Block], list]


def run_layers_forward(runner: LayerRunner, ids: torch.Tensor,
                       visit: Callable[[int, Block, torch.Tensor, torch.Tensor], None] | None = None,
                       keep_inputs: bool = False, gates: Gates | None = None,
                       hooks: Hooks | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Forward `ids` through the kept layers one layer at a time, without autograd.

    Args:
        runner: the layer loader.
        ids: [rows, seq] source-vocabulary tokens.
        visit: called after each layer with (source index, block, input, output).
        keep_inputs: also return each layer's input (for a later backward pass).
        gates: optional gates applied during the pass.
        hooks: called with (source index, block) before the layer runs; returns hook handles,
            which are removed after the layer.
    Returns:
        final hidden states and (if asked) the per-layer inputs.
    """
    cos, sin = runner.rope(ids.shape[1])
    with torch.no_grad():
        hidden = runner.embed(ids)
        if gates is not None:
            hidden = hidden * gates.hidden
        inputs = []
        for index in runner.layers:
            block = runner.block(index)
            handles = _gates_for(block, index, gates) + (hooks(index, block) if hooks else [])
            out = torch.empty_like(hidden)
            for part in runner.chunks(ids.shape[0]):
                out[part] = block(hidden[part], cos, sin)
            for h in handles:
                h.remove()
            if visit is not None:
                visit(index, block, hidden, out)
            if keep_inputs:
                inputs.append(hidden)
            hidden = out
            del block
            runner.source.release()
    return hidden, inputs


def _gates_for(block: Block, index: int, gates: Gates | None) -> list:
    if gates is None:
        return []
    return gate_hooks(block, gates.heads.get(index), gates.ffn.get(index), gates.hidden)


def head_backward(runner: LayerRunner, hidden: torch.Tensor, ids: torch.Tensor, weight_grads: bool
                  ) -> tuple[torch.Tensor, float, RMSNorm, torch.Tensor]:
    """Mean next-token loss at the top; returns dL/dhidden, the loss, and the (graded) head."""
    norm, output = runner.head(requires_grad=weight_grads)
    grad = torch.zeros_like(hidden)
    total = 0.0
    tokens = ids.shape[0] * (ids.shape[1] - 1)
    for part in runner.chunks(ids.shape[0]):
        h = hidden[part].detach().requires_grad_(True)
        loss = next_token_loss(norm, output, h, ids[part]) / tokens
        loss.backward()
        grad[part] = h.grad
        total += float(loss.detach())
    return grad, total, norm, output


def layers_backward(runner: LayerRunner, inputs: list[torch.Tensor], grad: torch.Tensor,
                    visit: Callable[[int, Block], None] | None, weight_grads: bool,
                    gates: Gates | None = None) -> torch.Tensor:
    """Backward through the kept layers, last first, recomputing each from its stored input.

    Args:
        runner: the layer loader.
        inputs: per-layer inputs from `run_layers_forward(keep_inputs=True)`.
        grad: dL/d(final hidden).
        visit: called with (source index, block) after the layer's backward (weight grads set).
        weight_grads: compute gradients of the layer weights (Taylor); gates get theirs anyway.
        gates: gates to apply (their .grad accumulates).
    Returns:
        dL/d(embedding output).
    """
    cos, sin = runner.rope(grad.shape[1])
    for position in range(len(runner.layers) - 1, -1, -1):
        index = runner.layers[position]
        block = runner.block(index, requires_grad=weight_grads)
        handles = _gates_for(block, index, gates)
        grad_in = torch.empty_like(grad)
        for part in runner.chunks(grad.shape[0]):
            x = inputs[position][part].detach().requires_grad_(True)
            block(x, cos, sin).backward(grad[part])
            grad_in[part] = x.grad
        for h in handles:
            h.remove()
        if visit is not None:
            visit(index, block)
        grad = grad_in
        del block
        runner.source.release()
    return grad

