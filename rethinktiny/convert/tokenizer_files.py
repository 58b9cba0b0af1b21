"""The tokenizer side of an export: find the SentencePiece model, check it fits the model, and
have `rethinktiny.vocab.hf_tokenizer.write_hf_tokenizer` write HF tokenizer files that give the
same ids as SentencePiece (it carries the model's normalizer and dummy-prefix settings over)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rethinktiny.errors import UserError


@dataclass(frozen=True)
class SpecialIds:
    """Special token ids (None where the tokenizer has none)."""

    bos: int | None
    eos: int | None
    pad: int | None


# Without a tokenizer an export still needs ids for config.json: InternEvo's LLaMA convention.
DEFAULT_SPECIAL_IDS = SpecialIds(bos=1, eos=2, pad=None)


def resolve_sentencepiece(path: str | Path) -> Path:
    """A SentencePiece model file, or the `tokenizer.model` inside a folder."""
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.model"
    if not path.is_file():
        raise UserError(f"{path}: tokenizer file not found (pass a SentencePiece model file or a "
                        f"folder holding tokenizer.model)")
    return path


def check_tokenizer(path: Path, vocab_size: int) -> SpecialIds:
    """Load the SentencePiece model and require exactly `vocab_size` pieces.

    Args:
        path: SentencePiece model file.
        vocab_size: the model's embedding rows.
    """
    from rethinktiny.data.prepare import load_sentencepiece

    processor = load_sentencepiece(path)
    pieces = processor.get_piece_size()
    if pieces != vocab_size:
        raise UserError(f"{path}: tokenizer has {pieces} pieces but the model's vocab_size is {vocab_size}; "
                        f"export the tokenizer the model was trained with")

    def _id(value: int) -> int | None:
        return value if value >= 0 else None

    return SpecialIds(_id(processor.bos_id()), _id(processor.eos_id()), _id(processor.pad_id()))


def write_tokenizer_files(sp_model: Path, dst: Path, add_bos_token: bool = False) -> None:
    """HF tokenizer files in `dst` with SentencePiece's exact ids (issue 3's writer); with
    `add_bos_token` HF prepends <s> (as the training data does), the rest stays identical."""
    try:
        from rethinktiny.vocab.hf_tokenizer import write_hf_tokenizer
    except ImportError as err:
        raise UserError(f"--tokenizer: cannot write HF tokenizer files, rethinktiny.vocab.hf_tokenizer "
                        f"is not available ({err})") from None
    write_hf_tokenizer(sp_model, dst, add_bos_token=add_bos_token)
