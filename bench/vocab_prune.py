"""Pruning quality: tokens needed on held-out text and dead pieces, the seed's step3 against ours.

    python bench/vocab_prune.py --tokenizer ../shared/data/tokenizers/internlm_103k.model \
        --corpus ../shared/data/corpus/corpus.jsonl [--sizes 8000 16000 32000 48000]

Every `--heldout-every`-th document is held out; token counts come from the rest, encoded with the
original tokenizer. For each size, in the same run:
  * seed — the seed's step3 algorithm, reimplemented: keep every piece shaped `<...>` or `[...]`,
    then the most frequent pieces (ties in id order) until the size is reached;
  * ours — `rethinktiny.vocab.prune.prune_sentencepiece` (non-normal pieces by type, then frequent pieces
    with their merge paths).
Reported: tokens needed for the held-out text relative to the original tokenizer, and dead pieces
(kept normal pieces that do not encode their own text to themselves). Writes a PNG.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rethinktiny.vocab.prune import build_pruned_proto, prune_sentencepiece  # noqa: E402
from rethinktiny.vocab.reach import dead_pieces  # noqa: E402
from rethinktiny.vocab.spmodel import NORMAL, load_model_proto, processor_from_proto  # noqa: E402

SHARED = REPO.parent / "shared" / "data"


def seed_keep(proto, counts: np.ndarray, vocab_num: int) -> list[int]:
    """The seed's step3 selection: `<...>`/`[...]`-shaped pieces, then top pieces by count."""
    def special(piece: str) -> bool:
        return len(piece) > 2 and ((piece[0] == "<" and piece[-1] == ">") or (piece[0] == "[" and piece[-1] == "]"))

    kept = {i for i, p in enumerate(proto.pieces) if special(p.piece)}
    for i in sorted(range(len(proto.pieces)), key=lambda i: -int(counts[i])):  # stable: ties by id
        if len(kept) >= vocab_num:
            break
        kept.add(i)
    return sorted(kept)


def split_corpus(corpus: Path, every: int) -> tuple[list[str], list[str]]:
    texts = [json.loads(line)["text"] for line in open(corpus, encoding="utf-8")]
    held = [t for i, t in enumerate(texts) if i % every == 0]
    train = [t for i, t in enumerate(texts) if i % every != 0]
    return train, held


def tokens_needed(proto, texts: list[str]) -> int:
    return sum(map(len, processor_from_proto(proto).encode(texts)))


def measure(proto, counts: np.ndarray, held: list[str], size: int) -> dict:
    seed = build_pruned_proto(proto, seed_keep(proto, counts, size))
    start = time.perf_counter()
    ours = prune_sentencepiece(proto, counts, size).proto
    seconds = time.perf_counter() - start
    normal = lambda p: sum(1 for piece in p.pieces if piece.type == NORMAL)  # noqa: E731
    return {"size": size, "prune_seconds": seconds,
            "seed_tokens": tokens_needed(seed, held), "ours_tokens": tokens_needed(ours, held),
            "seed_dead": len(dead_pieces(seed)), "seed_normal": normal(seed),
            "ours_dead": len(dead_pieces(ours)), "ours_normal": normal(ours)}


SEED_SERIES = (("seed", "tab:gray", "seed step3 (top-k + <...> shapes)"),
               ("ours", "tab:blue", "rethinktiny prune (types + merge paths)"))


def plot(rows: list[dict], base: int, png: Path, title: str, series=SEED_SERIES,
         note: tuple[str, str] = ("seed", "dead")) -> None:
    """Extra held-out tokens (%) per vocabulary size, one line per (key, colour, label) of `series`;
    the `note` series' points carry their `<key>_<word>` count (dead or unreachable pieces)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r["size"] / 1000 for r in rows]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, color, label in series:
        ax.plot(sizes, [100 * (r[f"{name}_tokens"] / base - 1) for r in rows], "o-", color=color, label=label)
    key, word = note
    for r, s in zip(rows, sizes):
        ax.annotate(f"{r[f'{key}_{word}']} {word}", (s, 100 * (r[f"{key}_tokens"] / base - 1)), fontsize=7,
                    textcoords="offset points", xytext=(4, 4), color="tab:gray")
    ax.set_xlabel("vocabulary size (thousands)")
    ax.set_ylabel("extra tokens on held-out text (%)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", type=Path, default=SHARED / "tokenizers" / "internlm_103k.model")
    parser.add_argument("--corpus", type=Path, default=SHARED / "corpus" / "corpus.jsonl")
    parser.add_argument("--sizes", type=int, nargs="+", default=[8000, 16000, 32000, 48000])
    parser.add_argument("--heldout-every", type=int, default=10, help="hold out every n-th document")
    parser.add_argument("--png", type=Path, default=Path("bench_vocab_prune.png"))
    args = parser.parse_args()
    proto = load_model_proto(args.tokenizer)
    train, held = split_corpus(args.corpus, args.heldout_every)
    original = processor_from_proto(proto)
    counts = np.bincount(np.concatenate([np.asarray(ids, dtype=np.int64) for ids in original.encode(train)]),
                         minlength=len(proto.pieces))
    base = tokens_needed(proto, held)
    print(f"{args.tokenizer.name}: {len(proto.pieces)} pieces, {len(dead_pieces(proto))} dead in the original; "
          f"counts from {len(train)} documents ({int(counts.sum()):,} tokens); held out {len(held)} documents "
          f"({base:,} tokens with the original)")
    print(f"{'size':>6} | {'seed tokens':>11} {'seed dead':>17} | {'ours tokens':>11} {'ours dead':>9} | prune s")
    rows = []
    for size in args.sizes:
        r = measure(proto, counts, held, size)
        rows.append(r)
        print(f"{size:>6} | {r['seed_tokens'] / base:>11.4f} {r['seed_dead']:>6} of {r['seed_normal']:>6} normal | "
              f"{r['ours_tokens'] / base:>11.4f} {r['ours_dead']:>9} | {r['prune_seconds']:.1f}")
    better = all(r["ours_tokens"] < r["seed_tokens"] and r["ours_dead"] == 0 for r in rows)
    print(f"ours needs fewer tokens than the seed at every size with 0 dead pieces: {'yes' if better else 'NO'}")
    plot(rows, base, args.png, f"{args.tokenizer.name} on held-out {args.corpus.name}")
    print(f"wrote {args.png}")
    return 0 if better else 1


if __name__ == "__main__":
    sys.exit(main())
