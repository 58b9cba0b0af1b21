"""rethinktiny eval ppl"""

from __future__ import annotations

import argparse

from rethinktiny.dtypes import dtype_argument, dtype_help


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)

    p = sub.add_parser("ppl", help="held-out loss and perplexity on a jsonl text file")
    p.add_argument("--model", required=True,
                   help="HF model folder, or InternEvo checkpoint folder (step folder or its parent)")
    p.add_argument("--data", required=True, help="jsonl file with one document per line")
    p.add_argument("--config", help="InternEvo config file for a checkpoint without model_config")
    p.add_argument("--tokenizer", help="SentencePiece model file/folder, or HF tokenizer folder "
                                       "(default: the model folder's)")
    p.add_argument("--text-key", default="text")
    p.add_argument("--seq-len", type=int, default=2048, help="most tokens predicted per window")
    p.add_argument("--batch-size", type=int, default=4, help="windows per forward pass")
    p.add_argument("--max-docs", type=int, default=None, help="score only the first N documents")
    p.add_argument("--dtype", default="float32", type=dtype_argument(), help=f"model dtype: {dtype_help()}")
    p.add_argument("--no-bos", action="store_true", help="do not prepend <s> to each document")
    p.add_argument("--no-eos", action="store_true", help="do not append </s> to each document")
    p.add_argument("--out", help="also write the result as JSON to this file (never one of the inputs)")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    p.set_defaults(func=_ppl)


def _ppl(args: argparse.Namespace) -> None:
    from rethinktiny.artifacts import check_output_file, write_json
    from rethinktiny.evaluate import evaluate_perplexity

    if args.out:  # before the model is loaded: a refused --out costs nothing
        check_output_file(args.out, args.force, {"--data": args.data, "--model": args.model,
                                                 "--config": args.config, "--tokenizer": args.tokenizer})
    result = evaluate_perplexity(args.model, args.data, config=args.config, tokenizer=args.tokenizer,
                                 seq_len=args.seq_len, batch_size=args.batch_size, text_key=args.text_key,
                                 add_bos=not args.no_bos, add_eos=not args.no_eos,
                                 max_documents=args.max_docs, dtype=args.dtype)
    print(f"{args.model}: loss {result.loss:.4f}  perplexity {result.perplexity:.3f}  "
          f"bits/byte {result.bits_per_byte:.4f}  nats/char {result.nats_per_character:.4f}  "
          f"({result.tokens} tokens, {result.bytes} bytes, {result.characters} characters, "
          f"{result.documents} documents, {result.form})")
    if args.out:
        write_json(args.out, {**result.to_dict(), "model": args.model, "data": args.data})
