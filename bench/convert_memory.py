"""Peak memory and time of `convert to-hf` on a 1B Pro-shaped checkpoint (random bf16 weights).

Each step runs in its own subprocess so its peak RSS (ru_maxrss, which counts memory-mapped
checkpoint pages that were touched) is its own:
  1. make:     write a random checkpoint with `save_model_only` (model_tp0_pp0.pt + model_config.json);
  2. baseline: the naive export the seed's script does: torch.load everything, build the full HF
               state dict, `safetensors.torch.save_file` it;
  3. export:   `rethinktiny.convert.export.to_hf` (streamed, memory-mapped).
Prints seconds, peak RSS, RSS / checkpoint size (goal <= 1.3x) and export / baseline.

    python bench/convert_memory.py [--preset pangu_pi_1b_pro] [--dtype bfloat16] [--export-dtype auto]
                                   [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def step_make(workdir: Path, preset: str, dtype_name: str) -> dict:
    import torch

    from rethinktiny.checkpoint import save_model_only
    from rethinktiny.config import get_preset
    from rethinktiny.model import parameter_shapes

    cfg = get_preset(preset)
    dtype = getattr(torch, dtype_name)
    generator = torch.Generator().manual_seed(0)
    state = {name: torch.randn(shape, generator=generator, dtype=torch.float32).mul_(0.02).to(dtype)
             for name, shape in parameter_shapes(cfg).items()}
    save_model_only(workdir / "ckpt", state, cfg)
    return {"params": cfg.num_params()}


def step_baseline(workdir: Path, export_dtype: str) -> dict:
    """Everything in memory at once, as tools that torch.load and save_pretrained do."""
    import torch
    from safetensors.torch import save_file

    from rethinktiny.checkpoint import read_model_config
    from rethinktiny.convert.keys import ours_to_hf
    from rethinktiny.rotary_layout import interleaved_to_half, rotary_heads

    cfg = read_model_config(workdir / "ckpt")
    state = torch.load(workdir / "ckpt" / "model_tp0_pp0.pt", map_location="cpu", weights_only=True)
    hf_state = {}
    for name, tensor in state.items():
        heads = rotary_heads(name, cfg.num_attention_heads, cfg.num_kv_heads)
        tensor = interleaved_to_half(tensor, heads) if heads else tensor
        if export_dtype != "auto":
            tensor = tensor.to(getattr(torch, export_dtype))
        hf_state[ours_to_hf(name)] = tensor.contiguous()
    (workdir / "baseline").mkdir()
    save_file(hf_state, str(workdir / "baseline" / "model.safetensors"), metadata={"format": "pt"})
    return {}


def step_export(workdir: Path, export_dtype: str) -> dict:
    from rethinktiny.convert.export import to_hf

    to_hf(workdir / "ckpt", workdir / "hf", dtype=export_dtype, progress=False)
    return {}


STEPS = {"make": step_make, "baseline": step_baseline, "export": step_export}


def run_step(name: str, workdir: Path, extra: list[str]) -> dict:
    """Run one step in a fresh interpreter; it prints a JSON line with its time and peak RSS."""
    done = subprocess.run([sys.executable, __file__, "--step", name, "--workdir", str(workdir), *extra],
                          check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _child(args: argparse.Namespace) -> None:
    import torch  # noqa: F401  (imported before the clock so the step is timed, not the import)

    base_rss = _peak_rss_bytes()
    start = time.perf_counter()
    kwargs = ({"preset": args.preset, "dtype_name": args.dtype} if args.step == "make"
              else {"export_dtype": args.export_dtype})
    result = STEPS[args.step](Path(args.workdir), **kwargs)
    result.update(seconds=time.perf_counter() - start, peak_rss=_peak_rss_bytes(), import_rss=base_rss)
    print(json.dumps(result))


def _report(workdir: Path, results: dict) -> None:
    size = (workdir / "ckpt" / "model_tp0_pp0.pt").stat().st_size
    hf_size = sum(p.stat().st_size for p in (workdir / "hf").glob("*.safetensors"))
    gib = 2 ** 30
    print(f"checkpoint: {results['make']['params'] / 1e9:.3f}B params ({results['dtypes']}), "
          f"model_tp0_pp0.pt {size / gib:.3f} GiB, "
          f"export safetensors {hf_size / gib:.3f} GiB")
    for name in ("baseline", "export"):
        r = results[name]
        print(f"{name:9s}: {r['seconds']:7.1f} s   peak RSS {r['peak_rss'] / gib:6.3f} GiB = "
              f"{r['peak_rss'] / size:.2f}x checkpoint   (interpreter + torch before the step: "
              f"{r['import_rss'] / gib:.3f} GiB)")
    print(f"export / baseline: time {results['export']['seconds'] / results['baseline']['seconds']:.2f}x, "
          f"peak RSS {results['export']['peak_rss'] / results['baseline']['peak_rss']:.2f}x; "
          f"goal peak RSS <= 1.3x checkpoint: "
          f"{'met' if results['export']['peak_rss'] <= 1.3 * size else 'NOT met'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="pangu_pi_1b_pro")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    parser.add_argument("--export-dtype", default="auto", choices=("auto", "bfloat16", "float16", "float32"),
                        help="to-hf --dtype (auto keeps the checkpoint's; float16 is the seed's default)")
    parser.add_argument("--workdir", help="scratch folder (default: a temporary folder, removed afterwards)")
    parser.add_argument("--step", choices=sorted(STEPS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        return _child(args)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="convert_memory_"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        results = {"make": run_step("make", workdir, ["--preset", args.preset, "--dtype", args.dtype])}
        results["baseline"] = run_step("baseline", workdir, ["--export-dtype", args.export_dtype])
        results["export"] = run_step("export", workdir, ["--export-dtype", args.export_dtype])
        results["dtypes"] = f"{args.dtype} -> {args.export_dtype}"
        _report(workdir, results)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
