"""Training-step time of rethinktiny's PANGU_PI_PRO vs InternEvo's own LLAMA2 at the same shape.

Both models are built by InternEvo's registry in one process and trained on the same random
batches (forward, backward, AdamW step); the median step time of each is measured in the same
run and the ratio PANGU_PI_PRO / LLAMA2 printed (goal <= 1.0).

    python bench/train_step.py                       # CPU, small shape
    python bench/train_step.py --device cuda --shape 1b --seq-len 2048 --dtype bfloat16

On CUDA it also prints tokens/s and MFU (model FLOPs utilisation against --peak-tflops).
LLAMA2 runs unpacked (InternEvo needs flash-attn for its packed path); PANGU_PI_PRO is timed both
unpacked (same input as LLAMA2) and packed (InternEvo's packed batch, 4 documents a row).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

SHAPES = {
    "small": dict(hidden_size=512, num_layers=8, num_attention_heads=8, vocab_size=8000, mlp_ratio=8 / 3),
    "1b": dict(hidden_size=1792, num_layers=20, num_attention_heads=14, vocab_size=48000, mlp_ratio=8 / 3),
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=sorted(SHAPES), default="small")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU (H100/H200: 989)")
    return p.parse_args()


def build(model_type: str, shape: dict, dtype: torch.dtype, use_flash_attn: bool) -> torch.nn.Module:
    from internlm.core.context import global_context as gpc
    from internlm.utils.registry import MODEL_INITIALIZER

    entry = dict(gpc.config.model)
    entry.update(shape, dtype=dtype, use_flash_attn=use_flash_attn, no_bias=True)
    torch.manual_seed(0)
    return MODEL_INITIALIZER.get_module(model_type)(**entry).to(dtype)


def time_steps(model, make_inputs, labels, steps: int, warmup: int, device: str) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    durations = []
    for i in range(warmup + steps):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        logits = model(**make_inputs())
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, -2), labels.flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            durations.append(time.perf_counter() - start)
    return statistics.median(durations)


def train_flops_per_token(shape: dict, seq_len: int) -> float:
    from rethinktiny.config import from_internevo

    cfg = from_internevo({**shape, "no_bias": True})
    matmul_params = cfg.non_embedding_params() + cfg.vocab_size * cfg.hidden_size  # + output head
    attention = 2 * cfg.num_layers * seq_len * cfg.hidden_size  # QK^T and AV, causal half counted
    return 6 * matmul_params + 6 * attention


def main() -> None:
    args = parse_args()
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
        results[name] = time_steps(model, inputs, target, args.steps, args.warmup, device)
        del model
    tokens = args.batch * args.seq_len
    print(f"shape {args.shape} ({shape}), seq {args.seq_len}, batch {args.batch}, {args.dtype} on {device}")
    for name, seconds in results.items():
        line = f"  {name:<22} {seconds * 1000:9.1f} ms/step  {tokens / seconds:10,.0f} tokens/s"
        if device == "cuda":
            mfu = train_flops_per_token(shape, args.seq_len) * tokens / seconds / (args.peak_tflops * 1e12)
            line += f"  MFU {100 * mfu:.1f}%"
        print(line)
    base = results["LLAMA2 (InternEvo)"]
    print(f"ratio PANGU_PI_PRO / LLAMA2 step time: {results['PANGU_PI_PRO'] / base:.3f} (goal <= 1.0); "
          f"packed: {results['PANGU_PI_PRO packed'] / base:.3f}")


if __name__ == "__main__":
    main()
