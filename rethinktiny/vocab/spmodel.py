"""SentencePiece model files as protobufs: load with a clear error, piece types, small queries.

Pruning and the Hugging Face writer work on the `ModelProto` (the `.model` file's contents) rather
than on a `SentencePieceProcessor`, because they need what the processor hides: each piece's *type*
(normal, unknown, control, user-defined, unused, byte), its score, and the normalizer settings.
"""

from __future__ import annotations

import os
from pathlib import Path

from rethinktiny.errors import UserError

# sentencepiece_model.proto's SentencePiece.Type values.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, BYTE, UNUSED = 1, 2, 3, 4, 6, 5
TYPE_NAMES = {NORMAL: "normal", UNKNOWN: "unknown", CONTROL: "control",
              USER_DEFINED: "user_defined", BYTE: "byte", UNUSED: "unused"}
# TrainerSpec.ModelType
MODEL_TYPE_BPE = 2


def resolve_model_path(path: str | os.PathLike) -> Path:
    """A `.model` file, or a folder holding `tokenizer.model` (how the seed's step3 takes it)."""
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.model"
    if not path.is_file():
        raise UserError(f"{path}: tokenizer file not found")
    return path


def parse_model_proto(data: bytes, source: str = "tokenizer"):
    """Parse SentencePiece model bytes; anything else is a UserError naming `source`."""
    from google.protobuf.message import DecodeError
    from sentencepiece import sentencepiece_model_pb2 as pb2

    proto = pb2.ModelProto()
    try:
        proto.ParseFromString(data)
    except DecodeError as err:
        raise UserError(f"{source}: not a SentencePiece model ({err})") from None
    if len(proto.pieces) == 0:  # protobuf parses many byte strings as an empty message
        raise UserError(f"{source}: not a SentencePiece model (no pieces)")
    return proto


def load_model_proto(path: str | os.PathLike):
    """Load a SentencePiece `ModelProto` from a `.model` file or a folder with `tokenizer.model`.

    Args:
        path: model file, or folder holding `tokenizer.model`.
    """
    path = resolve_model_path(path)
    proto = parse_model_proto(path.read_bytes(), str(path))
    _check_loadable(proto, path)
    return proto


def _check_loadable(proto, path: Path) -> None:
    # The protobuf parser accepts many byte strings that sentencepiece itself rejects.
    import sentencepiece as spm

    try:
        spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
    except (RuntimeError, OSError) as err:
        raise UserError(f"{path}: not a SentencePiece model ({err})") from None


def processor_from_proto(proto):
    """A `SentencePieceProcessor` for an in-memory `ModelProto`."""
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_proto=proto.SerializeToString())


def sp_vocab_size(path: str | os.PathLike) -> int:
    """Number of pieces (ids) of a SentencePiece model file or folder."""
    return len(load_model_proto(path).pieces)


def count_by_type(proto, ids=None) -> dict[str, int]:
    """How many pieces of each type (by name); only `ids` when given."""
    counts = {name: 0 for name in TYPE_NAMES.values()}
    chosen = range(len(proto.pieces)) if ids is None else ids
    for i in chosen:
        counts[TYPE_NAMES.get(proto.pieces[i].type, str(proto.pieces[i].type))] += 1
    return counts


def require_bpe(proto, source: str) -> None:
    if proto.trainer_spec.model_type != MODEL_TYPE_BPE:
        raise UserError(f"{source}: only SentencePiece BPE models are supported "
                        f"(model_type={proto.trainer_spec.model_type})")
