"""Text -> tokens: train a SentencePiece BPE tokenizer and write InternEvo's tokenized format."""

from __future__ import annotations

import io
import json
import os
import re
from collections import defaultdict
from pathlib import Path
from typing import Iterator

from tqdm import tqdm

from rethinktiny.artifacts import check_not_an_input, output_dir, write_json, write_manifest
from rethinktiny.data.tokenized import BinWriter
from rethinktiny.errors import UserError


def iter_jsonl_texts(path: str | os.PathLike, text_key: str = "text",
                     type_key: str | None = "source") -> Iterator[tuple[str, str]]:
    """(type, text) per line of a jsonl corpus; a malformed line is an error naming file:line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: corpus file not found")
    with open(path, "rb") as f:  # bytes, decoded line by line: a bad byte is named with its line
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise UserError(f"{path}:{number}: not UTF-8 text (byte {raw[err.start]:#04x} at column "
                                f"{err.start + 1}); convert the corpus to UTF-8") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                text = record[text_key]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise UserError(f"{path}:{number}: malformed corpus line ({type(err).__name__}: {err})") from None
            doc_type = str(record.get(type_key, "default")) if type_key else "default"
            yield _safe_type_name(doc_type), text


def _safe_type_name(name: str) -> str:
    # InternEvo matches type folders with a regex on the path, so keep names plain.
    return re.sub(r"[^A-Za-z0-9_]+", "_", name) or "default"


# SentencePiece's built-in normalization rules. "identity" (our default) keeps the text as it is:
# decode(encode(x)) == x, newlines and tabs survive (as pieces or byte pieces), and llama.cpp,
# which applies no normalizer, cuts text into the same pieces. The NFKC rules fold newlines and
# tabs into spaces and full-width punctuation into ASCII.
NORMALIZATION_RULES = ("identity", "nmt_nfkc", "nfkc", "nmt_nfkc_cf", "nfkc_cf")


def train_tokenizer(corpus: str | os.PathLike, dst: str | os.PathLike, vocab_size: int,
                    text_key: str = "text", user_defined_symbols: tuple[str, ...] = (),
                    character_coverage: float = 0.9995, normalization: str = "identity",
                    force: bool = False) -> Path:
    """Train a SentencePiece BPE tokenizer with byte fallback on a jsonl corpus.

    Whitespace is kept as written: no normalization by default, runs of spaces are not collapsed
    (`remove_extra_whitespaces=False`), spaces may form pieces of their own, and a character
    without a piece (a newline, say, in a corpus with few of them) falls back to its UTF-8 bytes.

    Args:
        corpus: jsonl file with a `text_key` field per line.
        dst: output folder; gets `tokenizer.model` and `manifest.json`.
        vocab_size: number of pieces (including <unk>, <s>, </s> and the 256 byte pieces).
        user_defined_symbols: pieces that are never split (e.g. chat markers).
        character_coverage: share of characters covered by normal pieces; the rest use bytes.
        normalization: SentencePiece normalization rule, one of `NORMALIZATION_RULES`.
        force: replace an existing `dst`.
    """
    import sentencepiece as spm

    if normalization not in NORMALIZATION_RULES:
        raise UserError(f"--normalization: unknown rule {normalization!r}; choose one of "
                        f"{', '.join(NORMALIZATION_RULES)}")
    check_not_an_input(dst, {"--input": corpus})
    texts = [text for _, text in iter_jsonl_texts(corpus, text_key, None)]
    if not texts:
        raise UserError(f"{corpus}: no documents")
    model = io.BytesIO()
    with output_dir(dst, force) as tmp:
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size,
                model_type="bpe", byte_fallback=True, character_coverage=character_coverage,
                normalization_rule_name=normalization,
                user_defined_symbols=list(user_defined_symbols), split_digits=True,
                allow_whitespace_only_pieces=True, remove_extra_whitespaces=False,
                max_sentence_length=1 << 16, num_threads=1, minloglevel=2,
            )
        except RuntimeError as err:  # e.g. vocab_size too large for the corpus
            raise UserError(f"{corpus}: sentencepiece training failed: {err}") from None
        (tmp / "tokenizer.model").write_bytes(model.getvalue())
        write_manifest(tmp, "data train-tokenizer",
                       dict(corpus=str(corpus), vocab_size=vocab_size, text_key=text_key,
                            user_defined_symbols=list(user_defined_symbols),
                            character_coverage=character_coverage, normalization=normalization),
                       inputs={"corpus": corpus})
    return Path(dst) / "tokenizer.model"


def tokenize_corpus(corpus: str | os.PathLike, tokenizer: str | os.PathLike, dst: str | os.PathLike,
                    text_key: str = "text", type_key: str | None = "source", add_bos: bool = True,
                    add_eos: bool = True, shard_tokens: int = 50_000_000, batch_docs: int = 512,
                    force: bool = False) -> dict:
    """Encode a jsonl corpus into `<dst>/<type>/<shard>.bin` + `.bin.meta`.

    Args:
        corpus: jsonl file.
        tokenizer: SentencePiece model file, or folder with tokenizer.model or an HF tokenizer.json
            (`rethinktiny.tokenizer.load_tokenizer`).
        dst: output folder (written atomically).
        type_key: record field naming the data type sub-folder (None: one type "default").
        add_bos, add_eos: frame each document with the tokenizer's own BOS / end it with its EOS
            (`Tokenizer.frame`: SentencePiece `<s> ... </s>` as InternEvo's tokenizer tool writes;
            SmolLM2-style BPE `... <|endoftext|>`).
        shard_tokens: start a new shard after this many tokens.
    Returns:
        a summary dict (documents and tokens per type), also written as `summary.json`.
    """
    from rethinktiny.tokenizer import load_tokenizer

    check_not_an_input(dst, {"--input": corpus, "--tokenizer": tokenizer})
    loaded = load_tokenizer(tokenizer)
    records = list(iter_jsonl_texts(corpus, text_key, type_key))
    if not records:
        raise UserError(f"{corpus}: no documents")
    by_type: dict[str, list[str]] = defaultdict(list)
    for doc_type, text in records:
        by_type[doc_type].append(text)
    summary = {"types": {}, "documents": 0, "tokens": 0, "vocab_size": loaded.vocab_size,
               "tokenizer": {"kind": loaded.kind, "bos_id": loaded.bos_id, "eos_id": loaded.eos_id}}
    with output_dir(dst, force) as tmp, tqdm(total=len(records), desc="tokenize", unit="doc") as bar:
        for doc_type in sorted(by_type):
            docs, tokens = _write_type(loaded, by_type[doc_type], tmp / doc_type, add_bos, add_eos,
                                       shard_tokens, batch_docs, bar)
            summary["types"][doc_type] = {"documents": docs, "tokens": tokens}
            summary["documents"] += docs
            summary["tokens"] += tokens
        write_json(tmp / "summary.json", summary)
        write_manifest(tmp, "data tokenize",
                       dict(corpus=str(corpus), tokenizer=str(tokenizer), text_key=text_key, type_key=type_key,
                            add_bos=add_bos, add_eos=add_eos, shard_tokens=shard_tokens),
                       inputs={"corpus": corpus, "tokenizer": loaded.path})
    return summary


def _write_type(tokenizer, texts: list[str], folder: Path, add_bos: bool, add_eos: bool,
                shard_tokens: int, batch_docs: int, bar) -> tuple[int, int]:
    shard, writer = 0, None
    docs = tokens = 0
    for start in range(0, len(texts), batch_docs):
        for ids in tokenizer.encode_batch(texts[start:start + batch_docs]):
            if writer is None:
                writer = BinWriter(folder / f"{shard:05d}.bin")
            document = tokenizer.frame(ids, bos=add_bos, eos=add_eos)
            writer.write(document)
            docs, tokens = docs + 1, tokens + len(document)
            if writer.num_tokens >= shard_tokens:
                writer.close()
                writer, shard = None, shard + 1
        bar.update(min(batch_docs, len(texts) - start))
    if writer is not None:
        writer.close()
    return docs, tokens
