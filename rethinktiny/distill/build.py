"""Build a teacher cache: `python -m rethinktiny.distill.build --cache DST` is one rank.

The packed rows of the data (InternEvo's packing, rebuilt by `rethinktiny.resample.batches`) are
cut into units of `rows_per_unit` rows. Rank r of W summarises every W-th unit not yet written,
forward-only, and writes each unit as soon as it is done; ranks never communicate (as resample
scoring), so a resumed run may use another number of ranks.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from rethinktiny.distill.cache import (MANIFEST, MODES, done_units, read_cache_manifest, summary_arrays,
                                       write_cache_manifest, write_index, write_unit, context_keys)
from rethinktiny.distill.losses import sample_summary, teacher_log_probs, topk_summary
from rethinktiny.errors import UserError
from rethinktiny.resample.spec import BatchSpec

MODULE = "rethinktiny.distill.build"


def plan_cache(teacher: str, data: str, dst: Path, spec: BatchSpec, token_map: str | None, k: int, mode: str,
               temperature: float, dtype: str, rows_per_unit: int, seed: int, force: bool) -> dict:
    """Write (or check, on resume) the cache's manifest; returns it."""
    from rethinktiny.distill.section import load_kept_ids
    from rethinktiny.distill.teacher import teacher_config
    from rethinktiny.resample.batches import PackedCorpus

    if mode not in MODES:
        raise UserError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    if not 1 <= k <= 255:
        raise UserError(f"--k must be in 1..255 (counts are stored in one byte), got {k}")
    cfg = teacher_config(teacher)
    vocab = cfg.vocab_size
    if token_map is not None:
        vocab = len(load_kept_ids(token_map, cfg.vocab_size, None))
    corpus = PackedCorpus(data, spec)
    manifest = {"teacher": str(Path(teacher).resolve()), "token_map": str(Path(token_map).resolve()) if token_map
                else None, "data": str(Path(data).resolve()), "spec": spec.to_dict(), "mode": mode, "k": k,
                "temperature": float(temperature), "dtype": dtype, "seed": seed, "student_vocab": vocab,
                "teacher_vocab": cfg.vocab_size, "rows_per_unit": rows_per_unit, "num_rows": corpus.num_rows,
                "num_units": -(-corpus.num_rows // rows_per_unit)}
    write_cache_manifest(dst, manifest, force)
    return manifest


def summarise_row(model, row, kept: torch.Tensor | None, manifest: dict, generator: torch.Generator,
                  device) -> dict:
    """The stored summary of one packed row (`rethinktiny.resample.packing.PackedRow`)."""
    tokens = torch.as_tensor(row.tokens, dtype=torch.long)
    indexes = torch.as_tensor(row.indexes, dtype=torch.long)
    teacher_ids = kept[tokens] if kept is not None else tokens
    with torch.no_grad():
        logits = model(teacher_ids.to(device)[None], cu_seqlens=torch.as_tensor(row.cu_seqlens).to(device),
                       indexes=indexes.to(device))[0]
        logp, mass = teacher_log_probs(logits, kept, manifest["temperature"])
        if manifest["mode"] == "sample":
            ids, weights, at = sample_summary(logp, manifest["k"], generator)
        else:
            ids, weights, at = topk_summary(logp, manifest["k"])
    return summary_arrays(context_keys(tokens, indexes), ids, weights, at, mass, manifest["mode"],
                          manifest["student_vocab"])


def build_share(folder: Path, rank: int, world: int, device: torch.device | str = "cpu",
                progress: bool = True) -> int:
    """Summarise this rank's share of the units not yet written; returns how many."""
    import numpy as np
    from tqdm import tqdm

    from rethinktiny.distill.section import load_kept_ids
    from rethinktiny.distill.teacher import load_teacher
    from rethinktiny.dtypes import parse_dtype
    from rethinktiny.resample.batches import PackedCorpus, RowReader

    manifest = _plan(folder)
    spec = BatchSpec.from_dict(manifest["spec"])
    corpus = PackedCorpus(manifest["data"], spec)
    if corpus.num_rows != manifest["num_rows"]:
        raise UserError(f"{manifest['data']}: now packs into {corpus.num_rows} rows, the cache planned "
                        f"{manifest['num_rows']}; the data changed")
    todo = sorted(set(range(manifest["num_units"])) - done_units(folder))[rank::world]
    if not todo:
        return 0
    model = load_teacher(manifest["teacher"], parse_dtype(manifest["dtype"]), device)
    kept = (load_kept_ids(manifest["token_map"], manifest["teacher_vocab"], manifest["student_vocab"])
            if manifest["token_map"] else None)
    per_unit = manifest["rows_per_unit"]
    start, tokens = time.perf_counter(), 0
    with RowReader(corpus) as reader:
        for unit in tqdm(todo, desc=f"teacher cache ({world} rank{'s' if world > 1 else ''})", unit="unit",
                         disable=not progress or rank != 0):
            # One generator per unit: the draws do not depend on which rank or attempt made them.
            generator = torch.Generator(device=device).manual_seed(manifest["seed"] * 1_000_003 + unit)
            rows = [summarise_row(model, reader.row(r), kept, manifest, generator, device)
                    for r in range(unit * per_unit, min((unit + 1) * per_unit, corpus.num_rows))]
            write_unit(folder, unit, {name: np.concatenate([r[name] for r in rows]) for name in rows[0]})
            tokens += sum(len(r["keys"]) for r in rows)
    seconds = time.perf_counter() - start
    print(f"[rethinktiny] teacher cache rank {rank}: {len(todo)} units, {tokens} tokens in {seconds:.2f} s "
          f"({tokens / max(seconds, 1e-9):.1f} tokens/s)", flush=True)
    return len(todo)


def _plan(folder: Path) -> dict:
    import json

    return json.loads((folder / MANIFEST).read_text(encoding="utf-8"))


def run_cache_ranks(folder: Path, options, progress: bool = True) -> dict:
    """Every unit summarised by the ranks of `options` (`rethinktiny.launch.LaunchOptions`,
    resolved), then merged into the cache's index; returns the finished manifest."""
    from rethinktiny.launch import rank_command, run_ranks
    from rethinktiny.resample.worker import scoring_device

    if options.in_process:
        build_share(folder, 0, 1, scoring_device(0), progress)
    else:
        args = ["--cache", str(folder), *([] if progress else ["--no-progress"])]
        code = run_ranks(rank_command(MODULE, args, options), "teacher cache")
        if code != 0:
            raise UserError(f"teacher cache ranks failed (exit {code}); finished units are kept in {folder}, "
                            "run the command again to continue")
    manifest = read_cache_manifest(folder)
    # Here, in the launching process, once: the index has a single writer (the ranks never write it),
    # and a re-run over a finished cache keeps an index of the same units.
    write_index(folder, progress)
    return manifest


def main(argv: list[str] | None = None) -> int:
    from rethinktiny.cli.ranks import cache_rank_args
    from rethinktiny.launch import exit_with_parent
    from rethinktiny.resample.worker import rank_and_world, scoring_device

    exit_with_parent()  # a rank outlives neither torchrun nor the command that started it
    args = cache_rank_args(argv)
    rank, world, local_rank = rank_and_world()
    try:
        build_share(args.cache, rank, world, scoring_device(local_rank), args.progress)
    except UserError as err:
        print(f"[rethinktiny] teacher cache rank {rank}: error: {err}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
