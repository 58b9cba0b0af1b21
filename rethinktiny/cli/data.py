"""rethinktiny data train-tokenizer | tokenize | stats"""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)

    p = sub.add_parser("train-tokenizer", help="train a SentencePiece BPE tokenizer (byte fallback) on jsonl")
    p.add_argument("--input", required=True, help="jsonl corpus with a text field")
    p.add_argument("--dst", required=True, help="output folder (gets tokenizer.model)")
    p.add_argument("--vocab-size", type=int, required=True)
    p.add_argument("--text-key", default="text")
    p.add_argument("--user-defined-symbol", action="append", default=[], dest="symbols",
                   help="a piece never split (repeatable)")
    p.add_argument("--normalization", default="identity",
                   help="SentencePiece normalization rule: identity (default: text kept as written, "
                        "newlines and tabs included), nmt_nfkc, nfkc, nmt_nfkc_cf or nfkc_cf")
    p.add_argument("--force", action="store_true", help="replace an existing --dst")
    p.set_defaults(func=_train_tokenizer)

    p = sub.add_parser("tokenize", help="encode jsonl into InternEvo's <dst>/<type>/*.bin + .bin.meta")
    p.add_argument("--input", required=True, help="jsonl corpus")
    p.add_argument("--tokenizer", required=True,
                   help="SentencePiece model file/folder, or HF tokenizer folder (tokenizer.json)")
    p.add_argument("--dst", required=True, help="output dataset folder")
    p.add_argument("--text-key", default="text")
    p.add_argument("--type-key", default="source",
                   help="record field naming the data type sub-folder ('' for a single type)")
    p.add_argument("--no-bos", action="store_true")
    p.add_argument("--no-eos", action="store_true")
    p.add_argument("--shard-tokens", type=int, default=50_000_000)
    p.add_argument("--force", action="store_true", help="replace an existing --dst")
    p.set_defaults(func=_tokenize)

    p = sub.add_parser("stats", help="documents and tokens of an InternEvo dataset folder")
    p.add_argument("folder")
    p.add_argument("--verify", action="store_true",
                   help="read every .bin in full and check each line against its .meta row (default: sizes and "
                        "the last document only)")
    p.set_defaults(func=_stats)


def _train_tokenizer(args: argparse.Namespace) -> None:
    from rethinktiny.data.prepare import train_tokenizer

    path = train_tokenizer(args.input, args.dst, args.vocab_size, text_key=args.text_key,
                           user_defined_symbols=tuple(args.symbols), normalization=args.normalization,
                           force=args.force)
    print(f"wrote {path}")


def _tokenize(args: argparse.Namespace) -> None:
    from rethinktiny.data.prepare import tokenize_corpus

    summary = tokenize_corpus(args.input, args.tokenizer, args.dst, text_key=args.text_key,
                              type_key=args.type_key or None, add_bos=not args.no_bos,
                              add_eos=not args.no_eos, shard_tokens=args.shard_tokens, force=args.force)
    print(f"wrote {summary['documents']} documents, {summary['tokens']} tokens "
          f"({', '.join(sorted(summary['types']))}) to {args.dst}")


def _stats(args: argparse.Namespace) -> None:
    from rethinktiny.data.stats import count_tokens

    docs, tokens = count_tokens(args.folder, verify=args.verify)
    print(f"{args.folder}: {docs} documents, {tokens} tokens{' (every line verified)' if args.verify else ''}")
