"""`rethinktiny multiround`: round 1 trains on all data; each later round scores every batch with
the previous round's final checkpoint, keeps the hard ones (`resample_data`) and continues
training from that checkpoint on them.

Each round trains with `start_finetune.py`'s launcher (`rethinktiny.launch.train`, InternEvo's
real trainer), saving to `<work>/round<k>/ckpt`; a later round loads the previous round's model
weights (a fresh optimizer and learning-rate schedule over the round's steps). Two ways to feed a
later round:
- "sampler" (default): only the selection is written and the round trains on the original folder
  with `data.sampler="multi_round"` (InternEvo reads the chosen batches; nothing is copied);
- "copy": the chosen batches are written to `<work>/round<k>/data` and the round trains on that
  folder (with `data.min_length=0`: the copy's row-end fragments are real data however short).
A finished round leaves `round.json`; a re-run skips finished rounds and reuses a finished resample.
On several nodes every node's launcher runs this: all train and score, node 0 alone writes
(selection, `round.json`, `summary.json`); the others wait for what node 0 wrote.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from rethinktiny.artifacts import write_json
from rethinktiny.errors import UserError
from rethinktiny.configfiles.training import TrainingConfig
from rethinktiny.launch import LaunchOptions, is_writer_node, train

MODES = ("sampler", "copy")


@dataclass
class RoundPlan:
    """The settings every round shares."""

    config: Path
    training: TrainingConfig  # loaded with `overrides`
    work: Path
    data: str
    total_steps: int
    has_lr_scheduler: bool
    overrides: list[str]
    launch: LaunchOptions
    mode: str = "sampler"
    seed: int = 0
    temperature: float = 1.0
    batch_ranks: int = 1
    ratio: float | None = None
    num_batches: int | None = None
    round_steps: list[int] = field(default_factory=list)
    progress: bool = True
    ignore_memory_plan: bool = False
    max_batches: int | None = None  # score a seeded subset of this many batches each round
    fraction: float | None = None
    reference: str | None = None  # draw by excess loss over this fixed model (e.g. the teacher)
    floor: float | None = None


@dataclass
class RoundResult:
    round: int
    steps: int
    train_data: str
    checkpoint: str
    first_loss: float | None
    last_loss: float | None
    num_batches: int | None = None
    num_selected: int | None = None
    mean_loss_all: float | None = None
    mean_loss_selected: float | None = None
    seconds: float = 0.0


def round_overrides(plan: RoundPlan, save: Path, steps: int, extra: Sequence[str]) -> list[str]:
    """The `--set` items one round adds to the config's."""
    sets = [f"ckpt.save_ckpt_folder={'local:' + str(save)!r}", f"data.total_steps={steps}", "ckpt.auto_resume=False",
            *extra]
    if plan.has_lr_scheduler:  # the config computed it from its own total_steps
        sets.append(f"lr_scheduler.total_steps={steps}")
    return sets


def train_round(plan: RoundPlan, number: int, steps: int, extra: Sequence[str]) -> Path:
    """Run one round's training; returns its final checkpoint (step folder)."""
    from rethinktiny.checkpoint import find_step_folder

    save = plan.work / f"round{number}" / "ckpt"
    print(f"[rethinktiny] multiround: round {number}: training {steps} steps -> {save}", flush=True)
    code = train(plan.training, plan.launch, seed=plan.seed, extra_overrides=round_overrides(plan, save, steps, extra),
                 ignore_memory_plan=plan.ignore_memory_plan)
    if code != 0:
        raise UserError(f"round {number}: training failed (exit {code}); see the output above")
    return find_step_folder(save)


def _losses(save: Path) -> tuple[float | None, float | None]:
    path = save / "train_metrics.jsonl"
    if not path.is_file():
        return None, None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return (rows[0]["loss"], rows[-1]["loss"]) if rows else (None, None)


def first_round(plan: RoundPlan) -> RoundResult:
    steps = plan.round_steps[0] if plan.round_steps else plan.total_steps
    start = time.time()
    checkpoint = train_round(plan, 1, steps, [f"data.train_folder={plan.data!r}"])
    first, last = _losses(checkpoint.parent)
    return RoundResult(1, steps, plan.data, str(checkpoint), first, last, seconds=round(time.time() - start, 1))


