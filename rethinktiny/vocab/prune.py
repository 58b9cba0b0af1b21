"""Prune a SentencePiece BPE tokenizer to `vocab_num` pieces by corpus frequency, with no dead pieces.

The seed keeps `<...>`/`[...]`-shaped pieces and then the most frequent pieces. Two problems:
shape is not type (a normal piece "<div>" is kept unconditionally, a user-defined "Ａ" is not), and
a kept piece whose merge path was pruned can never be produced again: on the shared 103k InternLM
tokenizer 1,891 of 7,741 kept normal pieces at 8k are such dead weight.

`prune_sentencepiece` instead (`vocab.compact.prune_vocab` picks it or `bpe_prune` from the tokenizer):
1. keeps every piece whose SentencePiece *type* is not NORMAL (control, unknown, user-defined,
   byte, unused), so special and byte-fallback pieces survive with their order;
2. walks the normal pieces from most to least frequent (ties: higher score, then lower id) and
   keeps each together with its *merge path* — every piece BPE forms on the way from its characters
   to it — when they all fit, until exactly `vocab_num` pieces are kept. Pieces the original model
   itself cannot produce are never candidates.

Why the merge path is enough: with the path kept, BPE on the piece's text in the pruned model
sees a subset of the merges the original saw, always including the one the original applied (the
best), so it takes the same steps and ends in the piece. Kept pieces keep their original scores
and relative order, so ids are the original ids with gaps closed (`new_to_old` is increasing).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rethinktiny.errors import UserError
from rethinktiny.vocab.reach import self_encoding
from rethinktiny.vocab.spmodel import NORMAL, USER_DEFINED, processor_from_proto


def _bpe_merges(text: str, scores: dict[str, float]) -> tuple[list[str], tuple[str, str] | None]:
    """SentencePiece's BPE on `text` (characters -> pieces): best-scoring adjacent merge first,
    leftmost on ties. Returns the final symbols and the last merge applied."""
    symbols = list(text)
    last = None
    while len(symbols) > 1:
        best, best_score = -1, None
        for i in range(len(symbols) - 1):
            score = scores.get(symbols[i] + symbols[i + 1])
            if score is not None and (best_score is None or score > best_score):
                best, best_score = i, score
        if best < 0:
            break
        last = (symbols[best], symbols[best + 1])
        symbols[best:best + 2] = [symbols[best] + symbols[best + 1]]
    return symbols, last


def merge_paths(proto, candidates: list[int]) -> dict[int, frozenset[int]]:
    """For each candidate normal piece that BPE produces from its own text, the ids of every
    piece on its merge path (itself included). Candidates BPE does not produce are left out.

    Args:
        proto: SentencePiece `ModelProto` (BPE).
        candidates: normal piece ids.
    """
    # The pieces SentencePiece may form by merging (its pieces_ set), with their scores.
    scores = {p.piece: p.score for p in proto.pieces if p.type in (NORMAL, USER_DEFINED)}
    index = {p.piece: i for i, p in enumerate(proto.pieces)}
    last_merge: dict[int, tuple[int, int] | None] = {}
    for i in candidates:
        piece = proto.pieces[i].piece
        symbols, last = _bpe_merges(piece, scores)
        if symbols == [piece]:
            last_merge[i] = None if last is None else (index[last[0]], index[last[1]])
    paths: dict[int, frozenset[int]] = {}
    for i in sorted(last_merge, key=lambda i: len(proto.pieces[i].piece)):  # parts before wholes
        parts = last_merge[i]
        if parts is None:
            paths[i] = frozenset([i])
        elif parts[0] in paths and parts[1] in paths:
            paths[i] = paths[parts[0]] | paths[parts[1]] | {i}
    return paths


@dataclass
class PruneResult:
    """The pruned model and how it was chosen."""

    proto: object  # sentencepiece_model_pb2.ModelProto
    new_to_old: list[int]
    must_keep: int  # non-normal pieces kept by type
    candidates_kept: int  # normal pieces kept for their own frequency
    path_kept: int  # normal pieces kept only because a frequent piece's merge path needs them


def required_ids(proto) -> list[int]:
    """Ids kept whatever the counts say: every piece whose type is not NORMAL."""
    return [i for i, piece in enumerate(proto.pieces) if piece.type != NORMAL]


def check_vocab_num(proto, vocab_num: int, source: str = "tokenizer") -> None:
    """`vocab_num` must lie between the pieces that must be kept and the tokenizer's size."""
    size, required = len(proto.pieces), len(required_ids(proto))
    if vocab_num > size:
        raise UserError(f"--vocab_num {vocab_num} is larger than {source} ({size} pieces)")
    if vocab_num < required:
        raise UserError(f"--vocab_num {vocab_num} is smaller than the {required} pieces {source} must keep "
                        f"(control, unknown, user-defined, byte)")


