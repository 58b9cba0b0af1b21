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
from collections import defaultdict
from pathlib import Path

import numpy as np

from rethinktiny.artifacts import write_file_atomic, write_json
from rethinktiny.data.tokenized import BinWriter
from rethinktiny.resample.batches import PackedCorpus, RowReader

SELECTION_FORMAT = "rethinktiny.resample/1"


def rows_by_file(corpus: PackedCorpus, batches: np.ndarray, selected: np.ndarray) -> dict[int, list[int]]:
    """file index -> global rows of the chosen batches in that file, in batch order."""
    grouped: dict[int, list[int]] = defaultdict(list)
    for batch in selected:
        for row in batches[batch]:
            grouped[corpus.locate(int(row))[0]].append(int(row))
    return dict(grouped)


def write_selected_data(corpus: PackedCorpus, batches: np.ndarray, selected: np.ndarray, dst: Path,
                        progress: bool = True) -> dict:
    """Write the chosen batches' rows under `dst` in InternEvo's format; returns counts.

    Args:
        corpus: the scored data.
        batches: [num_batches, rows_per_batch] global rows (`batch_rows`).
        selected: chosen batch numbers.
        dst: output folder (the type sub-folders are created here).
        progress: show a progress bar.
    """
    from tqdm import tqdm

    for packed in corpus.files:  # keep every data type, even one with no chosen row
        (dst / packed.relpath).parent.mkdir(parents=True, exist_ok=True)
    grouped = rows_by_file(corpus, batches, selected)
    documents = tokens = short = 0
    min_length = corpus.spec.min_length
    with RowReader(corpus) as reader, tqdm(total=len(selected) * batches.shape[1], desc="writing rows",
                                           unit="row", disable=not progress) as bar:
        for index in sorted(grouped):
            with BinWriter(dst / corpus.files[index].relpath) as writer:
                for row in grouped[index]:
                    for _, fragment in reader.documents(row):
                        writer.write(fragment)
                        short += len(fragment) < min_length
                    bar.update(1)
            documents, tokens = documents + writer.num_documents, tokens + writer.num_tokens
    return {"documents": documents, "tokens": tokens, "fragments_below_min_length": short}


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


def write_scores_and_selection(folder: Path, corpus: PackedCorpus, losses: np.ndarray, selected: np.ndarray) -> None:
    """losses.npy, selected.npy, selection.json and losses.png in `folder`."""
    selected_bytes = npy_bytes(selected.astype(np.int64))
    write_file_atomic(folder / "losses.npy", npy_bytes(losses.astype(np.float64)))
    write_file_atomic(folder / "selected.npy", selected_bytes)
    write_json(folder / "selection.json", selection_record(corpus, len(losses), selected, selected_bytes))
    plot_losses(losses, selected, folder / "losses.png")


def plot_losses(losses: np.ndarray, selected: np.ndarray, path: Path) -> None:
    """Histogram of the finite batch losses: all batches against the chosen ones."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finite = np.isfinite(losses)
    values, chosen = losses[finite], losses[selected]
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
