"""Dead pieces: vocabulary entries a BPE tokenizer can never output.

SentencePiece BPE encodes by repeatedly merging the adjacent pair whose concatenation is the
best-scoring piece. A piece is *dead* when encoding its own surface string does not end in that
piece: its merge path is gone (after naive pruning) or another merge always wins first. A dead
piece is never produced in any context either: the merges inside its span happen in the same
order as in isolation until a neighbour takes one of its boundary symbols, which only makes the
piece less reachable. Its embedding row is wasted.

"Encoding its surface" is done at the BPE level: the normalizer is switched off (no dummy prefix,
no whitespace removal, no charsmap) and the piece text, "▁" included, is fed as is.
"""

from __future__ import annotations

from rethinktiny.vocab.spmodel import NORMAL, processor_from_proto


def bpe_level_proto(proto):
    """A copy of `proto` whose normalizer does nothing, so text goes straight to BPE."""
    bare = type(proto)()
    bare.CopyFrom(proto)
    spec = bare.normalizer_spec
    spec.name = "identity"
    spec.precompiled_charsmap = b""
    spec.add_dummy_prefix = False
    spec.remove_extra_whitespaces = False
    return bare


def self_encoding(proto, ids: list[int]) -> list[bool]:
    """For each id, whether the BPE encoding of its piece string is exactly [id].

    Args:
        proto: SentencePiece `ModelProto`.
        ids: piece ids to check.
    """
    processor = processor_from_proto(bpe_level_proto(proto))
    encoded = processor.encode([proto.pieces[i].piece for i in ids])
    return [tokens == [i] for i, tokens in zip(ids, encoded)]


def dead_pieces(proto) -> list[int]:
    """Ids of normal pieces that do not encode their own surface string to themselves.

    Args:
        proto: SentencePiece `ModelProto` (BPE).
    """
    normal = [i for i, piece in enumerate(proto.pieces) if piece.type == NORMAL]
    return [i for i, alive in zip(normal, self_encoding(proto, normal)) if not alive]
