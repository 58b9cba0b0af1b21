"""The tokenizer side of an export: load the tokenizer (`rethinktiny.tokenizer.load_tokenizer`),
check it fits the model, and put HF tokenizer files into the export: a SentencePiece model goes
through `rethinktiny.vocab.hf_tokenizer.write_hf_tokenizer` (same ids as SentencePiece; it carries
the model's normalizer and dummy-prefix settings over); a Hugging Face tokenizer folder
(tokenizer.json) has its files copied as they are (its own framing, added tokens, chat template)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from rethinktiny.errors import UserError
from rethinktiny.tokenizer import SENTENCEPIECE, Tokenizer, load_tokenizer

# What a Hugging Face tokenizer folder holds that transformers reads (tokenizer.json carries the
# added tokens; transformers 5 saves the chat template as its own file).
HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                      "chat_template.jinja")


@dataclass(frozen=True)
class SpecialIds:
    """Special token ids (None where the tokenizer has none)."""

    bos: int | None
    eos: int | None
    pad: int | None


# Without a tokenizer an export still needs ids for config.json: InternEvo's LLaMA convention.
DEFAULT_SPECIAL_IDS = SpecialIds(bos=1, eos=2, pad=None)


def check_tokenizer(path: str | Path, vocab_size: int) -> tuple[Tokenizer, SpecialIds]:
    """Load the tokenizer and require its ids to fit the model (`Tokenizer.check_fits`).

    Args:
        path: SentencePiece model file, or folder with tokenizer.model or an HF tokenizer.json.
        vocab_size: the model's embedding rows.
    """
    tokenizer = load_tokenizer(path)
    tokenizer.check_fits(vocab_size)
    return tokenizer, SpecialIds(tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id)


def hf_tokenizer_folder(path: str | Path) -> Path | None:
    """The folder whose HF tokenizer files an export copies: `path` (or the folder of a
    tokenizer.json given as a file) when it holds a tokenizer.json, else None."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent if path.name.endswith(".json") else None
    return folder if folder is not None and (folder / "tokenizer.json").is_file() else None


def write_tokenizer_files(tokenizer: Tokenizer, source: str | Path, dst: Path,
                          add_bos_token: bool = True) -> None:
    """HF tokenizer files in `dst` with SentencePiece's exact ids (issue 3's writer); with
    `add_bos_token` (the default) HF prepends <s>, as every training document starts with it.

    One BOS rule for every client: `tokenizer(text)` gives `[<s>] + sp.encode(text)`, so
    `generate`, `pipeline` and lm-eval's loglikelihood / multiple-choice / generation requests see
    the training framing; a client that adds <s> itself (lm-eval's rolling loglikelihood) must
    encode with `add_special_tokens=False` (docs/huggingface.md gives the lm-eval arguments)."""
    # An HF tokenizer folder keeps its own files and framing: add_bos_token is for SentencePiece.
    folder = hf_tokenizer_folder(source)
    if folder is not None or tokenizer.kind != SENTENCEPIECE:
        copy_tokenizer_files(folder or tokenizer.path.parent, dst)
        return
    try:
        from rethinktiny.vocab.hf_tokenizer import write_hf_tokenizer
    except ImportError as err:
        raise UserError(f"--tokenizer: cannot write HF tokenizer files, rethinktiny.vocab.hf_tokenizer "
                        f"is not available ({err})") from None
    write_hf_tokenizer(tokenizer.path, dst, add_bos_token=add_bos_token)


def copy_tokenizer_files(folder: Path, dst: Path) -> list[str]:
    """Copy the tokenizer files `folder` has (`HF_TOKENIZER_FILES`, tokenizer.model included) into
    `dst`, so `load_tokenizer(dst)` reads what `load_tokenizer(folder)` reads; returns their names."""
    copied = [name for name in HF_TOKENIZER_FILES if (folder / name).is_file()]
    for name in copied:
        shutil.copyfile(folder / name, dst / name)
    return copied