def candidate_order(proto, counts: np.ndarray) -> list[int]:
    """Normal pieces the original model produces, most frequent first (ties: score, then id)."""
    normal = [i for i, piece in enumerate(proto.pieces) if piece.type == NORMAL]
    alive = [i for i, ok in zip(normal, self_encoding(proto, normal)) if ok]
    return sorted(alive, key=lambda i: (-int(counts[i]), -proto.pieces[i].score, i))


def select_pieces(proto, counts: np.ndarray, vocab_num: int) -> tuple[list[int], int, int]:
    """(kept ids ascending, normal pieces kept as candidates, normal pieces kept as path only).

    Args:
        proto: SentencePiece `ModelProto` (BPE).
        counts: dense token counts (index = id), at least `len(proto.pieces)` long.
        vocab_num: exact number of pieces to keep.
    """
    kept = set(required_ids(proto))
    order = candidate_order(proto, counts)
    paths = merge_paths(proto, order)
    chosen = 0
    for i in order:
        if len(kept) == vocab_num:
            break
        path = paths.get(i)
        if path is None or i in kept:
            continue
        new = path - kept
        if len(kept) + len(new) <= vocab_num:
            kept |= new
            chosen += 1
    if len(kept) < vocab_num:
        raise UserError(f"--vocab_num {vocab_num}: only {len(kept)} pieces can be kept without dead pieces "
                        f"(the tokenizer's other pieces are pieces it never produces itself)")
    normal_kept = sum(1 for i in kept if proto.pieces[i].type == NORMAL)
    return sorted(kept), chosen, normal_kept - chosen


def build_pruned_proto(proto, keep: list[int]):
    """A copy of `proto` with only the `keep` ids (ascending), scores and settings unchanged."""
    pruned = type(proto)()
    pruned.CopyFrom(proto)
    del pruned.pieces[:]
    for i in keep:
        pruned.pieces.append(proto.pieces[i])
    old_to_new = {old: new for new, old in enumerate(keep)}
    spec = pruned.trainer_spec
    for field in ("unk_id", "bos_id", "eos_id", "pad_id"):
        old = getattr(spec, field)
        if old >= 0:  # the special ids are positions: follow their pieces (kept by type)
            setattr(spec, field, old_to_new[old])
    spec.vocab_size = len(keep)
    processor_from_proto(pruned)  # sentencepiece itself must accept it
    return pruned


def prune_sentencepiece(proto, counts: np.ndarray, vocab_num: int) -> PruneResult:
    """Prune `proto` to exactly `vocab_num` pieces (see the module docstring).

    Args:
        proto: SentencePiece `ModelProto` (BPE).
        counts: dense token counts over the training corpus, index = id of `proto`.
        vocab_num: number of pieces of the result, special and byte pieces included.
    """
    check_vocab_num(proto, vocab_num)
    if counts.shape[0] < len(proto.pieces):
        counts = np.concatenate([counts, np.zeros(len(proto.pieces) - counts.shape[0], dtype=np.int64)])
    keep, chosen, path_only = select_pieces(proto, counts, vocab_num)
    return PruneResult(build_pruned_proto(proto, keep), keep, len(required_ids(proto)), chosen, path_only)


