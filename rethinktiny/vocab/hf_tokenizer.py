"""Hugging Face tokenizer files whose ids equal SentencePiece's, for a SentencePiece BPE model.

`transformers` cannot be trusted to convert a `tokenizer.model` by itself: with transformers 5.x a
plain `LlamaTokenizer(vocab_file=...)`, or a folder holding only `tokenizer.model` and a minimal
`tokenizer_config.json`, applies Llama's own normalizer defaults and gives different ids from
SentencePiece on essentially every English/Chinese document. So we write `tokenizer.json` ourselves,
translating the model's *own* settings:

* normalizer: the model's normalization rule (for the NFKC family: NFKC plus the characters
  SentencePiece maps differently, see `charsmap.py`; nothing for `identity`), then
  `remove_extra_whitespaces` (collapse runs of spaces, strip both ends), spaces -> "▁", and the
  dummy prefix "▁" — applied to the whole text once, as SentencePiece does.
* model: BPE over every piece with byte fallback. SentencePiece merges the adjacent pair whose
  concatenation is the highest-scoring piece; Hugging Face BPE applies the lowest-ranked merge. So
  the merge list holds every split (a, b) of every piece p = a + b with a and b pieces, ranked by
  p's score (ties: lower piece id first, then the shorter left part).
* user-defined pieces are never split and never merged with neighbours. Without a dummy prefix or
  whitespace removal they are added tokens matched in the raw text (as SentencePiece's normalizer
  matches them). With either setting the text must be normalized as a whole first (the "▁" before
  a leading user-defined piece is a token of its own), so they are split out after normalization
  by a pre-tokenizer and looked up whole by the BPE model (`ignore_merges`). That lookup would also
  return a dead piece (one SentencePiece never outputs) for a stretch of text equal to it, so in
  that layout dead pieces keep their ids under a name no text produces; and a stretch that is
  exactly the text of a control or byte piece ("<|im_end|></s>") is pre-split where
  SentencePiece's BPE splits it.
* control/unknown pieces (<unk>, <s>, </s>) are special tokens, but `split_special_tokens` is on:
  SentencePiece encodes the literal text "<s>" as ordinary characters, and so does this tokenizer.
* UNUSED pieces (and a normal piece "\\0" under byte fallback, which SentencePiece demotes to
  UNUSED) are never output by SentencePiece; they too keep their ids under an unproducible name.

Choice: no BOS/EOS are added by default, so `tokenizer(text)["input_ids"] == sp.encode(text)`.
The project's tokenized data wraps each document in <s> ... </s> (`data tokenize`); a caller that
wants that in Hugging Face passes `add_bos_token=True` / `add_eos_token=True`.

Known limits (measured in tests/unit/test_vocab_hf_tokenizer.py and docs/compact-tokenizer.md):
two *different* pieces with the same score that compete for a shared symbol are resolved
leftmost-first by SentencePiece and by merge rank here (the InternLM tokenizers have same-score
pieces; no difference showed on the shared corpus); the normalizer limits listed in `charsmap.py`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from rethinktiny.artifacts import dumps_json, write_file_atomic
from rethinktiny.errors import UserError
from rethinktiny.vocab.charsmap import sentencepiece_normalizer_steps
from rethinktiny.vocab.reach import dead_pieces
from rethinktiny.vocab.spmodel import (BYTE, CONTROL, NORMAL, UNKNOWN, UNUSED, USER_DEFINED,
                                       load_model_proto, require_bpe, resolve_model_path, sp_vocab_size)

__all__ = ["HF_FILES", "build_hf_tokenizer", "sp_vocab_size", "write_hf_tokenizer"]

SPACE = "▁"
HF_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model")
# The pieces SentencePiece's BPE forms by merging. UNUSED pieces are left out: SentencePiece splits
# them again before output (none of our tokenizers has any but a "\\0" piece, see effective_types).
MERGEABLE = (NORMAL, USER_DEFINED)


def effective_types(proto) -> list[int]:
    """Piece types as SentencePiece uses them: with byte fallback it treats a piece "\\0" as UNUSED."""
    byte_fallback = proto.trainer_spec.byte_fallback
    return [UNUSED if (byte_fallback and p.piece == "\0") else p.type for p in proto.pieces]


def bpe_merges(proto, hidden: frozenset[int] = frozenset()) -> list[tuple[str, str]]:
    """Every (left, right) pair whose concatenation is a piece, in SentencePiece's priority order.

    Args:
        proto: SentencePiece `ModelProto` (BPE).
        hidden: ids left out (never output by SentencePiece, so never formed by a merge).
    """
    types = effective_types(proto)
    mergeable = {p.piece: i for i, p in enumerate(proto.pieces)
                 if types[i] in MERGEABLE and i not in hidden}
    ranked = []
    for piece, index in mergeable.items():
        score = proto.pieces[index].score
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in mergeable and right in mergeable:
                ranked.append((-score, index, cut, left, right))
    ranked.sort()
    return [(left, right) for _, _, _, left, right in ranked]


def hidden_name(index: int, piece: str) -> str:
    """The vocabulary name of a piece Hugging Face must never produce (unused or dead)."""
    return f"<never:{index}:{piece.encode('utf-8').hex()}>"


def hf_vocab(proto, hidden: set[int]) -> dict[str, int]:
    """Piece -> id, with the `hidden` ids (pieces SentencePiece never outputs) renamed so that no
    text and no merge produces them, while their ids keep a name."""
    return {(hidden_name(i, p.piece) if i in hidden else p.piece): i for i, p in enumerate(proto.pieces)}


def _hidden_ids(proto, ignore_merges: bool) -> set[int]:
    types = effective_types(proto)
    hidden = {i for i, kind in enumerate(types) if kind == UNUSED}
    if ignore_merges:
        hidden.update(dead_pieces(proto))
    return hidden


def _needs_global_normalization(proto) -> bool:
    spec = proto.normalizer_spec
    return spec.add_dummy_prefix or spec.remove_extra_whitespaces


def _user_defined(proto) -> list[str]:
    return [p.piece for p in proto.pieces if p.type == USER_DEFINED]


def _normalizer(proto):
    from tokenizers import Regex, normalizers

    spec = proto.normalizer_spec
    space = SPACE if spec.escape_whitespaces else " "
    steps = sentencepiece_normalizer_steps(proto)
    if spec.remove_extra_whitespaces:
        # SentencePiece collapses runs of U+0020 (after the charsmap) and skips leading ones ...
        steps.append(normalizers.Replace(Regex(" {2,}"), " "))
        steps.append(normalizers.Replace(Regex(r"\A +"), ""))
    if spec.escape_whitespaces:
        steps.append(normalizers.Replace(" ", SPACE))
    if spec.add_dummy_prefix:
        steps.append(normalizers.Prepend(SPACE))  # a no-op on empty text, as in SentencePiece
    if spec.remove_extra_whitespaces:
        # ... but strips trailing ones after escaping, so a literal "▁" at the end goes too.
        steps.append(normalizers.Replace(Regex(_onig_literal(space) + r"+\z"), ""))
    return normalizers.Sequence(steps) if steps else None


def _onig_literal(text: str) -> str:
    # Oniguruma (the tokenizers regex engine) reads \x{HHHH} as one code point: no escaping rules
    # to get wrong for pieces like "<|im_start|>" or "[UNUSED_TOKEN_1]".
    return "".join(c if c.isalnum() and c.isascii() else f"\\x{{{ord(c):X}}}" for c in text)


def _user_defined_splitter(pieces: list[str]):
    from tokenizers import Regex, pre_tokenizers

    # Longest first, so the alternation picks the longest piece at the leftmost position, which
    # is SentencePiece's prefix matcher.
    pattern = "|".join(_onig_literal(p) for p in sorted(pieces, key=lambda p: (-len(p), p)))
    return pre_tokenizers.Split(Regex(pattern), behavior="isolated")


def _literal_splitter(proto, hidden: frozenset[int]):
    """Split a pre-token that is exactly the text of a control, byte or hidden piece ("</s>",
    "<0x41>") where SentencePiece's BPE splits it, so the whole-word lookup of `ignore_merges`
    cannot turn the text "</s>" into the id of </s>."""
    from tokenizers import Regex, pre_tokenizers

    from rethinktiny.vocab.reach import bpe_level_proto
    from rethinktiny.vocab.spmodel import processor_from_proto

    literals = [p.piece for p in proto.pieces if p.type in (CONTROL, UNKNOWN, BYTE)]
    literals += [hidden_name(i, proto.pieces[i].piece) for i in sorted(hidden)]
    processor = processor_from_proto(bpe_level_proto(proto))
    alternatives = []
    for literal, encoded in zip(literals, processor.encode(literals, return_type="proto")):
        surfaces = [piece.surface for piece in encoded.pieces if piece.surface]
        if len(surfaces) < 2:
            continue
        for k, surface in enumerate(surfaces):
            before, after = "".join(surfaces[:k]), "".join(surfaces[k + 1:])
            alternatives.append(f"(?<=\\A{_onig_literal(before)}){_onig_literal(surface)}"
                                f"(?={_onig_literal(after)}\\z)")
    if not alternatives:
        return None
    # \G anchors every attempt at the end of the previous match: a long pre-token costs one try.
    return pre_tokenizers.Split(Regex("\\G(?:" + "|".join(alternatives) + ")"), behavior="isolated")


def _decoder(proto):
    from tokenizers import decoders

    steps = [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if proto.normalizer_spec.add_dummy_prefix:
        steps.append(decoders.Strip(" ", 1, 0))
    return decoders.Sequence(steps)


def build_hf_tokenizer(proto, add_bos_token: bool = False, add_eos_token: bool = False):
    """A `tokenizers.Tokenizer` that reproduces SentencePiece's ids for `proto` (BPE).

    Args:
        proto: SentencePiece `ModelProto`.
        add_bos_token, add_eos_token: wrap encodings in the model's <s> / </s>.
    """
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

    user_defined = _user_defined(proto)
    split_user_defined = bool(user_defined) and _needs_global_normalization(proto)
    hidden = frozenset(_hidden_ids(proto, ignore_merges=split_user_defined))
    unk = _special_piece(proto, proto.trainer_spec.unk_id)
    tokenizer = Tokenizer(models.BPE(
        vocab=hf_vocab(proto, hidden), merges=bpe_merges(proto, hidden), unk_token=unk, fuse_unk=True,
        byte_fallback=proto.trainer_spec.byte_fallback, ignore_merges=split_user_defined))
    tokenizer.normalizer = _normalizer(proto)
    tokenizer.decoder = _decoder(proto)
    if split_user_defined:
        splitters = [_user_defined_splitter(user_defined), _literal_splitter(proto, hidden)]
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([s for s in splitters if s is not None])
    else:
        tokenizer.add_tokens([AddedToken(p, normalized=False, special=False) for p in user_defined])
    special = [p.piece for p in proto.pieces if p.type in (CONTROL, UNKNOWN)]
    tokenizer.add_special_tokens([AddedToken(p, normalized=False, special=True) for p in special])
    tokenizer.encode_special_tokens = True  # the literal text "<s>" is not the id of <s>
    tokenizer.post_processor = _post_processor(proto, add_bos_token, add_eos_token)
    return tokenizer


def _special_piece(proto, piece_id: int) -> str | None:
    if 0 <= piece_id < len(proto.pieces):
        return proto.pieces[piece_id].piece
    return None


def _post_processor(proto, add_bos: bool, add_eos: bool):
    from tokenizers import processors

    spec = proto.trainer_spec
    bos, eos = _special_piece(proto, spec.bos_id), _special_piece(proto, spec.eos_id)
    if (add_bos and bos is None) or (add_eos and eos is None):
        raise UserError("add_bos_token/add_eos_token: the tokenizer has no <s>/</s> piece")
    single = ([f"{bos}:0"] if add_bos else []) + ["$A:0"] + ([f"{eos}:0"] if add_eos else [])
    pair = single + ([f"{bos}:1"] if add_bos else []) + ["$B:1"] + ([f"{eos}:1"] if add_eos else [])
    used = {name: spec_id for name, spec_id, on in ((bos, spec.bos_id, add_bos), (eos, spec.eos_id, add_eos))
            if on}
    return processors.TemplateProcessing(single=single, pair=pair, special_tokens=list(used.items()))


def _tokenizer_config(proto, add_bos_token: bool, add_eos_token: bool) -> dict:
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": add_bos_token,
        "add_eos_token": add_eos_token,
        # SentencePiece never matches special tokens in text; neither must transformers.
        "split_special_tokens": True,
        "clean_up_tokenization_spaces": False,
    }
    config.update(_special_tokens_map(proto))
    return config


def _special_tokens_map(proto) -> dict:
    spec = proto.trainer_spec
    found = {}
    for name, piece_id in (("bos_token", spec.bos_id), ("eos_token", spec.eos_id),
                           ("unk_token", spec.unk_id), ("pad_token", spec.pad_id)):
        piece = _special_piece(proto, piece_id)
        if piece is not None:
            found[name] = piece
    return found


def write_hf_tokenizer(sp_model_path: str | os.PathLike, dst_folder: str | os.PathLike, *,
                       add_bos_token: bool = False, add_eos_token: bool = False) -> None:
    """Write `tokenizer.json`, `tokenizer_config.json`, `special_tokens_map.json` and a copy of
    `tokenizer.model` into an existing folder, so `AutoTokenizer.from_pretrained(dst_folder)` gives
    SentencePiece's ids on any text.

    Args:
        sp_model_path: SentencePiece BPE `.model` file (or a folder holding `tokenizer.model`).
        dst_folder: existing folder; the four files are written atomically (replacing old ones).
        add_bos_token, add_eos_token: make Hugging Face add <s> / </s> (default: neither, so ids
            equal `SentencePieceProcessor.encode(text)`).
    """
    src = resolve_model_path(sp_model_path)
    dst = Path(dst_folder)
    if not dst.is_dir():
        raise UserError(f"{dst}: output folder not found (write_hf_tokenizer writes into an existing folder)")
    proto = load_model_proto(src)
    require_bpe(proto, str(src))
    tokenizer = build_hf_tokenizer(proto, add_bos_token, add_eos_token)
    tokenizer_json = json.dumps(json.loads(tokenizer.to_str()), ensure_ascii=False, indent=1) + "\n"
    write_file_atomic(dst / "tokenizer.json", tokenizer_json)
    write_file_atomic(dst / "tokenizer_config.json",
                      dumps_json(_tokenizer_config(proto, add_bos_token, add_eos_token)))
    write_file_atomic(dst / "special_tokens_map.json", dumps_json(_special_tokens_map(proto)))
    if src.resolve() != (dst / "tokenizer.model").resolve():
        write_file_atomic(dst / "tokenizer.model", src.read_bytes())
