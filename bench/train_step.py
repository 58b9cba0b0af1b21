"""Model-only training-step time on CPU: rethinktiny's PANGU_PI_PRO vs InternEvo's own LLAMA2 at the same shape.

Both models are built by InternEvo's registry in one process and trained on the same random
batches (forward, backward, plain AdamW, no trainer); the median step time of each is measured in
the same run and the ratio PANGU_PI_PRO / LLAMA2 printed (goal <= 1.0).

    python bench/train_step.py                       # CPU, small shape

LLAMA2 runs unpacked (InternEvo needs flash-attn for its packed path); PANGU_PI_PRO is timed both
unpacked (same input as LLAMA2) and packed (InternEvo's packed batch, 4 documents a row).

This is a CPU micro-benchmark of the two models' forward and backward only. The GPU comparison a
user would make (both through InternEvo's trainer: mixed precision, its ZeRO optimizer, LLAMA2 with
flash-attn on the same packed data, the config's micro-batch, peak memory against the plan) is
bench/gpu_check.py; `--device cuda` here says so and stops.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

SHAPES = {
    "small": dict(hidden_size=512, num_layers=8, num_attention_heads=8, vocab_size=8000, mlp_ratio=8 / 3),
    "1b": dict(hidden_size=1792, num_layers=20, num_attention_heads=14, vocab_size=48000, mlp_ratio=8 / 3),
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=sorted(SHAPES), default="small")
    p.add_argument("--device", default="cpu", help="cpu (cuda: use bench/gpu_check.py)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    return p.parse_args()


def build(model_type: str, shape: dict, dtype: torch.dtype, use_flash_attn: bool) -> torch.nn.Module:
    from internlm.core.context import global_context as gpc
    from internlm.utils.registry import MODEL_INITIALIZER

    entry = dict(gpc.config.model)
    entry.update(shape, dtype=dtype, use_flash_attn=use_flash_attn, no_bias=True)
    torch.manual_seed(0)
    return MODEL_INITIALIZER.get_module(model_type)(**entry).to(dtype)


def time_steps(model, make_inputs, labels, steps: int, warmup: int) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    durations = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        logits = model(**make_inputs())
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, -2), labels.flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i >= warmup:
            durations.append(time.perf_counter() - start)
    return statistics.median(durations)


def main() -> None:
    args = parse_args()
    if args.device != "cpu":
        sys.exit("bench/train_step.py times the bare models on CPU; on a GPU run bench/gpu_check.py "
                 "(InternEvo's trainer for both, LLAMA2 with flash-attn on the same packed data, peak memory)")
    from rethinktiny.internevo.local import launch_local

    dtype = getattr(torch, args.dtype)
    launch_local(dict(model=dict(dtype=f"torch.{args.dtype}"),
                      data=dict(seq_len=args.seq_len, micro_bsz=args.batch)))
    shape, device = SHAPES[args.shape], args.device
    ids = torch.randint(0, shape["vocab_size"], (args.batch, args.seq_len), device=device)
    labels = torch.randint(0, shape["vocab_size"], (args.batch, args.seq_len), device=device)
    docs = torch.tensor([0] + [args.seq_len * args.batch * (k + 1) // 4 for k in range(4)], dtype=torch.int32)
    positions = torch.cat([torch.arange(int(b - a)) for a, b in zip(docs[:-1], docs[1:])])
    packed = dict(input_ids=ids.reshape(1, -1), cu_seqlens=docs.to(device), indexes=positions[None].to(device))

    results = {}
    for name, model_type, inputs, flash in (("LLAMA2 (InternEvo)", "LLAMA2", lambda: {"input_ids": ids}, False),
                                            ("PANGU_PI_PRO", "PANGU_PI_PRO", lambda: {"input_ids": ids}, True),
                                            ("PANGU_PI_PRO packed", "PANGU_PI_PRO", lambda: packed, True)):
        model = build(model_type, shape, dtype, flash).to(device).train()
        target = labels if "packed" not in name else labels.reshape(1, -1)
        results[name] = time_steps(model, inputs, target, args.steps, args.warmup)
        del model
    tokens = args.batch * args.seq_len
    print(f"shape {args.shape} ({shape}), seq {args.seq_len}, batch {args.batch}, {args.dtype} on {device}")
    for name, seconds in results.items():
        print(f"  {name:<22} {seconds * 1000:9.1f} ms/step  {tokens / seconds:10,.0f} tokens/s")
    base = results["LLAMA2 (InternEvo)"]
    print(f"ratio PANGU_PI_PRO / LLAMA2 step time: {results['PANGU_PI_PRO'] / base:.3f} (goal <= 1.0); "
          f"packed: {results['PANGU_PI_PRO packed'] / base:.3f}")


if __name__ == "__main__":
    main()
