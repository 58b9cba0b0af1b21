"""Hugging Face tokenizer files whose ids equal SentencePiece's, for a SentencePiece BPE model.

`transformers` cannot be trusted to convert a `tokenizer.model` by itself: with transformers 5.x a
plain `LlamaTokenizer(vocab_file=...)`, or a folder holding only `tokenizer.model` and a minimal
`tokenizer_config.json`, applies Llama's own normalizer defaults and gives different ids from
SentencePiece on essentially every English/Chinese document. So we write `tokenizer.json` ourselves,
translating the model's *own* settings:

* normalizer: the precompiled normalization rule (`nmt_nfkc` etc.; nothing for `identity`), then
  `remove_extra_whitespaces` (collapse runs of spaces, strip both ends), spaces -> "▁", and the dummy
  prefix "▁" — applied to the whole text once, as SentencePiece does.
* model: BPE over every piece with byte fallback. SentencePiece merges the adjacent pair whose
  concatenation is the highest-scoring piece; Hugging Face BPE applies the lowest-ranked merge. So the
  merge list holds every split (a, b) of every piece p = a + b with a and b pieces, ranked by p's
  score (ties: lower piece id first, then the shorter left part).
* user-defined pieces are never split and never merged with neighbours. Without a dummy prefix or
  whitespace removal they are added tokens matched in the raw text (as SentencePiece's normalizer
  matches them). With either setting the text must be normalized as a whole first, so they are
  split out after normalization by a pre-tokenizer and found whole by the BPE model
  (`ignore_merges`), which is exact unless a stretch between two user-defined pieces is itself the
  literal text of a control or byte piece (e.g. "<s>") or of a piece SentencePiece cannot produce.
* control/unknown pieces (<unk>, <s>, </s>) are special tokens, but `split_special_tokens` is on:
  SentencePiece encodes the literal text "<s>" as ordinary characters, and so does this tokenizer.

Choice: no BOS/EOS are added by default, so `tokenizer(text)["input_ids"] == sp.encode(text)`.
The project's tokenized data wraps each document in <s> ... </s> (`data tokenize`); a caller that
wants that in Hugging Face passes `add_bos_token=True` / `add_eos_token=True`.

Known limit: two *different* pieces with the same score that overlap in a text (both could be
formed, they share a symbol) are resolved leftmost-first by SentencePiece and by merge rank here.
The shared InternLM tokenizers contain same-score pieces; the parity tests measure the effect.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from rethinktiny.artifacts import dumps_json, write_file_atomic
from rethinktiny.errors import UserError
from rethinktiny.vocab.spmodel import (BYTE, CONTROL, NORMAL, UNKNOWN, UNUSED, USER_DEFINED,
                                       load_model_proto, require_bpe, resolve_model_path)

SPACE = "▁"
HF_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model")
# The pieces SentencePiece's BPE forms by merging. UNUSED pieces are left out: SentencePiece splits
# them again before output, and none of our tokenizers has any except the "\\0" piece below.
MERGEABLE = (NORMAL, USER_DEFINED)


def effective_types(proto) -> list[int]:
    """Piece types as SentencePiece uses them: with byte fallback it treats a piece "\\0" as UNUSED."""
    byte_fallback = proto.trainer_spec.byte_fallback
    return [UNUSED if (byte_fallback and p.piece == "\0") else p.type for p in proto.pieces]


def bpe_merges(proto) -> list[tuple[str, str]]:
    """Every (left, right) pair whose concatenation is a piece, in SentencePiece's priority order.

    Args:
        proto: SentencePiece `ModelProto` (BPE).
    """
    types = effective_types(proto)
    mergeable = {p.piece: i for i, p in enumerate(proto.pieces) if types[i] in MERGEABLE}
    ranked = []
    for piece, index in mergeable.items():
        score = proto.pieces[index].score
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in mergeable and right in mergeable:
                ranked.append((-score, index, cut, left, right))
    ranked.sort()
    return [(left, right) for _, _, _, left, right in ranked]


def hf_vocab(proto) -> dict[str, int]:
    """Piece -> id. An UNUSED piece gets a key that no text produces: SentencePiece never outputs
    it (its text falls back to other pieces or bytes), but the id must keep a name."""
    types = effective_types(proto)
    vocab = {}
    for i, piece in enumerate(proto.pieces):
        key = piece.piece if types[i] != UNUSED else f"<unused:{i}:{piece.piece.encode().hex()}>"
        vocab[key] = i
    return vocab


def _needs_global_normalization(proto) -> bool:
    spec = proto.normalizer_spec
    return spec.add_dummy_prefix or spec.remove_extra_whitespaces


def _user_defined(proto) -> list[str]:
    return [p.piece for p in proto.pieces if p.type == USER_DEFINED]


def _normalizer(proto):
    from tokenizers import Regex, normalizers

    spec = proto.normalizer_spec
    steps = []
    if spec.precompiled_charsmap:
        steps.append(normalizers.Precompiled(spec.precompiled_charsmap))
    if spec.remove_extra_whitespaces:
        # SentencePiece only treats U+0020 (after the charsmap) as whitespace here.
        steps.append(normalizers.Replace(Regex(" {2,}"), " "))
        steps.append(normalizers.Replace(Regex(r"\A +| +\z"), ""))
    if spec.escape_whitespaces:
        steps.append(normalizers.Replace(" ", SPACE))
    if spec.add_dummy_prefix:
        steps.append(normalizers.Prepend(SPACE))  # a no-op on empty text, as in SentencePiece
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
    from tokenizers import AddedToken, Tokenizer, models

    vocab = hf_vocab(proto)
    user_defined = _user_defined(proto)
    split_user_defined = bool(user_defined) and _needs_global_normalization(proto)
    unk = proto.pieces[proto.trainer_spec.unk_id].piece if proto.trainer_spec.unk_id >= 0 else None
    tokenizer = Tokenizer(models.BPE(
        vocab=vocab, merges=bpe_merges(proto), unk_token=unk, fuse_unk=True,
        byte_fallback=proto.trainer_spec.byte_fallback, ignore_merges=split_user_defined))
    tokenizer.normalizer = _normalizer(proto)
    tokenizer.decoder = _decoder(proto)
    if split_user_defined:
        tokenizer.pre_tokenizer = _user_defined_splitter(user_defined)
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