def prune_report(proto, result: PruneResult, counts: np.ndarray, preset: str | None) -> dict:
    """report.json: coverage of the counted corpus, pieces kept by type, embedding share.

    Args:
        proto: the original `ModelProto`.
        result: what `prune_sentencepiece` returned.
        counts: the dense counts it was given.
        preset: model preset whose embedding+head share is reported at both vocabulary sizes.
    """
    from rethinktiny.vocab.reach import dead_pieces
    from rethinktiny.vocab.spmodel import count_by_type

    kept = np.asarray(result.new_to_old, dtype=np.int64)
    counts = counts[:len(proto.pieces)]
    total = int(counts.sum())
    report = {
        "old_vocab_size": len(proto.pieces), "new_vocab_size": len(result.new_to_old),
        "coverage": {
            "counted_tokens": total,
            "tokens_of_kept_pieces": int(counts[kept].sum()),
            "token_coverage": float(counts[kept].sum() / total) if total else None,
            "seen_ids": int(np.count_nonzero(counts)),
            "seen_ids_kept": int(np.count_nonzero(counts[kept])),
        },
        "pieces_by_type": {"original": count_by_type(proto), "kept": count_by_type(proto, result.new_to_old)},
        "normal_pieces": {"kept_for_frequency": result.candidates_kept, "kept_for_merge_paths": result.path_kept},
        "dead_pieces": len(dead_pieces(result.proto)),
    }
    if preset is not None:
        report["embedding_share"] = embedding_shares(preset, len(proto.pieces), len(result.new_to_old))
    return report


def embedding_shares(preset: str, old_size: int, new_size: int) -> dict:
    """Embedding+head share of the parameters of `preset` at the old and new vocabulary sizes."""
    from rethinktiny.config import get_preset

    base = get_preset(preset)
    old, new = base.replace(vocab_size=old_size), base.replace(vocab_size=new_size)
    return {"preset": preset,
            "old": {"vocab_size": old_size, "params": old.num_params(), "share": old.embedding_share()},
            "new": {"vocab_size": new_size, "params": new.num_params(), "share": new.embedding_share()}}


def prune_tokenizer(tokenizer, counts_file, vocab_num: int, dst, preset: str | None = "pangu_pi_1b_pro",
                    force: bool = False) -> dict:
    """Prune a tokenizer file by a frequency file and write the result folder.

    Writes `tokenizer.model`, Hugging Face tokenizer files, `token_map.json`, `report.json` and
    `manifest.json` into `dst`, atomically. Returns the report.

    Args:
        tokenizer: SentencePiece BPE model file, or a folder holding `tokenizer.model`.
        counts_file: `{"<id>": count}` JSON (`vocab merge` / the seed's step2 output).
        vocab_num: pieces in the pruned tokenizer.
        dst: output folder.
        preset: model preset for the embedding-share figures (None: skip them).
        force: replace an existing `dst`.
    """
    from rethinktiny.artifacts import (check_writable, file_digest, output_dir, write_file_atomic, write_json,
                                       write_manifest)
    from rethinktiny.vocab.hf_tokenizer import write_hf_tokenizer
    from rethinktiny.vocab.sum_counts import read_frequency_file
    from rethinktiny.vocab.spmodel import load_model_proto, require_bpe, resolve_model_path
    from rethinktiny.vocab.tokenmap import TOKEN_MAP_FILE, TokenMap, save_token_map

    check_writable(dst, force)
    source = resolve_model_path(tokenizer)
    proto = load_model_proto(source)
    require_bpe(proto, str(source))
    check_vocab_num(proto, vocab_num, str(source))
    if preset is not None:
        embedding_shares(preset, 1, 1)  # fail on an unknown preset before the work
    counts = read_frequency_file(counts_file, len(proto.pieces))
    result = prune_sentencepiece(proto, counts, vocab_num)
    report = prune_report(proto, result, counts, preset)
    with output_dir(dst, force) as tmp:
        write_file_atomic(tmp / "tokenizer.model", result.proto.SerializeToString())
        write_hf_tokenizer(tmp / "tokenizer.model", tmp)
        save_token_map(tmp / TOKEN_MAP_FILE, TokenMap(tuple(result.new_to_old), len(proto.pieces),
                                                      file_digest(source), file_digest(tmp / "tokenizer.model")))
        write_json(tmp / "report.json", report)
        write_manifest(tmp, "vocab prune", dict(tokenizer=str(source), counts=str(counts_file),
                                                vocab_num=vocab_num, preset=preset),
                       inputs={"tokenizer": source, "counts": counts_file})
    return report