def _round_steps(plan: RoundPlan, number: int, kept_fraction: float) -> int:
    if len(plan.round_steps) >= number:
        return plan.round_steps[number - 1]
    first = plan.round_steps[0] if plan.round_steps else plan.total_steps
    return max(1, round(first * kept_fraction))  # one pass over the kept batches, as round 1 over all


def _scoring_options(plan: RoundPlan) -> dict:
    """The plan's subset and reference options for `resample_data` (its own defaults where unset)."""
    given = dict(max_batches=plan.max_batches, fraction=plan.fraction, reference=plan.reference, floor=plan.floor)
    return {key: value for key, value in given.items() if value is not None}


def later_round(plan: RoundPlan, number: int, previous: RoundResult) -> RoundResult:
    """Score with the previous checkpoint, resample, train from it on the chosen batches."""
    from rethinktiny.resample.run import resample_data

    start = time.time()
    out = plan.work / f"round{number}" / ("data" if plan.mode == "copy" else "selection")
    if not (out / "manifest.json").is_file():  # a finished resample is reused on a re-run
        resample_data(plan.config, previous.checkpoint, out, data=plan.data, ratio=plan.ratio,
                      num_batches=plan.num_batches, seed=plan.seed + number, temperature=plan.temperature,
                      batch_ranks=plan.batch_ranks, copy_data=plan.mode == "copy", overrides=plan.overrides,
                      launch=plan.launch, force=True, progress=plan.progress, **_scoring_options(plan))
    summary = json.loads(_written_by_node0(out / "manifest.json", plan).read_text())["summary"]
    steps = _round_steps(plan, number, summary["num_selected"] / summary["num_batches"])
    info = dict(path="local:" + previous.checkpoint, content=("model",), ckpt_type="internevo")
    load = f"ckpt.load_ckpt_info={info!r}"
    if plan.mode == "copy":
        extra = [f"data.train_folder={str(out)!r}", "data.min_length=0"]
    else:
        extra = [f"data.train_folder={plan.data!r}", "data.sampler='multi_round'",
                 f"data.selected_batches={str(out / 'selected.npy')!r}"]
    checkpoint = train_round(plan, number, steps, [load, *extra])
    first, last = _losses(checkpoint.parent)
    return RoundResult(number, steps, str(out if plan.mode == "copy" else plan.data), str(checkpoint), first, last,
                       summary["num_batches"], summary["num_selected"], summary["mean_loss_all"],
                       summary["mean_loss_selected"], round(time.time() - start, 1))


def _written_by_node0(path: Path, plan: RoundPlan) -> Path:
    """`path` once it exists: on node 0 at once, on another node after node 0 wrote it (shared folder)."""
    deadline = time.monotonic() + plan.launch.rdzv_timeout
    while not path.is_file():
        if is_writer_node(plan.launch) or time.monotonic() > deadline:
            raise UserError(f"{path}: not written" + ("" if is_writer_node(plan.launch) else
                            f" by node 0 within {plan.launch.rdzv_timeout} s; is --work on a shared file system?"))
        time.sleep(1)
    return path


def run_rounds(plan: RoundPlan, rounds: int) -> list[RoundResult]:
    """Rounds 1..`rounds`, skipping those a previous run finished; node 0 writes `round.json`."""
    results: list[RoundResult] = []
    for number in range(1, rounds + 1):
        done = plan.work / f"round{number}" / "round.json"
        if done.is_file():
            results.append(RoundResult(**json.loads(done.read_text())))
            continue
        result = first_round(plan) if number == 1 else later_round(plan, number, results[-1])
        if is_writer_node(plan.launch):
            write_json(done, asdict(result))
        results.append(result)
    return results


def _check_amount(rounds: int, ratio: float | None, num_batches: int | None) -> None:
    from rethinktiny.resample.sampling import num_to_select

    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise UserError(f"--rounds must be a positive integer, got {rounds!r}")
    if rounds > 1:
        num_to_select(max(num_batches or 1, 1), ratio, num_batches)  # range checks before round 1 trains


