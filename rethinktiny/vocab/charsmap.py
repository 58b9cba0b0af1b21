"""SentencePiece's NFKC-family normalization, rebuilt from parts Hugging Face applies correctly.

SentencePiece normalizes with a precompiled map (a darts-clone double-array trie of source ->
target strings) by *longest match* at each position. `tokenizers.normalizers.Precompiled` reads the
same map but walks grapheme clusters and uses the *shortest* match for the whole cluster, so any
cluster that starts with a mapped character loses the rest: "\\r\\n" becomes one space instead of
two, full-width "ｅ" + U+0301 becomes "e" instead of "é", Hangul jamo sequences change.

For the NFKC family (`nmt_nfkc`, `nfkc`, and their `_cf` variants) we instead use
`normalizers.NFKC()` for the bulk of the work and put in front of it only the single characters
that SentencePiece maps differently from that NFKC (control characters it deletes, the spaces it
maps to U+0020, characters newer than the Unicode tables inside `tokenizers`, case folding), as a
small precompiled map of single characters, built here. Carriage return goes first through a plain
replace because "\\r\\n" is the one control-character cluster. Measured on the shared corpus and
all 1.1M code points one at a time: identical to SentencePiece. What still differs: combining marks
in non-canonical order (NFKC reorders them, SentencePiece keeps them), a handful of Unicode 16
compositions, and a remapped character directly followed by a combining mark (the mark is lost,
as with `Precompiled` itself).
"""

from __future__ import annotations

import functools
import struct

NFKC_FAMILY = ("nmt_nfkc", "nfkc", "nmt_nfkc_cf", "nfkc_cf")

# darts-clone unit layout (see darts.h): label in bits 0-7, has_leaf in bit 8, the XOR offset to
# the children in bits 10-31 (bit 9 extends it by 8 bits); a leaf unit holds value | 1 << 31.
_HAS_LEAF = 1 << 8
_LEAF_FLAG = 1 << 31
_MAX_PLAIN_OFFSET = 1 << 21


def _trie(keys: list[bytes]) -> dict:
    root: dict = {}
    for index, key in enumerate(keys):
        node = root
        for byte in key:
            node = node.setdefault(byte, {})
        node[None] = index  # None marks "a key ends here", holding its index
    return root


def _place(units: dict[int, int], used_bases: set[int], node: dict, start: int) -> int:
    """Find an unused base whose child slots (base ^ label, and base itself for a leaf) are free.

    Bases must be unique: a lookup only checks the label stored in a slot, so two nodes sharing a
    base would see each other's children."""
    labels = [label for label in node if label is not None]
    base = start
    while True:
        slots = [base ^ label for label in labels] + ([base] if None in node else [])
        if base not in used_bases and all(slot not in units and slot != 0 for slot in slots):
            used_bases.add(base)
            return base
        base += 1


def build_charsmap(mapping: dict[str, str]) -> bytes:
    """Serialize `mapping` (source -> target, sources non-empty, no NUL) in SentencePiece's
    precompiled-charsmap format: uint32 trie size, darts-clone units, NUL-terminated targets.

    Args:
        mapping: normalization rules; a source is replaced by its target.
    """
    sources = sorted(mapping)
    targets = bytearray()
    offsets = []
    for source in sources:
        offsets.append(len(targets))
        targets += mapping[source].encode("utf-8") + b"\0"
    units: dict[int, int] = {0: 0}
    used_bases: set[int] = set()
    queue = [(0, _trie([s.encode("utf-8") for s in sources]), 0)]  # (position, node, own label)
    while queue:
        position, node, label = queue.pop(0)
        base = _place(units, used_bases, node, 1)
        offset = position ^ base
        if offset >= _MAX_PLAIN_OFFSET:
            raise ValueError("charsmap too large for the plain darts offset encoding")
        units[position] = label | (_HAS_LEAF if None in node else 0) | (offset << 10)
        if None in node:
            units[base] = offsets[node[None]] | _LEAF_FLAG
        for child_label, child in sorted((k, v) for k, v in node.items() if k is not None):
            units[base ^ child_label] = child_label  # placeholder, filled when visited
            queue.append((base ^ child_label, child, child_label))
    # Readers index base ^ byte for any byte without a bounds check: cover every base's block.
    size = (max(max(units), max(used_bases)) | 0xFF) + 1
    array = [units.get(i, 0) for i in range(size)]
    blob = struct.pack(f"<{len(array)}I", *array)
    return struct.pack("<I", len(blob)) + blob + bytes(targets)


