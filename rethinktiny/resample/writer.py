"""The resample output folder: the chosen batches as InternEvo data, the scores, the selection.

Each chosen row is written as its document fragments, one `{"tokens": [...]}` line each, into the
file of the same relative path as its source (`<type>/<name>.bin`, so the data types stay), in
batch order. InternEvo's own loader reads the folder unchanged and packs exactly as many rows
as were chosen (each row was `packed_length` tokens). What the copy cannot keep: a fragment cut
at a row's end no longer predicts the first token of the next row (one label per cut), and
InternEvo re-shuffles documents when it packs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from rethinktiny.artifacts import write_file_atomic, write_json
from rethinktiny.data.tokenized import BinWriter
from rethinktiny.resample.batches import PackedCorpus, RowReader

SELECTION_FORMAT = "rethinktiny.resample/1"


def rows_by_file(corpus: PackedCorpus, batches: np.ndarray, selected: np.ndarray) -> dict[int, np.ndarray]:
    """file index -> global rows (int64) of the chosen batches in that file, in batch order."""
    rows = np.asarray(batches[np.asarray(selected, dtype=np.int64)]).reshape(-1)
    files = np.searchsorted(corpus.row_starts, rows, side="right") - 1
    order = np.argsort(files, kind="stable")  # stable: batch order inside each file
    indexes, starts = np.unique(files[order], return_index=True)
    return {int(i): part for i, part in zip(indexes, np.split(rows[order], starts[1:]))}


def write_selected_data(corpus: PackedCorpus, batches: np.ndarray, selected: np.ndarray, dst: Path,
                        parts: Path, progress: bool = True, workers: int = 1) -> dict:
    """Write the chosen batches' rows under `dst` in InternEvo's format; returns counts.

    Resumable: each data file is written whole into `parts` with a `.done` marker beside it (its
    counts); a rerun after a crash skips the files already done (for the same selection). Files
    are independent, so `workers` processes write them at once. The parts are then linked into
    `dst` (copied across file systems), so they stay until the caller removes `parts`.

    Args:
        corpus: the scored data.
        batches: [num_batches, rows_per_batch] global rows (`corpus.batches()`).
        selected: chosen batch numbers.
        dst: output folder (the type sub-folders are created here).
        parts: where finished files are kept until the output is complete (outside `dst`).
        progress: show a progress bar.
        workers: processes writing files at once (more than 1 needs a corpus opened from its index).
    """
    from tqdm import tqdm

    parts = _parts_folder(parts, selected)
    for packed in corpus.files:  # keep every data type, even one with no chosen row
        (dst / packed.relpath).parent.mkdir(parents=True, exist_ok=True)
    grouped = rows_by_file(corpus, batches, selected)
    todo = [i for i in sorted(grouped) if not (_done(parts, corpus.files[i].relpath).is_file()
                                               and (parts / corpus.files[i].relpath).is_file())]
    with tqdm(total=len(selected) * batches.shape[1], desc="writing rows", unit="row", disable=not progress) as bar:
        bar.update(sum(len(grouped[i]) for i in grouped if i not in todo))
        if workers > 1 and len(todo) > 1 and corpus.index is not None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            jobs = [(str(corpus.index), i, grouped[i], str(parts)) for i in todo]
            # fork: the children only read the index and write files (no torch, no threads)
            with ProcessPoolExecutor(min(workers, len(todo)), mp_context=multiprocessing.get_context("fork")) as pool:
                for rows in pool.map(_write_part_job, jobs):
                    bar.update(rows)
        else:
            with RowReader(corpus) as reader:
                for i in todo:
                    bar.update(_write_part(reader, i, grouped[i], parts))
    counts = [json.loads(_done(parts, corpus.files[i].relpath).read_text()) for i in sorted(grouped)]
    for index in sorted(grouped):
        _link_part(parts, dst, corpus.files[index].relpath)
    return {key: sum(c[key] for c in counts) for key in ("documents", "tokens", "fragments_below_min_length")}


def _done(parts: Path, relpath: str) -> Path:
    return parts / f"{relpath}.done"


def _write_part(reader: RowReader, index: int, rows: np.ndarray, parts: Path) -> int:
    """Write file `index`'s chosen rows into `parts`, then its done marker; returns the rows."""
    relpath, min_length, short = reader.corpus.files[index].relpath, reader.corpus.spec.min_length, 0
    with BinWriter(parts / relpath) as writer:  # atomic: a crash leaves no half file under this name
        for row in rows.tolist():
            for _, fragment in reader.documents(row):
                writer.write(fragment)
                short += len(fragment) < min_length
    write_json(_done(parts, relpath), {"documents": writer.num_documents, "tokens": writer.num_tokens,
                                       "fragments_below_min_length": short})
    return len(rows)


