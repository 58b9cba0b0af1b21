"""One tokenizer interface for every command: a SentencePiece model or a Hugging Face tokenizer folder.

`load_tokenizer(path)` accepts
  - a SentencePiece model file (`*.model`), or a folder holding `tokenizer.model`: read with
    `sentencepiece` (a folder with both `tokenizer.model` and `tokenizer.json` is read as SentencePiece,
    the file the HF tokenizer was converted from; LLaMA/Mistral folders give the same ids either way);
  - a folder holding `tokenizer.json` (+ `tokenizer_config.json` / `special_tokens_map.json`), or the
    `tokenizer.json` file itself: read with the `tokenizers` library (no remote code, no download).

Ids: `encode(text)` never adds special tokens and equals `AutoTokenizer(...)(text,
add_special_tokens=False)["input_ids"]` (tests/unit/test_tokenizer.py checks every document of the
bundled sample).

Framing rule (what one document looks like in tokenized data): the tokenizer's own framing, i.e. what
`AutoTokenizer(text, add_special_tokens=True)` adds, followed by the tokenizer's EOS unless that
framing already ends with it:
  - SentencePiece: `<s> ids </s>` (as InternEvo's tokenizer tool and LLaMA's tokenizer with
    add_bos_token=True frame it, plus the end of the document);
  - HF folder: what tokenizer.json's post-processor adds (`add_bos_token`/`add_eos_token` in
    tokenizer_config.json are ignored, as transformers 5 ignores them next to a tokenizer.json); e.g.
    LLaMA-2/3 and Mistral `<s> ids </s>`-style, SmolLM2 (bos = eos = `<|endoftext|>`, post-processor
    adds nothing) `ids <|endoftext|>`, exactly how its pretraining stream separates documents.
BOS/EOS/PAD/UNK come from tokenizer_config.json, then special_tokens_map.json; a token that is not
in the vocabulary counts as absent (None).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from rethinktiny.errors import UserError

SENTENCEPIECE = "sentencepiece"
HUGGINGFACE = "huggingface"
HF_CONFIG_FILES = ("tokenizer_config.json", "special_tokens_map.json")


class Tokenizer:
    """A loaded tokenizer: ids without special tokens, special ids, and the document framing.

    Attributes:
        kind: "sentencepiece" or "huggingface".
        path: the file that was read (`*.model` or `tokenizer.json`).
        vocab_size: number of ids (highest id + 1); a model needs at least this many embedding rows.
        bos_id, eos_id, pad_id, unk_id: special ids, None where the tokenizer has none.
        prefix, suffix: the ids the tokenizer's own framing puts before/after a text.
        backend: the library object (`sentencepiece.SentencePieceProcessor` or `tokenizers.Tokenizer`),
            for the few callers that need that library's own API (piece types, merges).
    """

    def __init__(self, kind: str, path: Path, backend, vocab_size: int, specials: dict[str, int | None],
                 prefix: list[int], suffix: list[int]):
        self.kind, self.path, self.backend, self.vocab_size = kind, path, backend, vocab_size
        self.bos_id, self.eos_id = specials.get("bos"), specials.get("eos")
        self.pad_id, self.unk_id = specials.get("pad"), specials.get("unk")
        self.prefix, self.suffix = list(prefix), list(suffix)

    def __repr__(self) -> str:
        return (f"Tokenizer(kind={self.kind!r}, path='{self.path}', vocab_size={self.vocab_size}, "
                f"bos_id={self.bos_id}, eos_id={self.eos_id})")

    def encode(self, text: str) -> list[int]:
        """Ids of `text`, no special tokens added."""
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Ids of each text, no special tokens added (one call into the native library)."""
        if self.kind == SENTENCEPIECE:
            return self.backend.encode(list(texts))
        return [encoding.ids for encoding in self.backend.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        """Text of `ids` (special tokens are kept as text by HF, dropped by SentencePiece)."""
        if self.kind == SENTENCEPIECE:
            return self.backend.decode(list(ids))
        return self.backend.decode(list(ids), skip_special_tokens=False)

    def frame(self, ids: list[int], bos: bool = True, eos: bool = True) -> list[int]:
        """One document: the tokenizer's framing around `ids`, ending with EOS (see the module doc).

        Args:
            ids: `encode(text)`.
            bos: keep the framing's prefix (BOS); False drops it.
            eos: end with EOS; False drops the framing's EOS and appends none.
        """
        head = self.prefix if bos else []
        tail = list(self.suffix)
        if self.eos_id is not None:
            if eos and (not tail or tail[-1] != self.eos_id):
                tail.append(self.eos_id)
            elif not eos and tail and tail[-1] == self.eos_id:
                tail.pop()
        return head + list(ids) + tail

    def check_fits(self, model_vocab: int, what: str = "the model's vocab_size") -> None:
        """Refuse a tokenizer whose ids do not fit the model's embedding rows.

        A SentencePiece model must have exactly `model_vocab` pieces (our models are trained with
        exactly the tokenizer's pieces, so a mismatch means the wrong tokenizer); an HF tokenizer
        needs at most `model_vocab` ids (HF models often pad the embedding, e.g. Qwen2).

        Args:
            model_vocab: embedding rows of the model.
            what: how the message names `model_vocab`.
        """
        exact = self.kind == SENTENCEPIECE
        if self.vocab_size > model_vocab or (exact and self.vocab_size != model_vocab):
            unit = "pieces" if exact else "tokens"
            raise UserError(f"{self.path}: tokenizer has {self.vocab_size} {unit} but {what} is {model_vocab}")


def resolve_tokenizer_path(path: str | os.PathLike) -> tuple[str, Path]:
    """(kind, file) for a tokenizer argument: `*.model`, `tokenizer.json`, or a folder with either."""
    path = Path(path)
    if path.is_dir():
        for name, kind in (("tokenizer.model", SENTENCEPIECE), ("tokenizer.json", HUGGINGFACE)):
            if (path / name).is_file():
                return kind, path / name
        raise UserError(f"{path}: no tokenizer.model or tokenizer.json in this folder (pass a SentencePiece "
                        f"model file, or a folder holding tokenizer.model or a Hugging Face tokenizer.json)")
    if not path.is_file():
        raise UserError(f"{path}: tokenizer file not found")
    return (HUGGINGFACE if path.suffix == ".json" else SENTENCEPIECE), path


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Load a SentencePiece model or a Hugging Face tokenizer (see the module doc for what is accepted).

    Args:
        path: `*.model` file, `tokenizer.json` file, or a folder holding `tokenizer.model` or
            `tokenizer.json`.
    """
    kind, file = resolve_tokenizer_path(path)
    return _load_sentencepiece(file) if kind == SENTENCEPIECE else _load_huggingface(file)


def find_tokenizer(*folders: str | os.PathLike) -> Path | None:
    """The first of `folders` that holds a tokenizer (tokenizer.model or tokenizer.json), else None."""
    for folder in folders:
        folder = Path(folder)
        if any((folder / name).is_file() for name in ("tokenizer.model", "tokenizer.json")):
            return folder
    return None


def _load_sentencepiece(file: Path) -> Tokenizer:
    import sentencepiece as spm

    processor = spm.SentencePieceProcessor()
    try:
        processor.LoadFromSerializedProto(file.read_bytes())
    except (RuntimeError, OSError) as err:
        raise UserError(f"{file}: not a SentencePiece model ({err})") from None

    def _id(value: int) -> int | None:
        return value if value >= 0 else None

    specials = {"bos": _id(processor.bos_id()), "eos": _id(processor.eos_id()),
                "pad": _id(processor.pad_id()), "unk": _id(processor.unk_id())}
    prefix = [specials["bos"]] if specials["bos"] is not None else []
    return Tokenizer(SENTENCEPIECE, file, processor, processor.get_piece_size(), specials, prefix, [])


def _load_huggingface(file: Path) -> Tokenizer:
    try:
        from tokenizers import Tokenizer as FastTokenizer
    except ImportError:
        raise UserError(f"{file}: reading a Hugging Face tokenizer.json needs the tokenizers package "
                        f"(pip install 'rethinktiny[hf]')") from None

    try:
        backend = FastTokenizer.from_file(str(file))
    except Exception as err:  # the Rust loader raises a bare Exception for any malformed file
        raise UserError(f"{file}: not a Hugging Face tokenizer.json ({err})") from None
    config = _hf_config(file.parent)
    specials = {name: _special_id(backend, config.get(f"{name}_token")) for name in ("bos", "eos", "pad", "unk")}
    if specials["unk"] is None:
        specials["unk"] = _special_id(backend, getattr(backend.model, "unk_token", None))
    vocab_size = max(backend.get_vocab(with_added_tokens=True).values(), default=-1) + 1
    prefix, suffix = _hf_framing(file, backend)
    return Tokenizer(HUGGINGFACE, file, backend, vocab_size, specials, prefix, suffix)


def _hf_config(folder: Path) -> dict:
    """tokenizer_config.json over special_tokens_map.json (transformers reads them in that order)."""
    merged: dict = {}
    for name in reversed(HF_CONFIG_FILES):
        if (folder / name).is_file():
            try:
                data = json.loads((folder / name).read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise UserError(f"{folder / name}: not valid JSON ({err})") from None
            if not isinstance(data, dict):
                raise UserError(f"{folder / name}: expected a JSON object")
            merged.update(data)
    return merged


def _special_id(backend, token) -> int | None:
    """Id of a special token given as a string or as transformers' {"content": ...} form."""
    if isinstance(token, dict):
        token = token.get("content")
    if not isinstance(token, str):
        return None
    return backend.token_to_id(token)


def _hf_framing(file: Path, backend) -> tuple[list[int], list[int]]:
    """(prefix, suffix) that `AutoTokenizer(text, add_special_tokens=True)` puts around a text: those of
    tokenizer.json's post-processor (transformers 5 drops tokenizer_config's add_bos_token/add_eos_token
    whenever a tokenizer.json exists, `PreTrainedTokenizerBase._from_pretrained`)."""
    if backend.post_processor is None:
        return [], []
    # Any single-sequence template is prefix + $A + suffix: read both off one probe encoding.
    probe = "a"
    plain = backend.encode(probe, add_special_tokens=False).ids
    framed = backend.encode(probe, add_special_tokens=True).ids
    for start in range(len(framed) - len(plain) + 1):
        if framed[start:start + len(plain)] == plain:
            return framed[:start], framed[start + len(plain):]
    raise UserError(f"{file}: its post_processor changes the text's own ids ({plain} -> {framed}); "
                    f"cannot tell where a document starts")