def _single_char_normalizations(proto) -> list[tuple[str, str]]:
    """(character, SentencePiece's normalization of it alone) for every code point but NUL."""
    from rethinktiny.vocab.spmodel import processor_from_proto

    bare = type(proto)()
    bare.CopyFrom(proto)
    spec = bare.normalizer_spec
    spec.add_dummy_prefix = spec.remove_extra_whitespaces = spec.escape_whitespaces = False
    del bare.pieces[:]  # keep the normalizer only; a processor needs some pieces
    for piece, kind in (("<unk>", 2), ("a", 1)):
        bare.pieces.add(piece=piece, score=0.0, type=kind)
    bare.trainer_spec.unk_id, bare.trainer_spec.bos_id, bare.trainer_spec.eos_id = 0, -1, -1
    bare.trainer_spec.pad_id = -1
    bare.trainer_spec.byte_fallback = False
    chars = [chr(c) for c in range(1, 0x110000) if not 0xD800 <= c < 0xE000]
    return list(zip(chars, processor_from_proto(bare).normalize(chars)))


@functools.lru_cache(maxsize=8)
def _rules_for(proto_bytes: bytes) -> tuple[tuple[str, str], ...]:
    from sentencepiece import sentencepiece_model_pb2 as pb2
    from tokenizers import normalizers

    proto = pb2.ModelProto.FromString(proto_bytes)
    pairs = _single_char_normalizations(proto)
    # Joined with NUL (NFKC leaves it alone and it composes with nothing) to normalize in one call.
    nfkc = normalizers.NFKC().normalize_str("\0".join(c for c, _ in pairs)).split("\0")
    return tuple((c, sp) for (c, sp), nf in zip(pairs, nfkc) if sp != nf)


def nfkc_exceptions(proto) -> dict[str, str]:
    """Single characters SentencePiece normalizes differently from `tokenizers`' NFKC: char -> target.

    Args:
        proto: SentencePiece `ModelProto` with an NFKC-family normalization rule.
    """
    # Cached on the rule alone (name and map; the whitespace flags do not matter here): computing
    # it takes about two seconds.
    normalizer_only = type(proto)()
    normalizer_only.normalizer_spec.name = proto.normalizer_spec.name
    normalizer_only.normalizer_spec.precompiled_charsmap = proto.normalizer_spec.precompiled_charsmap
    normalizer_only.trainer_spec.model_type = proto.trainer_spec.model_type
    return dict(_rules_for(normalizer_only.SerializeToString()))


# Noncharacters U+FDD0..U+FDEF are reserved by Unicode for internal use and NFKC leaves them alone:
# they carry a character past NFKC when SentencePiece's target is not NFKC-stable (SentencePiece
# keeps full-width "～", NFKC would make it "~").
_PLACEHOLDERS = [chr(c) for c in range(0xFDD0, 0xFDF0)]


def sentencepiece_normalizer_steps(proto) -> list:
    """Hugging Face normalizers equal to the model's precompiled rule (before whitespace handling).

    Args:
        proto: SentencePiece `ModelProto`.
    """
    from tokenizers import normalizers

    spec = proto.normalizer_spec
    if not spec.precompiled_charsmap:
        return []
    if spec.name not in NFKC_FAMILY:
        # A custom rule: tokenizers' own reading of the map is the best available.
        return [normalizers.Precompiled(spec.precompiled_charsmap)]
    exceptions = nfkc_exceptions(proto)
    steps, restore = [], []
    carriage_return = exceptions.pop("\r", None)
    if carriage_return is not None:
        steps.append(normalizers.Replace("\r", carriage_return))
    unstable = _nfkc_unstable_targets(exceptions)
    for placeholder, char in zip(_PLACEHOLDERS, unstable):
        restore.append(normalizers.Replace(placeholder, exceptions[char]))
        exceptions[char] = placeholder
    if exceptions:
        steps.append(normalizers.Precompiled(build_charsmap(exceptions)))
    return steps + [normalizers.NFKC()] + restore


def _nfkc_unstable_targets(exceptions: dict[str, str]) -> list[str]:
    from tokenizers import normalizers

    nfkc = normalizers.NFKC()
    return sorted(c for c, target in exceptions.items() if nfkc.normalize_str(target) != target)
