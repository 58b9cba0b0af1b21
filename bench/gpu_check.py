"""The 10-minute GPU check: one table that says whether the GPU path works and how fast it is.

    .venv/bin/python bench/gpu_check.py                    # one H100/H200: configs/LLM1B.py, 15 steps
    .venv/bin/python bench/gpu_check.py --dry-run          # the same plan on CPU at a tiny shape (make test)

Rows, each a check that runs on its own (a missing piece, no flash-attn or no GPU, is a row that
says so; a failing check is a FAILED row with its last error line, never a crash of the table):
1. versions: torch, CUDA, GPU, flash-attn, InternEvo; the packed-attention path
   (`rethinktiny.model.attention_path`);
2. parity of that path (flash-attn varlen on a GPU that has it) with torch SDPA at the 1B Pro
   width in bf16: documents of different lengths packed into one row against each one alone;
   logits and three weight gradients;
3. our trainer (InternEvo, one rank) on the config for --steps steps on random tokenized data:
   tokens/s (median after warm-up), MFU, `torch.cuda.max_memory_allocated` against
   `rethinktiny arch memory`'s plan;
4. save and resume: a second run continues from the step folder the first one saved;
5. InternEvo's own LLAMA2 of the same shape (flash-attn; its packed path needs it) on the same
   data: tokens/s and our step time / its step time;
6. `rethinktiny resample` scoring of that data with the saved checkpoint: tokens/s.

Each training stage runs in its own process (InternEvo's global context is per process), started
by this script as `gpu_check.py --rank-stage ...` so it can read the peak memory of its rank.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense bf16, by device name
MEMORY_TAG = "[gpu_check] max_memory_allocated"
RATE_RE = re.compile(r"\[rethinktiny\] scoring rank (\d+): .* \(([\d.]+) tokens/s\)")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny shape: the whole plan in about a minute")
    p.add_argument("--config", default=str(REPO / "configs" / "LLM1B.py"), help="training config (GPU run)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default 15; --dry-run 3)")
    p.add_argument("--warmup", type=int, default=None, help="steps left out of tokens/s (default 3; --dry-run 1)")
    p.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of the GPU (default by name)")
    p.add_argument("--out", default=None, help="work folder (default: a temporary one, removed at the end)")
    p.add_argument("--stage-timeout", type=float, default=240, help="seconds one training stage may take")
    p.add_argument("--budget", type=float, default=570,
                   help="seconds for the whole check; a stage gets what is left (default: under 10 minutes)")
    p.add_argument("--rank-stage", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ---- the table ----------------------------------------------------------------------------------------

class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str]] = []

    def add(self, check: str, result: str, detail: str = "") -> None:
        self.rows.append((check, result, detail))

    def run(self, check: str, function, *args) -> object:
        """Call `function`; an exception becomes a FAILED row (its last line), not the end of the table."""
        try:
            return function(self, *args)
        except Exception as err:  # noqa: BLE001 - every check must leave a row
            last = (str(err).strip().splitlines() or [type(err).__name__])[-1]
            self.add(check, "FAILED", f"{type(err).__name__}: {last}"[:200])
            traceback.print_exc(file=sys.stderr)
            return None

    def render(self) -> str:
        widths = [max(len(row[i]) for row in [("check", "result", "detail"), *self.rows]) for i in range(2)]
        lines = [f"| {'check':<{widths[0]}} | {'result':<{widths[1]}} | detail |",
                 f"|{'-' * (widths[0] + 2)}|{'-' * (widths[1] + 2)}|--------|"]
        lines += [f"| {c:<{widths[0]}} | {r:<{widths[1]}} | {d} |" for c, r, d in self.rows]
        return "\n".join(lines)


# ---- 1. versions and attention path ----------------------------------------------------------------

def versions(table: Table, device: str) -> None:
    import torch

    table.add("torch", torch.__version__, f"CUDA {torch.version.cuda or 'none'}")
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        table.add("GPU", props.name, f"{props.total_memory / 1e9:.1f} GB, {torch.cuda.device_count()} visible")
    else:
        table.add("GPU", "none", "no CUDA device visible to torch" + (" (--dry-run: CPU)" if device == "cpu" else ""))
    try:
        import flash_attn

        table.add("flash-attn", flash_attn.__version__)
    except ImportError:
        table.add("flash-attn", "not installed", "packed attention runs as SDPA per document")
    from importlib.metadata import PackageNotFoundError, version

    try:
        table.add("InternEvo", version("internevo"))
    except PackageNotFoundError:
        table.add("InternEvo", "not installed")
    from rethinktiny.model import attention_path

    table.add("attention path", attention_path(device, torch.bfloat16), f"on {device} in bf16")


# ---- 2. packed attention vs SDPA ---------------------------------------------------------------------

def parity(table: Table, device: str, dry_run: bool) -> None:
    """Documents of different lengths packed into one row (the model's packed path) against each
    document alone as a batch of one (causal SDPA): logits and weight gradients agree to bf16
    precision, so attention neither crosses a boundary nor loses positions inside a document."""
    import torch

    from rethinktiny.arch.measure import random_model
    from rethinktiny.config import get_preset
    from rethinktiny.model import attention_path

    cfg = get_preset("tiny") if dry_run else get_preset("pangu_pi_1b_pro").replace(num_layers=2)
    lengths = [40, 13, 11] if dry_run else [3000, 1500, 2500, 1192]
    model = random_model(cfg, torch.device(device), torch.bfloat16).train()
    ids = torch.randint(0, cfg.vocab_size, (1, sum(lengths)), device=device)
    bounds = torch.tensor([0, *lengths], device=device).cumsum(0)
    names = ["layers.0.attention.wq.weight", "layers.0.attention.wo.weight",
             f"layers.{cfg.num_layers - 1}.feed_forward.w2.weight"]

    def gradients(losses) -> list:
        model.zero_grad(set_to_none=True)
        sum(losses).backward()
        params = dict(model.named_parameters())
        return [params[name].grad.float() for name in names]

    def loss(logits):  # any smooth function of all logits; the same sum over tokens both ways
        return logits.float().logsumexp(-1).sum() / ids.shape[1]

    packed = model(ids, cu_seqlens=bounds.to(torch.int32), indexes=torch.cat([torch.arange(n, device=device)
                                                                                for n in lengths])[None],
                   max_seqlen=max(lengths))
    packed_grads = gradients([loss(packed)])
    alone = [model(ids[:, a:b]) for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist())]
    alone_grads = gradients([loss(logits) for logits in alone])
    errors = [_relative(packed.detach().float(), torch.cat(alone, dim=1).detach().float())]
    errors += [_relative(a, b) for a, b in zip(packed_grads, alone_grads)]
    ok = max(errors) < 3e-2
    table.add(f"parity: {attention_path(device, torch.bfloat16)} vs SDPA", "ok" if ok else "FAILED",
              f"{cfg.hidden_size} wide, {cfg.num_layers} layers, documents of {', '.join(map(str, lengths))} tokens, "
              f"bf16: max rel. error logits {errors[0]:.1e}, grads {', '.join(f'{e:.1e}' for e in errors[1:])} "
              "(limit 3e-2)")


def _relative(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))


# ---- 3-6. training stages ------------------------------------------------------------------------------

def write_random_data(folder: Path, vocab: int, seq_len: int, tokens: int, seed: int = 0) -> float:
    """Random documents (lengths from seq_len / 8 to seq_len) in InternEvo's tokenized format;
    returns the token-weighted mean document length (the attention context of the FLOPs)."""
    import numpy as np

    from rethinktiny.data.tokenized import write_documents

    rng = np.random.default_rng(seed)
    lengths = []
    while sum(lengths) < tokens:
        lengths.append(int(rng.integers(max(2, seq_len // 8), seq_len + 1)))
    documents = [rng.integers(0, vocab, n).tolist() for n in lengths]
    (folder / "en").mkdir(parents=True, exist_ok=True)
    write_documents(folder / "en" / "random.bin", documents)
    return sum(n * n for n in lengths) / sum(lengths)


def write_config(raw: dict, path: Path) -> Path:
    """A config file holding `raw` (top-level names as Python literals)."""
    lines = ["import rethinktiny  # noqa: F401  registers PANGU_PI_PRO, the CPU accelerator", ""]
    lines += [f"{key} = {value!r}" for key, value in raw.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def stage_config(raw: dict, data: Path, save: Path, steps: int, resume: bool) -> dict:
    raw = json.loads(json.dumps(raw))  # a deep copy of plain literals
    raw["data"].update(train_folder=str(data), valid_folder=None, total_steps=steps, valid_every=0, min_length=0)
    raw["lr_scheduler"]["total_steps"] = steps
    raw["ckpt"].update(save_ckpt_folder=f"local:{save}", checkpoint_every=steps, auto_resume=resume,
                       oss_snapshot_freq=0, async_upload=False)
    raw["ckpt"].pop("load_ckpt_info", None)
    raw.pop("TRAIN_FOLDER", None), raw.pop("VALID_FOLDER", None), raw.pop("SAVE_CKPT_FOLDER", None)
    return raw


def llama2_config(raw: dict, use_flash_attn: bool) -> dict:
    """InternEvo's LLAMA2 entry of the same shape, dtype and checkpointing as our model's."""
    import inspect

    from rethinktiny.config import from_internevo
    from rethinktiny.internevo import api

    cfg = from_internevo(raw["model"])
    model = dict(hidden_size=cfg.hidden_size, num_layers=cfg.num_layers, num_attention_heads=cfg.num_attention_heads,
                 num_kv_attention_heads=cfg.num_kv_heads, vocab_size=cfg.vocab_size,
                 mlp_ratio=cfg.intermediate_size / cfg.hidden_size, dtype=raw["model"]["dtype"],
                 use_flash_attn=use_flash_attn, checkpoint=raw["model"].get("checkpoint", False), no_bias=True,
                 layer_norm_epsilon=cfg.norm_eps, embed_split_hidden=True, parallel_output=False, embed_grad_scale=1,
                 apply_post_layer_norm=False, norm_type="rmsnorm", num_chunks=1)
    params = inspect.signature(api.model_registry().get_module("LLAMA2")).parameters
    model.update(qk_interleaved=True) if "qk_interleaved" in params else model.update(adapt_hf=False)
    return {**raw, "model_type": "LLAMA2", "model": model}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_rank_stage(config: Path, log: Path, timeout: float) -> tuple[int, str, int | None]:
    """One rank of our training entry in a child process: (exit code, output tail, peak bytes)."""
    env = {**os.environ, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    command = [sys.executable, str(Path(__file__).resolve()), "--rank-stage", "--config", str(config)]
    try:
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)
        code, output = result.returncode, result.stdout + result.stderr
    except subprocess.TimeoutExpired as err:
        partial = err.stdout.decode(errors="replace") if isinstance(err.stdout, bytes) else (err.stdout or "")
        code, output = 124, f"{partial}\ntimed out after {timeout:.0f} s"
    log.write_text(output)
    peak = [int(line.split()[-1]) for line in output.splitlines() if line.startswith(MEMORY_TAG)]
    return code, output[-3000:], (peak[-1] if peak else None)


def rank_stage(argv: list[str]) -> int:
    """In the child: train one rank, then print its peak GPU memory."""
    import torch

    from rethinktiny.internevo.train import main

    code = main(argv)
    if torch.cuda.is_available():
        print(f"{MEMORY_TAG} {torch.cuda.max_memory_allocated()}", flush=True)
    return code


def _metrics(save: Path) -> list[dict]:
    path = save / "train_metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _failed(output: str, code: int) -> RuntimeError:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    return RuntimeError(f"exit {code}: " + (lines[-1] if lines else "no output"))


class Stages:
    """The training stages on one set of random data, sharing their folders and figures."""

    def __init__(self, args, raw: dict, work: Path, device: str) -> None:
        self.args, self.raw, self.work, self.device = args, raw, work, device
        data = raw["data"]
        self.tokens_per_step = data["micro_bsz"] * data["seq_len"] * data["micro_num"]
        self.data = work / "data"
        self.save = work / "ckpt"
        self.ours_rate: float | None = None
        self.deadline = time.time() + args.budget

    def timeout(self) -> float:
        """A stage's limit: --stage-timeout, or less when the --budget is nearly spent."""
        left = self.deadline - time.time()
        if left < 20:
            raise TimeoutError(f"skipped: {left:.0f} s of the --budget left")
        return min(self.args.stage_timeout, left)

    def prepare(self, table: Table) -> None:
        from rethinktiny.config import from_internevo

        cfg = from_internevo(self.raw["model"])
        tokens = self.tokens_per_step * (self.args.steps + 3) * 2  # enough for the resumed steps too
        self.context = write_random_data(self.data, cfg.vocab_size, self.raw["data"]["seq_len"], tokens)
        self.cfg = cfg
        table.add("random data", "ok", f"{tokens:,} tokens, mean document context {self.context:,.0f}")

    def train(self, table: Table) -> None:
        from rethinktiny.arch.memory import GB, memory_plan

        config = write_config(stage_config(self.raw, self.data, self.save, self.args.steps, False), self.work / "ours.py")
        start = time.time()
        code, output, peak = run_rank_stage(config, self.work / "ours.log", self.timeout())
        rows = _metrics(self.save)
        if code != 0 or len(rows) < self.args.steps:
            raise _failed(output, code)
        self.ours_rate = statistics.median(r["tokens_per_s"] for r in rows[self.args.warmup:])
        table.add("our trainer, 1 rank", f"{self.ours_rate:,.0f} tokens/s",
                  f"{self.args.steps} steps of {self.tokens_per_step:,} tokens, median after {self.args.warmup}; "
                  f"{time.time() - start:.0f} s with start-up; final loss {rows[-1]['loss']:.3f}")
        table.add("MFU", *self._mfu(self.ours_rate))
        plan = memory_plan(self.raw, 1)
        if peak is None:
            table.add("max_memory_allocated", "n/a", f"no GPU; plan {plan.total_bytes / GB:.2f} GB per rank")
        else:
            table.add("max_memory_allocated", f"{peak / GB:.2f} GB",
                      f"plan {plan.total_bytes / GB:.2f} GB (activations {plan.activations_bytes / GB:.2f}, logits "
                      f"{plan.logits_bytes / GB:.2f}): measured / plan {peak / plan.total_bytes:.2f}")

    def _mfu(self, rate: float) -> tuple[str, str]:
        import torch

        if not torch.cuda.is_available():
            return "n/a", "no GPU"
        name = torch.cuda.get_device_name(0)
        peak = self.args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
        if peak is None:
            return "n/a", f"unknown peak of {name}: pass --peak-tflops"
        cfg = self.cfg
        matmul = cfg.non_embedding_params() + cfg.vocab_size * cfg.hidden_size  # blocks + output head
        flops = 6 * matmul + 6 * cfg.num_layers * cfg.hidden_size * self.context  # causal attention, fwd + bwd
        return f"{100 * flops * rate / (peak * 1e12):.1f}%", f"{flops / 1e9:.2f} GFLOP/token against {peak:g} TFLOP/s"

    def resume(self, table: Table) -> None:
        steps = self.args.steps
        if not (self.save / str(steps) / "model_tp0_pp0.pt").is_file():
            raise RuntimeError(f"no step folder {self.save / str(steps)} from the training stage")
        config = write_config(stage_config(self.raw, self.data, self.save, steps + 2, True), self.work / "resume.py")
        code, output, _ = run_rank_stage(config, self.work / "resume.log", self.timeout())
        new = [r["step"] for r in _metrics(self.save)][steps:]
        if code != 0 or new[:1] != [steps + 1]:
            raise _failed(output, code) if code else RuntimeError(f"resumed steps {new}, expected {steps + 1} first")
        table.add("save and resume", "ok", f"step folder {steps} saved, a second run went on at step {new[0]} "
                                           f"to {new[-1]}")

    def llama2(self, table: Table) -> None:
        from rethinktiny.model import flash_attn_varlen_func

        flash = flash_attn_varlen_func is not None and self.device == "cuda"
        if self.device == "cuda" and not flash:
            table.add("InternEvo LLAMA2", "skipped", "flash-attn is not installed (InternEvo's packed path needs it)")
            return
        save = self.work / "llama2_ckpt"
        raw = stage_config(llama2_config(self.raw, flash), self.data, save, self.args.steps, False)
        raw["ckpt"]["enable_save_ckpt"] = False
        raw["data"]["use_packed_dataset"] = flash  # InternEvo ties the two; without flash-attn: rows of a batch
        code, output, _ = run_rank_stage(write_config(raw, self.work / "llama2.py"), self.work / "llama2.log",
                                         self.timeout())
        # the per-step figures of our StepLog: its metrics file, else its printed lines
        rates = [r["tokens_per_s"] for r in _metrics(save)]
        printed = (self.work / "llama2.log").read_text()
        rates = rates or [float(m.replace(",", "")) for m in re.findall(r"\| ([\d,]+) tokens/s", printed)]
        if code != 0 or len(rates) <= self.args.warmup:
            raise _failed(output, code)
        theirs = statistics.median(rates[self.args.warmup:])
        ratio = f"; our step time / theirs {theirs / self.ours_rate:.2f}" if self.ours_rate else ""
        table.add("InternEvo LLAMA2, 1 rank", f"{theirs:,.0f} tokens/s",
                  f"flash-attn {'on, packed' if flash else 'off (CPU), unpacked rows'}, same shape and data{ratio}")

    def resample(self, table: Table) -> None:
        steps = self.args.steps
        config = self.work / "ours.py"
        command = [sys.executable, "-m", "rethinktiny", "resample", "--config", str(config), "--ckpt",
                   str(self.save / str(steps)), "--data", str(self.data), "--dst", str(self.work / "resample"),
                   "--ratio", "0.5", "--selection-only", "--nproc-per-node", "1", "--no-progress", "--force"]
        result = subprocess.run(command, capture_output=True, text=True, timeout=self.timeout(), cwd=REPO)
        rates = [float(m.group(2)) for m in RATE_RE.finditer(result.stdout + result.stderr)]
        if result.returncode != 0 or not rates:
            raise _failed(result.stdout + result.stderr, result.returncode)
        ratio = f", {sum(rates) / self.ours_rate:.1f}x training" if self.ours_rate else ""
        table.add("resample scoring, 1 rank", f"{sum(rates):,.0f} tokens/s", f"forward only, step {steps} weights{ratio}")


def dry_run_config() -> dict:
    """A tiny CPU config (fp32, one rank) with the shipped configs' layout."""
    from rethinktiny.config import get_preset
    from rethinktiny.configfiles.export import TrainOptions, render_config
    from rethinktiny.configfiles.load import load_config_file

    text = render_config(get_preset("tiny"), TrainOptions(cpu_ranks=1, seq_len=64, micro_bsz=2, micro_num=1,
                                                           min_length=0, job_name="gpu_check_dry_run"))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "tiny.py"
        path.write_text(text)
        return load_config_file(path)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.rank_stage is not None:
        return rank_stage(args.rank_stage)
    import torch

    from rethinktiny.configfiles.load import load_config_file

    device = "cpu" if args.dry_run or not torch.cuda.is_available() else "cuda"
    args.steps = args.steps or (3 if args.dry_run else 15)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.dry_run else 3)
    table = Table()
    table.run("versions", versions, device)
    table.run("parity", parity, device, args.dry_run)
    if device == "cpu" and not args.dry_run:
        table.add("training stages", "skipped", "no GPU visible (run with --dry-run for the CPU plan)")
    else:
        raw = dry_run_config() if args.dry_run else load_config_file(args.config)
        work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="gpu_check_"))
        work.mkdir(parents=True, exist_ok=True)
        stages = Stages(args, raw, work, device)
        try:
            table.run("random data", stages.prepare)
            table.run("our trainer", stages.train)
            table.run("save and resume", stages.resume)
            table.run("InternEvo LLAMA2", stages.llama2)
            table.run("resample scoring", stages.resample)
        finally:
            if not args.out:
                shutil.rmtree(work, ignore_errors=True)
    what = "dry run on CPU, tiny shape" if args.dry_run else f"{args.config} on {device}"
    print(f"\nGPU check ({what})\n{table.render()}", flush=True)
    return 1 if any(result == "FAILED" for _, result, _ in table.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
