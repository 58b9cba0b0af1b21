"""`prune_vocab`: a compact tokenizer of either kind the project prunes, picked from the tokenizer.

A SentencePiece BPE model (`tokenizer.model`) goes to `vocab.prune.prune_tokenizer`, a Hugging Face
byte-level BPE `tokenizer.json` to `vocab.bpe_prune.prune_tokenizer_json`; both keep every kept
token's merge path and write the same folder layout (tokenizer files, `token_map.json`,
`report.json`, `manifest.json`). A folder with both files is SentencePiece: its tokenizer.json was
converted from the model.
"""

from __future__ import annotations

import os
from pathlib import Path

from rethinktiny.tokenizer import SENTENCEPIECE, resolve_tokenizer_path


def prune_vocab(tokenizer: str | os.PathLike, counts_file: str | os.PathLike, vocab_num: int,
                dst: str | os.PathLike, preset: str | None = "pangu_pi_1b_pro", force: bool = False) -> dict:
    """Prune `tokenizer` to `vocab_num` ids by the counts in `counts_file`; write `dst`, return its report.

    Args:
        tokenizer: SentencePiece `.model`, `tokenizer.json`, or a folder holding either.
        counts_file: `{"<id>": count}` JSON (`vocab merge`).
        vocab_num: ids (pieces) of the pruned tokenizer, special and byte ones included.
        dst: output folder (written atomically).
        preset: model preset for the embedding-share figures (None: skip them).
        force: replace an existing `dst`.
    """
    if resolve_tokenizer_path(tokenizer)[0] == SENTENCEPIECE:
        from rethinktiny.vocab.prune import prune_tokenizer

        return prune_tokenizer(tokenizer, counts_file, vocab_num, dst, preset=preset, force=force)
    from rethinktiny.vocab.bpe_prune import prune_tokenizer_json

    return prune_tokenizer_json(tokenizer, counts_file, vocab_num, dst, preset=preset, force=force)


def describe_prune(dst: str | os.PathLike, report: dict) -> str:
    """One line for the console: sizes, dead (SentencePiece) or unreachable (BPE) tokens, coverage."""
    if "dead_pieces" in report:
        unit, dead = "pieces", f"{report['dead_pieces']} dead"
    else:
        unit, dead = "ids", f"{report['unreachable_tokens']} unreachable"
    coverage = report["coverage"]["token_coverage"]
    return (f"wrote {Path(dst)}: {report['new_vocab_size']} of {report['old_vocab_size']} {unit}, {dead}, "
            f"corpus token coverage {'n/a' if coverage is None else f'{coverage:.4%}'}")
