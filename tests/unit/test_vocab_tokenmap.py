"""token_map.json round trip and validation; the precompiled-charsmap writer; dead-piece detection."""

import json

import pytest

from rethinktiny.errors import UserError
from rethinktiny.vocab.charsmap import build_charsmap
from rethinktiny.vocab.reach import dead_pieces
from rethinktiny.vocab.prune import build_pruned_proto
from rethinktiny.vocab.spmodel import NORMAL, load_model_proto
from rethinktiny.vocab.tokenmap import TOKEN_MAP_FORMAT, TokenMap, load_token_map, save_token_map


def test_round_trip_and_index(tmp_path):
    token_map = TokenMap((0, 1, 2, 7, 9), 10, "a" * 64, "b" * 64)
    save_token_map(tmp_path / "token_map.json", token_map)
    body = json.loads((tmp_path / "token_map.json").read_text())
    assert body["format"] == TOKEN_MAP_FORMAT and body["new_to_old"] == [0, 1, 2, 7, 9]
    assert body["old_vocab_size"] == 10 and body["new_vocab_size"] == 5
    loaded = load_token_map(tmp_path)  # the folder form finds token_map.json
    assert loaded == token_map and loaded.index().tolist() == [0, 1, 2, 7, 9]
    assert loaded.old_to_new() == {0: 0, 1: 1, 2: 2, 7: 3, 9: 4}


@pytest.mark.parametrize("body, message", [
    ({"format": "other", "old_vocab_size": 3, "new_to_old": [0]}, "key 'format'"),
    ({"format": TOKEN_MAP_FORMAT, "new_to_old": [0]}, "missing key 'old_vocab_size'"),
    ({"format": TOKEN_MAP_FORMAT, "old_vocab_size": 3, "new_to_old": [0, 3]}, r"new_to_old\[1\] = 3 is outside"),
    ({"format": TOKEN_MAP_FORMAT, "old_vocab_size": 3, "new_to_old": [1, 1]}, "more than once"),
    ({"format": TOKEN_MAP_FORMAT, "old_vocab_size": 3, "new_to_old": [0, "1"]}, "is not an integer"),
    ({"format": TOKEN_MAP_FORMAT, "old_vocab_size": 3, "new_to_old": []}, "non-empty list"),
    ({"format": TOKEN_MAP_FORMAT, "old_vocab_size": 3, "new_vocab_size": 5, "new_to_old": [0]}, "new_vocab_size 5"),
])
def test_bad_token_maps(tmp_path, body, message):
    path = tmp_path / "token_map.json"
    path.write_text(json.dumps(body))
    with pytest.raises(UserError, match=message):
        load_token_map(path)


def test_missing_or_not_json(tmp_path):
    with pytest.raises(UserError, match="token map not found"):
        load_token_map(tmp_path / "nope.json")
    (tmp_path / "token_map.json").write_text("{not json")
    with pytest.raises(UserError, match="not a JSON token map"):
        load_token_map(tmp_path)


def test_charsmap_is_read_by_sentencepiece_and_tokenizers():
    from tokenizers import normalizers

    mapping = {"a": "X", "é": "e", "中": "", "😀": "smile", "\u3000": " "}
    blob = build_charsmap(mapping)
    assert normalizers.Precompiled(blob).normalize_str("a b é 中 😀\u3000z") == "X b e  smile z"


def test_dead_piece_detection_on_a_broken_merge_path(tiny_tokenizer):
    proto = load_model_proto(tiny_tokenizer)
    assert dead_pieces(proto) == []
    # Drop one two-character piece that longer kept pieces are built from: they become dead.
    pieces = [p.piece for p in proto.pieces]
    part = next(i for i, p in enumerate(proto.pieces)
                if p.type == NORMAL and len(p.piece) == 2 and any(q.startswith(p.piece) and len(q) > 3 for q in pieces))
    broken = build_pruned_proto(proto, [i for i in range(len(pieces)) if i != part])
    dead = dead_pieces(broken)
    assert dead and all(broken.pieces[i].piece != pieces[part] for i in dead)
