"""rethinktiny vocab count | merge | prune | inspect"""

from __future__ import annotations

import argparse
import json


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)

    p = sub.add_parser("count", help="count token ids of InternEvo .bin files, one result per file")
    p.add_argument("--src", required=True, help="tokenized data folder (searched recursively, links followed)")
    p.add_argument("--dst", required=True, help="result folder; unchanged files of an earlier run are skipped")
    p.add_argument("--process-num", "--process_num", type=int, default=None,
                   dest="process_num", help="parallel workers (threads) (default: the CPUs this process may use: "
                                            "affinity, SLURM_CPUS_PER_TASK, cgroup quota)")
    p.add_argument("--strict", action="store_true", help="a malformed line is an error")
    p.add_argument("--shard", default="0/1", metavar="I/N",
                   help="count only shard I of N: files I, I+N, I+2N, ... of the sorted .bin list (one --dst per "
                        "shard; `vocab merge --src` each shard's folder)")
    p.add_argument("--force", action="store_true",
                   help="recount files even when their result is current; replace a --dst holding another shard's "
                        "or tokenizer's count")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer the data was made with (SentencePiece model, HF tokenizer.json or folder): ids "
                        "outside it are an error, its size is recorded for `vocab prune` to check")
    p.set_defaults(func=count_command)

    p = sub.add_parser("merge", help="sum count results into total_token_freq.json ({\"<id>\": count})")
    p.add_argument("--src", required=True, action="append",
                   help="result folder of `vocab count` (or of the seed's step1); repeat for each shard of a "
                        "`vocab count --shard I/N` set (all N are required)")
    p.add_argument("--dst", required=True, help="output JSON file")
    p.add_argument("--force", action="store_true", help="replace an existing --dst")
    p.set_defaults(func=merge_command)

    p = sub.add_parser("prune", help="keep the most frequent pieces with their merge paths, no dead pieces")
    p.add_argument("--tokenizer", required=True,
                   help="SentencePiece BPE model or folder with tokenizer.model; or a byte-level BPE tokenizer.json "
                        "or Hugging Face folder holding one")
    p.add_argument("--counts", required=True, help="token frequency JSON from `vocab merge`")
    p.add_argument("--vocab-num", "--vocab_num", type=int, required=True, dest="vocab_num",
                   help="pieces in the result, special and byte pieces included")
    p.add_argument("--dst", required=True, help="output folder")
    p.add_argument("--preset", default="pangu_pi_1b_pro",
                   help="model preset for the embedding-share figures in report.json")
    p.add_argument("--force", action="store_true", help="replace an existing --dst")
    p.set_defaults(func=prune_command)

    p = sub.add_parser("inspect", help="tokens per character, coverage, coverage-vs-size PNG")
    p.add_argument("tokenizer", help="SentencePiece model, or folder with tokenizer.model")
    p.add_argument("--text", required=True, help=".jsonl (field --text-key) or plain text file")
    p.add_argument("--text-key", default="text")
    p.add_argument("--png", default="vocab_coverage.png", help="coverage plot to write ('' for none)")
    p.add_argument("--force", action="store_true", help="overwrite an existing --png")
    p.set_defaults(func=inspect_command)


def count_command(args: argparse.Namespace) -> None:
    from rethinktiny.vocab.count import count_folder, parse_shard

    shard = parse_shard(getattr(args, "shard", "0/1"))  # the seed script has no --shard or --tokenizer
    summary = count_folder(args.src, args.dst, process_num=args.process_num, strict=args.strict,
                           force=args.force, tokenizer=getattr(args, "tokenizer", None), shard=shard)
    part = f" (shard {shard[0]}/{shard[1]})" if shard[1] > 1 else ""
    print(f"counted {summary.tokens} tokens in {summary.documents} documents from {summary.files} file(s){part} "
          f"({summary.skipped} unchanged since an earlier run) -> {args.dst}")
    if summary.problems:
        kinds = [f"{n} {what}" for n, what in ((summary.malformed_lines, "malformed line(s) skipped"),
                                               (summary.meta_mismatches, "line(s) counted whose token count differs "
                                                                         "from the .meta index"),
                                               (summary.index_problems, ".meta row problem(s)")) if n]
        print(f"warning: {'; '.join(kinds)}; first: {summary.first_malformed} "
              f"(listed in the result files; --strict makes this an error)")


def merge_command(args: argparse.Namespace) -> None:
    from rethinktiny.vocab.sum_counts import merge_counts

    total = merge_counts(args.src, args.dst, force=args.force)
    print(f"wrote {args.dst}: {int(total.sum())} tokens, {int((total > 0).sum())} distinct ids")


def prune_command(args: argparse.Namespace) -> None:
    from rethinktiny.vocab.compact import describe_prune, prune_vocab

    report = prune_vocab(args.tokenizer, args.counts, args.vocab_num, args.dst, preset=args.preset or None,
                         force=args.force)
    print(describe_prune(args.dst, report))


def inspect_command(args: argparse.Namespace) -> None:
    from rethinktiny.artifacts import check_not_an_input
    from rethinktiny.vocab.coverage import inspect_tokenizer

    if args.png:
        check_not_an_input(args.png, {"--text": args.text, "TOKENIZER": args.tokenizer}, flag="--png")
    summary = inspect_tokenizer(args.tokenizer, args.text, png=args.png or None, text_key=args.text_key,
                                force=args.force)
    print(json.dumps(summary, indent=2))