def _write_part_job(job: tuple[str, int, np.ndarray, str]) -> int:
    """`_write_part` in a worker process, on the corpus index."""
    index_dir, index, rows, parts = job
    with RowReader(PackedCorpus.open_index(index_dir)) as reader:
        return _write_part(reader, index, rows, Path(parts))


def _parts_folder(parts: Path, selected: np.ndarray) -> Path:
    """`parts`, emptied first when it holds parts of another selection."""
    digest = hashlib.sha256(npy_bytes(np.asarray(selected, dtype=np.int64))).hexdigest()
    marker = parts / "selection.sha256"
    if marker.is_file() and marker.read_text() != digest:
        shutil.rmtree(parts)
    if not marker.is_file():
        parts.mkdir(parents=True, exist_ok=True)
        write_file_atomic(marker, digest)
    return parts


def _link_part(parts: Path, dst: Path, relpath: str) -> None:
    for suffix in ("", ".meta"):
        source, target = parts / f"{relpath}{suffix}", dst / f"{relpath}{suffix}"
        try:
            os.link(source, target)
        except OSError:  # another file system
            shutil.copyfile(source, target)


def selection_record(corpus: PackedCorpus, num_batches: int, selected: np.ndarray, selected_bytes: bytes) -> dict:
    """selection.json: what a loader needs to find the chosen batches in the original data."""
    return {
        "format": SELECTION_FORMAT,
        "data": str(corpus.folder.resolve()),
        "spec": corpus.spec.to_dict(),
        "files": [[path, rows] for path, rows in corpus.file_rows()],
        "num_rows": corpus.num_rows,
        "num_batches": int(num_batches),
        "num_selected": int(len(selected)),
        "selected_sha256": hashlib.sha256(selected_bytes).hexdigest(),
    }


def npy_bytes(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def write_scores_and_selection(folder: Path, corpus: PackedCorpus, losses: np.ndarray, selected: np.ndarray,
                               scored: np.ndarray | None = None, reference: np.ndarray | None = None) -> None:
    """losses.npy, selected.npy, selection.json and losses.png in `folder`; scored.npy when only a
    subset was scored (`losses` is nan elsewhere); reference_losses.npy with a reference model.

    Args:
        folder: the output folder.
        corpus: the scored data.
        losses: float64 per batch under the frozen model.
        selected: chosen batch numbers.
        scored: the batches scored, when not all were.
        reference: float64 per batch under the reference model.
    """
    selected_bytes = npy_bytes(selected.astype(np.int64))
    write_file_atomic(folder / "losses.npy", npy_bytes(losses.astype(np.float64)))
    if reference is not None:
        write_file_atomic(folder / "reference_losses.npy", npy_bytes(reference.astype(np.float64)))
    if scored is not None:
        write_file_atomic(folder / "scored.npy", npy_bytes(scored.astype(np.int64)))
    write_file_atomic(folder / "selected.npy", selected_bytes)
    write_json(folder / "selection.json", selection_record(corpus, len(losses), selected, selected_bytes))
    plot_losses(losses if scored is None else losses[scored], losses[selected], folder / "losses.png")


def plot_losses(losses: np.ndarray, chosen: np.ndarray, path: Path) -> None:
    """Histogram of the finite losses of the scored batches against those of the chosen ones."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finite = np.isfinite(losses)
    values = losses[finite]
    low, high = float(values.min()), float(values.max())
    bins = np.linspace(low - 0.5, high + 0.5, 41) if low == high else np.linspace(low, high, 41)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(values, bins=bins, alpha=0.5, label=f"all batches ({len(values)})")
    ax.hist(chosen, bins=bins, alpha=0.7, label=f"selected ({len(chosen)})")
    ax.set_xlabel("batch loss under the frozen model")
    ax.set_ylabel("batches")
    skipped = int((~finite).sum())
    ax.set_title("Batch losses" + (f" ({skipped} non-finite left out)" if skipped else ""))
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