def make_plan(config: str | os.PathLike, rounds: int, ratio: float | None = None, num_batches: int | None = None,
              work: str | os.PathLike | None = None, data: str | None = None, mode: str = "sampler", seed: int = 0,
              temperature: float = 1.0, batch_ranks: int = 1, round_steps: Sequence[int] = (),
              overrides: Sequence[str] = (), launch: LaunchOptions | None = None, progress: bool = True,
              allow_unknown_keys: bool = False, ignore_memory_plan: bool = False, max_batches: int | None = None,
              fraction: float | None = None, reference: str | None = None, floor: float | None = None) -> RoundPlan:
    """Check the arguments and the config before anything trains; see `multiround` for them."""
    from rethinktiny.data.tokenized import require_bin_files
    from rethinktiny.resample.sampling import check_temperature

    _check_amount(rounds, ratio, num_batches)
    check_temperature(temperature)
    if mode not in MODES:
        raise UserError(f"--mode must be one of {MODES}, got {mode!r}")
    if any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in round_steps) or len(round_steps) > rounds:
        raise UserError(f"--round-steps needs at most {rounds} positive integers, got {list(round_steps)}")
    training = TrainingConfig.from_file(config, overrides, allow_unknown_keys=allow_unknown_keys)
    loaded = training.raw
    data = data or loaded.get("data", {}).get("train_folder")
    if not data:
        raise UserError(f"{config}: no data.train_folder; pass --data")
    require_bin_files(data, need_meta=True)  # every round trains on it
    total_steps = loaded.get("data", {}).get("total_steps")
    if not isinstance(total_steps, int) or total_steps < 1:
        raise UserError(f"{config}: data.total_steps must be a positive integer, got {total_steps!r}")
    work = Path(work) if work else Path("outputs") / "multiround" / Path(config).stem
    return RoundPlan(config=Path(config), training=training, work=work, data=str(data), total_steps=total_steps,
                     has_lr_scheduler=isinstance(loaded.get("lr_scheduler"), dict), overrides=list(overrides),
                     launch=launch or LaunchOptions.from_env(), mode=mode, seed=seed, temperature=temperature,
                     batch_ranks=batch_ranks, ratio=ratio, num_batches=num_batches, round_steps=list(round_steps),
                     progress=progress, ignore_memory_plan=ignore_memory_plan, max_batches=max_batches,
                     fraction=fraction, reference=None if reference is None else str(reference), floor=floor)


def multiround(config: str | os.PathLike, rounds: int, ratio: float | None = None, num_batches: int | None = None,
               **options) -> list[RoundResult]:
    """Train `rounds` rounds; round k >= 2 trains on the batches the round k-1 model finds hardest.

    Args:
        config: InternEvo config file (its data.train_folder is the full data; its total_steps
            round 1's steps).
        rounds: number of rounds (>= 1).
        ratio: fraction of batches each later round keeps, in (0, 1]; or give `num_batches`.
        num_batches: N0, batches each later round keeps.
        **options: `make_plan`'s keywords: work (output folder, default outputs/multiround/<config
            name>), data, mode ("sampler", the default, or "copy"), seed, temperature, batch_ranks, round_steps
            (steps per round; default: the config's total_steps, then that times the kept
            fraction), overrides (`--set` items for every round), launch, progress,
            allow_unknown_keys (keep config keys nobody reads), ignore_memory_plan, max_batches /
            fraction (score a seeded subset each round), reference / floor (draw by the excess loss
            over a fixed reference model, as `resample --reference`).
    """
    plan = make_plan(config, rounds, ratio, num_batches, **options)
    results = run_rounds(plan, rounds)
    if is_writer_node(plan.launch):
        write_json(plan.work / "summary.json", [asdict(r) for r in results])
    else:
        print(f"[rethinktiny] multiround: node {plan.launch.node_rank} done; node 0 writes {plan.work}", flush=True)
    return results


def summary_table(results: Sequence[RoundResult]) -> str:
    """One line per round: steps, data, kept batches and their mean loss, first/last training loss."""
    def fmt(value, spec=".4f"):
        return "-" if value is None else format(value, spec)

    lines = [f"{'round':>5} {'steps':>6} {'kept/batches':>14} {'score all':>10} {'score kept':>10} "
             f"{'loss first':>10} {'loss last':>10} {'seconds':>8}"]
    for r in results:
        kept = "all" if r.num_batches is None else f"{r.num_selected}/{r.num_batches}"
        lines.append(f"{r.round:>5} {r.steps:>6} {kept:>14} {fmt(r.mean_loss_all):>10} {fmt(r.mean_loss_selected):>10} "
                     f"{fmt(r.first_loss):>10} {fmt(r.last_loss):>10} {r.seconds:>8.1f}")
    return "\n".join(lines)
