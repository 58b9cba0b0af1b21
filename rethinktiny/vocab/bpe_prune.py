"""Prune a byte-level BPE `tokenizer.json` (LLaMA-3, Qwen2.5, SmolLM2, GPT-2 style) to `n` ids by
corpus frequency, with no unreachable tokens.

The Hugging Face anchor, vocabtrimmer, keeps the most frequent tokens and the merges between kept
tokens. A kept token whose merge path lost a link can then never be produced: Hugging Face BPE
builds a word from its bytes by applying merges (lowest rank first), so a token exists in the
output only if every token on the way to it exists too. Its embedding row is dead weight, and its
text now costs more tokens.

`prune_bpe` instead:
1. keeps every id that must survive whatever the counts say: added tokens (special or not), the
   byte-level alphabet (the 256 byte symbols that are in the vocabulary), the model's `unk_token`
   and every id the post-processor or padding names;
2. walks the other (merged) tokens from most to least frequent (ties: lower id, i.e. the earlier
   merge) and keeps each *together with its merge path* — every token BPE forms on the way from the
   token's bytes to it — when the whole path fits, until exactly `n` ids are kept. Tokens the
   original itself cannot produce from their own text are never candidates;
3. keeps the merges whose two parts and result are all kept, in their original order, and
   renumbers the kept ids densely in their original order (`new_to_old` is increasing).

Why the merge path is enough: on a kept token's text, the pruned model can apply a subset of the
merges the original could, always including the one the original applied (the lowest-ranked), so
it takes the same steps and ends in the token. Parents are kept at the price of ids (counted
against `n`) rather than dropping a frequent token whose parents are rare as final tokens:
`bench/vocab_prune_bpe.py` measures both, and keeping the parents needs fewer held-out tokens.

Reachable is checked with the `tokenizers` library itself: a kept merged token is reachable when
the pruned BPE model, given the token's string as one pre-token, returns exactly that token. That
is the rule for every token, because a token's bytes need not be valid UTF-8 on their own (a piece
of a Chinese character) and then it has no text to encode; tests also check the whole pipeline
(`encode(decode([id])) == [id]`) for the tokens whose text the pre-tokenizer keeps in one piece.

Normalizer, pre-tokenizer and decoder are copied unchanged; the post-processor's and padding's ids
are renumbered; added tokens keep their content and flags with new ids.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rethinktiny.errors import UserError
from rethinktiny.vocab.tokenmap import TokenMap

TOKENIZER_JSON = "tokenizer.json"
# Files of an HF tokenizer folder copied along (ids renumbered where they hold ids).
CONFIG_FILES = ("tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "chat_template.json")


def byte_alphabet() -> list[str]:
    """The 256 characters byte-level BPE writes bytes as (GPT-2's table, from `tokenizers`)."""
    from tokenizers import pre_tokenizers

    return sorted(pre_tokenizers.ByteLevel.alphabet())


def _has_byte_level(component) -> bool:
    if isinstance(component, dict):
        if component.get("type") == "ByteLevel":
            return True
        return any(_has_byte_level(c) for c in component.get("pretokenizers", []) or [])
    return False


def check_byte_level_bpe(body, source: str = TOKENIZER_JSON) -> None:
    """A `tokenizer.json` body with a BPE model and a ByteLevel pre-tokenizer, or a UserError.

    Args:
        body: the parsed JSON.
        source: file name for error messages.
    """
    model = body.get("model") if isinstance(body, dict) else None
    if not isinstance(model, dict):
        raise UserError(f"{source}: not a Hugging Face tokenizer.json (no 'model')")
    if model.get("type") != "BPE":
        raise UserError(f"{source}: model.type is {model.get('type')!r}; only BPE tokenizers can be pruned")
    if not isinstance(model.get("vocab"), dict):
        raise UserError(f"{source}: model.vocab is not a token -> id object")
    if not _has_byte_level(body.get("pre_tokenizer")):
        raise UserError(f"{source}: pre_tokenizer has no ByteLevel step; only byte-level BPE is supported "
                        f"(SentencePiece models: pass the tokenizer.model)")
    for key in ("continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key):
            raise UserError(f"{source}: model.{key} is {model[key]!r}; byte-level BPE has none")
    if not isinstance(model.get("merges"), list):
        raise UserError(f"{source}: model.merges is not a list")


def parse_merges(model: dict, source: str = TOKENIZER_JSON) -> list[tuple[str, str]]:
    """The merge list as pairs; both of the file's layouts ("a b" strings, [a, b] lists)."""
    pairs = []
    for rank, merge in enumerate(model["merges"]):
        parts = merge.split(" ") if isinstance(merge, str) else merge
        if not (isinstance(parts, (list, tuple)) and len(parts) == 2 and all(isinstance(p, str) for p in parts)):
            raise UserError(f"{source}: model.merges[{rank}] is not a pair of tokens ({merge!r})")
        pairs.append((parts[0], parts[1]))
    return pairs


def merge_ranks(model: dict) -> dict[tuple[str, str], int]:
    """(left, right) -> rank as Hugging Face BPE uses it: a pair listed twice takes its last rank
    (measured with `tokenizers` 0.23: merges [ab, bc, ab] encode "abc" as a + bc)."""
    return {pair: rank for rank, pair in enumerate(parse_merges(model))}


def id_table(body: dict, source: str = TOKENIZER_JSON) -> dict[int, str]:
    """Every id of the tokenizer (model vocabulary and added tokens) -> its string."""
    ids = {int(i): token for token, i in body["model"]["vocab"].items()}
    for entry in body.get("added_tokens") or []:
        old = ids.setdefault(int(entry["id"]), entry["content"])
        if old != entry["content"]:
            raise UserError(f"{source}: added token {entry['content']!r} has id {entry['id']}, which the "
                            f"vocabulary gives to {old!r}")
    return ids


def tokenizer_json_vocab_size(body: dict) -> int:
    """Rows an embedding needs for this tokenizer: largest id + 1 (added tokens included)."""
    return max(id_table(body)) + 1


def bpe_word(symbols: list[str], ranks: dict[tuple[str, str], int]) -> tuple[list[str], list[str]]:
    """Hugging Face BPE on one word: apply the lowest-ranked adjacent merge (leftmost on ties)
    until none applies. Returns (final symbols, tokens formed on the way, in order).

    Args:
        symbols: the word's initial symbols (byte-level characters).
        ranks: (left, right) -> merge rank.
    """
    symbols, formed = list(symbols), []
    while len(symbols) > 1:
        best, best_rank = -1, None
        for i in range(len(symbols) - 1):
            rank = ranks.get((symbols[i], symbols[i + 1]))
            if rank is not None and (best_rank is None or rank < best_rank):
                best, best_rank = i, rank
        if best < 0:
            break
        symbols[best:best + 2] = [symbols[best] + symbols[best + 1]]
        formed.append(symbols[best])
    return symbols, formed


def merge_paths(body: dict, candidates: list[int]) -> dict[int, frozenset[int]]:
    """For each candidate the original BPE produces from its own string, the ids of every token on
    its merge path (itself and its bytes included); others are left out. Under the model's
    `ignore_merges` (LLaMA-3: a pre-token that is a whole token is looked up, not merged) a token
    no merge sequence forms is still produced, alone: its path is itself.

    (Building paths from each token's single producing merge instead gave the same 48,900 paths
    on SmolLM2 in 0.6-0.8 of the time (busy machine), but needs this simulation anyway for tokens several
    merges form; one way is kept.)

    Args:
        body: tokenizer.json.
        candidates: ids of merged tokens.
    """
    model = body["model"]
    vocab, names, ranks = model["vocab"], id_table(body), merge_ranks(model)
    paths = {}
    for i in candidates:
        token = names[i]
        final, formed = bpe_word(list(token), ranks)
        if final == [token] and all(c in vocab for c in token):
            paths[i] = frozenset(vocab[t] for t in (*token, *formed))
        elif model.get("ignore_merges"):
            paths[i] = frozenset([i])
    return paths


@dataclass
class Required:
    """Ids kept whatever the counts say, by why."""

    added: set[int]
    byte: set[int]
    referenced: set[int]  # unk_token, post-processor and padding ids not already in the others

    @property
    def all(self) -> set[int]:
        return self.added | self.byte | self.referenced


def _post_processor_ids(processor) -> list[int]:
    if not processor:
        return []
    kind = processor.get("type")
    if kind == "TemplateProcessing":
        return [int(i) for entry in processor.get("special_tokens", {}).values() for i in entry.get("ids", [])]
    if kind in ("RobertaProcessing", "BertProcessing"):
        return [int(processor[k][1]) for k in ("sep", "cls") if processor.get(k)]
    if kind == "Sequence":
        return [i for p in processor.get("processors", []) for i in _post_processor_ids(p)]
    if kind == "ByteLevel":
        return []
    raise UserError(f"{TOKENIZER_JSON}: post_processor type {kind!r} is not supported (its ids cannot be "
                    f"renumbered)")


def required_ids(body: dict) -> Required:
    """Added tokens, byte symbols in the vocabulary, and ids other parts of the file name."""
    vocab = body["model"]["vocab"]
    added = {int(e["id"]) for e in body.get("added_tokens") or []}
    byte = {vocab[c] for c in byte_alphabet() if c in vocab} - added
    referenced = set(_post_processor_ids(body.get("post_processor")))
    unk = body["model"].get("unk_token")
    if unk is not None:
        if unk not in vocab:
            raise UserError(f"{TOKENIZER_JSON}: model.unk_token {unk!r} is not in the vocabulary")
        referenced.add(vocab[unk])
    padding = body.get("padding")
    if isinstance(padding, dict) and "pad_id" in padding:
        referenced.add(int(padding["pad_id"]))
    return Required(added, byte, referenced - added - byte)


def candidate_order(body: dict, counts: np.ndarray, required: set[int]) -> list[int]:
    """Merged tokens (model vocabulary, not required), most frequent first, ties by lower id."""
    merged = [i for i in body["model"]["vocab"].values() if i not in required]
    return sorted(merged, key=lambda i: (-int(counts[i]), i))


def select_tokens(required: set[int], order: list[int], paths: dict[int, frozenset[int]],
                  n: int) -> tuple[list[int], int, int]:
    """(kept ids ascending, merged tokens kept for their frequency, merged tokens kept only as
    parts of a frequent token's merge path).

    Args:
        required: ids kept whatever the counts say.
        order: candidate ids, most frequent first.
        paths: merge path of each candidate the original produces.
        n: exact number of ids to keep.
    """
    kept, chosen = set(required), 0
    for i in order:
        if len(kept) == n:
            break
        path = paths.get(i)
        if path is None or i in kept:
            continue
        if len(kept) + len(path - kept) <= n:
            kept |= path
            chosen += 1
    if len(kept) < n:
        raise UserError(f"--vocab-num {n}: only {len(kept)} ids can be kept without unreachable tokens (the "
                        f"tokenizer's other tokens are ones it never produces from their own text)")
    return sorted(kept), chosen, len(kept) - len(required) - chosen


def _renumber_post_processor(processor, old_to_new: dict[int, int]):
    if not processor:
        return processor
    processor = copy.deepcopy(processor)
    kind = processor.get("type")
    if kind == "TemplateProcessing":
        for entry in processor.get("special_tokens", {}).values():
            entry["ids"] = [old_to_new[int(i)] for i in entry.get("ids", [])]
    elif kind in ("RobertaProcessing", "BertProcessing"):
        for key in ("sep", "cls"):
            if processor.get(key):
                processor[key] = [processor[key][0], old_to_new[int(processor[key][1])]]
    elif kind == "Sequence":
        processor["processors"] = [_renumber_post_processor(p, old_to_new) for p in processor["processors"]]
    return processor


def build_pruned_json(body: dict, keep: list[int]) -> dict:
    """A copy of `body` with only the `keep` ids (ascending), renumbered densely; merges whose
    parts or result are gone are dropped, the others keep their order and layout.

    Args:
        body: the original tokenizer.json (not modified).
        keep: old ids to keep, ascending.
    """
    old_to_new = {old: new for new, old in enumerate(keep)}
    new = {key: (None if key == "model" else copy.deepcopy(value)) for key, value in body.items()}  # key order kept
    model = {k: v for k, v in body["model"].items() if k not in ("vocab", "merges")}
    vocab = {token: old_to_new[i] for token, i in body["model"]["vocab"].items() if i in old_to_new}
    merges = [m for m, (a, b) in zip(body["model"]["merges"], parse_merges(body["model"]))
              if a in vocab and b in vocab and a + b in vocab]
    model["vocab"] = dict(sorted(vocab.items(), key=lambda item: item[1]))
    model["merges"] = copy.deepcopy(merges)
    new["model"] = model
    new["added_tokens"] = [dict(e, id=old_to_new[int(e["id"])]) for e in body.get("added_tokens") or []]
    new["post_processor"] = _renumber_post_processor(body.get("post_processor"), old_to_new)
    if isinstance(new.get("padding"), dict) and "pad_id" in new["padding"]:
        new["padding"]["pad_id"] = old_to_new[int(new["padding"]["pad_id"])]
    return new


def load_json_tokenizer(body: dict):
    """A `tokenizers.Tokenizer` from a tokenizer.json body (the library's own validation)."""
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_str(json.dumps(body, ensure_ascii=False))
    except Exception as err:  # the Rust side raises a plain Exception for every malformed file
        raise UserError(f"{TOKENIZER_JSON}: the tokenizers library rejects it ({str(err).splitlines()[0]})") from None


def check_ids_as_loaded(tokenizer, body: dict, source: str = TOKENIZER_JSON) -> None:
    """Every id of the file must be the id `tokenizers` gives its token. The library numbers an
    added token that is not in the model vocabulary itself (the next id after the vocabulary),
    whatever the file says; dense renumbering keeps that true for files where it held.

    Args:
        tokenizer: `tokenizers.Tokenizer` loaded from `body`.
        body: the tokenizer.json it was loaded from.
    """
    for i, token in id_table(body, source).items():
        if tokenizer.token_to_id(token) != i:
            raise UserError(f"{source}: token {token!r} has id {i} in the file but {tokenizer.token_to_id(token)} "
                            f"when loaded by the tokenizers library")


def unreachable_tokens(body: dict, ids: list[int] | None = None) -> list[int]:
    """Merged tokens the BPE model does not return when given their own string as one pre-token
    (checked by the `tokenizers` library, see the module docstring).

    Args:
        body: tokenizer.json.
        ids: ids to check (default: every model token that is not required).
    """
    tokenizer = load_json_tokenizer(body)
    check_ids_as_loaded(tokenizer, body)
    model = tokenizer.model
    names = {i: t for t, i in body["model"]["vocab"].items()}
    if ids is None:
        required = required_ids(body).all
        ids = [i for i in names if i not in required]
    return [i for i in ids if [t.id for t in model.tokenize(names[i])] != [i]]


def _kinds(required: Required, ids) -> dict[str, int]:
    ids = list(ids)
    added = sum(1 for i in ids if i in required.added)
    byte = sum(1 for i in ids if i in required.byte)
    referenced = sum(1 for i in ids if i in required.referenced)
    return {"added": added, "byte": byte, "referenced": referenced, "merged": len(ids) - added - byte - referenced}


def _coverage(counts: np.ndarray, keep: list[int]) -> dict:
    kept = np.asarray(keep, dtype=np.int64)
    total = int(counts.sum())
    return {"counted_tokens": total, "tokens_of_kept_pieces": int(counts[kept].sum()),
            "token_coverage": float(counts[kept].sum() / total) if total else None,
            "seen_ids": int(np.count_nonzero(counts)), "seen_ids_kept": int(np.count_nonzero(counts[kept]))}


def _dense_counts(counts: np.ndarray, size: int) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.int64)
    if counts.ndim != 1:
        raise UserError("counts: expected a 1-D array indexed by token id")
    beyond = np.flatnonzero(counts[size:])
    if beyond.size:
        raise UserError(f"counts: token id {size + int(beyond[0])} is outside the tokenizer (vocabulary size "
                        f"{size}); were the counts made with another tokenizer?")
    out = np.zeros(size, dtype=np.int64)
    out[:min(size, counts.shape[0])] = counts[:size]
    return out


def prune_bpe(tokenizer_json: dict, counts: np.ndarray, n: int) -> tuple[dict, TokenMap, dict]:
    """Prune a byte-level BPE tokenizer.json to exactly `n` ids (see the module docstring).

    Args:
        tokenizer_json: the parsed tokenizer.json (not modified).
        counts: dense token counts over the training corpus (index = id of this tokenizer).
        n: ids in the result, added and byte tokens included.
    Returns:
        (new tokenizer.json body, token map new id -> old id (without file digests), report dict).
    """
    check_byte_level_bpe(tokenizer_json)
    check_ids_as_loaded(load_json_tokenizer(tokenizer_json), tokenizer_json)  # or the renumbered ids drift
    names = id_table(tokenizer_json)
    size = max(names) + 1
    counts = _dense_counts(counts, size)
    required = required_ids(tokenizer_json)
    must = required.all
    if n > len(names):
        raise UserError(f"--vocab-num {n} is larger than the tokenizer ({len(names)} ids)")
    if n < len(must):
        raise UserError(f"--vocab-num {n} is smaller than the {len(must)} ids the tokenizer must keep "
                        f"({len(required.added)} added, {len(required.byte)} byte, {len(required.referenced)} "
                        f"named by unk_token/post-processor/padding)")
    model = tokenizer_json["model"]
    order = candidate_order(tokenizer_json, counts, must)
    paths = merge_paths(tokenizer_json, order)
    keep, chosen, path_only = select_tokens(must, order, paths, n)
    new_json = build_pruned_json(tokenizer_json, keep)
    report = {
        "old_vocab_size": size, "new_vocab_size": len(keep),
        "coverage": _coverage(counts, keep),
        "tokens_by_kind": {"original": _kinds(required, names), "kept": _kinds(required, keep)},
        "merged_tokens": {"kept_for_frequency": chosen, "kept_for_merge_paths": path_only,
                          "unreachable_in_original": len(order) - len(paths)},
        "merges": {"original": len(model["merges"]), "kept": len(new_json["model"]["merges"])},
        "unreachable_tokens": len(unreachable_tokens(new_json)),
    }
    return new_json, TokenMap(tuple(keep), size), report


def resolve_tokenizer_json(path: str | os.PathLike) -> Path:
    """A tokenizer.json file, or the one inside a Hugging Face tokenizer folder."""
    path = Path(path)
    if path.is_dir():
        path = path / TOKENIZER_JSON
    if not path.is_file():
        raise UserError(f"{path}: tokenizer file not found (pass a tokenizer.json or a folder holding one)")
    return path


def read_tokenizer_json(path: str | os.PathLike) -> dict:
    """The parsed tokenizer.json of a file or folder, checked to be byte-level BPE.

    Args:
        path: tokenizer.json, or a folder holding one.
    """
    path = resolve_tokenizer_json(path)
    try:
        body = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not a JSON tokenizer file ({err})") from None
    check_byte_level_bpe(body, str(path))
    return body


def recorded_vocab_size(counts_file: str | os.PathLike) -> tuple[int, str] | None:
    """(vocabulary size, tokenizer) that `vocab count --tokenizer` recorded for the counts behind a
    frequency file, found through `vocab merge`'s sidecar manifest; None when not recorded."""
    try:
        merged = json.loads(Path(f"{counts_file}.manifest.json").read_text(encoding="utf-8"))
        counted = json.loads((Path(merged["args"]["src"]) / "manifest.json").read_text(encoding="utf-8"))
        recorded = counted["tokenizer"]
        return int(recorded["vocab_size"]), str(recorded["path"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # counted without --tokenizer, or the folders moved: the id range check remains


def _config_files(src_folder: Path, tmp: Path, old_to_new: dict[int, int]) -> list[str]:
    """Copy the tokenizer config files of the source folder, with `added_tokens_decoder` ids
    renumbered; returns the names written."""
    written = []
    for name in CONFIG_FILES:
        src = src_folder / name
        if not src.is_file():
            continue
        if name == "tokenizer_config.json":
            config = json.loads(src.read_text(encoding="utf-8"))
            decoder = config.get("added_tokens_decoder")
            if isinstance(decoder, dict):
                config["added_tokens_decoder"] = {str(old_to_new[int(k)]): v for k, v in decoder.items()
                                                  if int(k) in old_to_new}
            _write_text(tmp / name, json.dumps(config, ensure_ascii=False, indent=2) + "\n")
        else:
            _write_text(tmp / name, src.read_bytes())
        written.append(name)
    if "tokenizer_config.json" not in written:  # a bare tokenizer.json: what AutoTokenizer needs
        _write_text(tmp / "tokenizer_config.json", json.dumps(
            {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False}, indent=2) + "\n")
        written.append("tokenizer_config.json")
    return written


def _write_text(path: Path, data: str | bytes) -> None:
    from rethinktiny.artifacts import write_file_atomic

    write_file_atomic(path, data)


def prune_tokenizer_json(tokenizer, counts_file, vocab_num: int, dst, preset: str | None = "pangu_pi_1b_pro",
                         force: bool = False) -> dict:
    """Prune a byte-level BPE tokenizer.json by a frequency file and write the result folder:
    `tokenizer.json`, the source folder's tokenizer config files, `token_map.json`, `report.json`,
    `manifest.json`, atomically (nothing is written on an error). Returns the report.

    Args:
        tokenizer: tokenizer.json, or a Hugging Face tokenizer folder holding one.
        counts_file: `{"<id>": count}` JSON (`vocab merge`).
        vocab_num: ids in the pruned tokenizer.
        dst: output folder.
        preset: model preset for the embedding-share figures (None: skip them).
        force: replace an existing `dst`.
    """
    from rethinktiny.artifacts import check_writable, file_digest, output_dir, write_json, write_manifest
    from rethinktiny.vocab.prune import embedding_shares
    from rethinktiny.vocab.sum_counts import read_frequency_file
    from rethinktiny.vocab.tokenmap import TOKEN_MAP_FILE, save_token_map

    check_writable(dst, force)
    source = resolve_tokenizer_json(tokenizer)
    body = read_tokenizer_json(source)
    size = tokenizer_json_vocab_size(body)
    recorded = recorded_vocab_size(counts_file)
    if recorded is not None and recorded[0] != size:
        raise UserError(f"{counts_file}: counted for a tokenizer of {recorded[0]} ids ({recorded[1]}), but {source} "
                        f"has {size}")
    if preset is not None:
        embedding_shares(preset, 1, 1)  # fail on an unknown preset before the work
    counts = read_frequency_file(counts_file, size)
    new_json, token_map, report = prune_bpe(body, counts, vocab_num)
    if preset is not None:
        report["embedding_share"] = embedding_shares(preset, size, vocab_num)
    with output_dir(dst, force) as tmp:
        _write_text(tmp / TOKENIZER_JSON, json.dumps(new_json, ensure_ascii=False, indent=2) + "\n")
        report["files"] = [TOKENIZER_JSON] + _config_files(source.parent, tmp, token_map.old_to_new())
        save_token_map(tmp / TOKEN_MAP_FILE, TokenMap(token_map.new_to_old, size, file_digest(source),
                                                      file_digest(tmp / TOKENIZER_JSON)))
        write_json(tmp / "report.json", report)
        write_manifest(tmp, "vocab prune", dict(tokenizer=str(source), counts=str(counts_file),
                                                vocab_num=vocab_num, preset=preset),
                       inputs={"tokenizer": source, "counts": counts_file})
    return report
