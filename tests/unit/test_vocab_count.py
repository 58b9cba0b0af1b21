"""vocab count / merge: exact counts, malformed lines reported, resumable, seed-compatible files."""

import json
import os
from collections import Counter

import numpy as np
import pytest

from rethinktiny.data.tokenized import write_documents
from rethinktiny.errors import UserError
from rethinktiny.data.binparse import parse_bin
from rethinktiny.vocab.count import count_file, count_folder
from rethinktiny.vocab.sum_counts import merge_counts, read_frequency_file, read_result


def _reference_counts(folder):
    """The seed's algorithm: json per line, Python dict (independent of the code under test)."""
    counts = Counter()
    for root, _, files in os.walk(folder, followlinks=True):
        for name in files:
            if name.endswith(".bin"):
                with open(os.path.join(root, name), encoding="utf-8") as f:
                    for line in f:
                        counts.update(json.loads(line)["tokens"])
    return counts


def _save_meta(bin_path, rows):
    with open(f"{bin_path}.meta", "wb") as f:  # np.save on a name would append ".npy"
        np.save(f, np.asarray(rows, dtype=np.int64))


def _dense(counter):
    out = np.zeros(max(counter) + 1, dtype=np.int64)
    for token, n in counter.items():
        out[token] = n
    return out


def test_counts_equal_seed_algorithm(tokenized_sample, tmp_path):
    summary = count_folder(tokenized_sample, tmp_path / "counts", process_num=2)
    total = merge_counts(tmp_path / "counts", tmp_path / "total.json")
    expected = _dense(_reference_counts(tokenized_sample))
    assert np.array_equal(total[:len(expected)], expected) and not total[len(expected):].any()
    assert summary.tokens == expected.sum() and summary.malformed_lines == 0
    # The frequency file is the seed's format: {"<id>": count}, string keys, seen ids only.
    body = json.loads((tmp_path / "total.json").read_text())
    assert all(isinstance(k, str) and k.isdigit() for k in body) and 0 not in body.values()
    assert {int(k): v for k, v in body.items()} == dict(_reference_counts(tokenized_sample))


@pytest.mark.parametrize("separators", [(",", ":"), (", ", ": ")])
@pytest.mark.parametrize("with_meta", [True, False])
def test_both_line_layouts_with_and_without_meta(tmp_path, separators, with_meta):
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 70000, size=rng.integers(0, 50)).tolist() for _ in range(200)] + [[0], [7, 7, 7]]
    path = tmp_path / "d" / "x.bin"
    write_documents(path, docs)  # writes the .meta index
    path.write_text("".join(json.dumps({"tokens": d}, separators=separators) + "\n" for d in docs))
    if with_meta:
        lengths = [len(json.dumps({"tokens": d}, separators=separators)) + 1 for d in docs]
        _save_meta(path, np.stack([np.cumsum([0] + lengths[:-1]), [len(d) for d in docs]], axis=1))
    else:
        os.remove(f"{path}.meta")
    counted = count_file(path)
    expected = _dense(Counter(t for d in docs for t in d))
    assert np.array_equal(counted.counts, expected) and counted.documents == len(docs) and not counted.malformed


def test_malformed_lines_reported_with_line_numbers(tmp_path):
    data = (b'{"tokens":[1,2,3]}\n'
            b'not json at all\n'
            b'{"tokens": [4, 5]}\n'
            b'{"tokens":[1,,2]}\n'
            b'{"other": [9]}\n'
            b'{"tokens":[01]}\n'
            b'\n'
            b'{"tokens": [6], "extra": true}\n'
            b'{"tokens":[-1]}\n'
            b'{"tokens":[1 2]}\n')
    parsed = parse_bin(data)
    assert sorted(parsed.ids.tolist()) == [1, 2, 3, 4, 5, 6]  # valid JSON in another layout still counts
    assert [line for line, _ in parsed.malformed] == [2, 4, 5, 6, 9, 10]
    assert parsed.documents == 3


def test_malformed_lines_are_never_silently_dropped(tmp_path):
    src = tmp_path / "data" / "t"
    write_documents(src / "a.bin", [[1, 2], [3]])
    with open(src / "a.bin", "ab") as f:
        f.write(b"garbage\n")
    os.remove(src / "a.bin.meta")
    summary = count_folder(tmp_path / "data", tmp_path / "out", process_num=1)
    assert summary.malformed_lines == 1 and summary.first_malformed.startswith("t/a.bin:3")
    result = json.loads((tmp_path / "out" / "t__a.bin.json").read_text())
    assert result["malformed_lines"] == 1 and result["malformed"][0]["line"] == 3
    with pytest.raises(UserError, match=r"t/a.bin:3 .*--strict"):
        count_folder(tmp_path / "data", tmp_path / "strict", process_num=1, strict=True)
    assert not (tmp_path / "strict" / "manifest.json").exists()


def test_meta_disagreement_is_reported(tmp_path):
    path = tmp_path / "x.bin"
    write_documents(path, [[1, 2, 3], [4]])
    _save_meta(path, [[0, 2], [19, 1]])  # wrong count for line 1
    counted = count_file(path)
    assert counted.malformed == [(1, "3 tokens but the .meta index says 2")]


def test_resume_skips_unchanged_files(tokenized_sample, tmp_path):
    first = count_folder(tokenized_sample, tmp_path / "out", process_num=1)
    again = count_folder(tokenized_sample, tmp_path / "out", process_num=1)
    assert again.skipped == again.files == first.files and again.tokens == first.tokens
    forced = count_folder(tokenized_sample, tmp_path / "out", process_num=1, force=True)
    assert forced.skipped == 0


def test_changed_file_is_recounted(tmp_path):
    src = tmp_path / "data" / "t"
    write_documents(src / "a.bin", [[1, 2]])
    write_documents(src / "b.bin", [[3]])
    count_folder(tmp_path / "data", tmp_path / "out", process_num=1)
    write_documents(src / "a.bin", [[5, 5, 5, 5]])
    os.utime(src / "a.bin", ns=(1, 1))  # a different mtime even on coarse clocks
    summary = count_folder(tmp_path / "data", tmp_path / "out", process_num=1)
    assert summary.skipped == 1 and summary.tokens == 5
    ids, counts = read_result(tmp_path / "out" / "t__a.bin.json")
    assert ids.tolist() == [5] and counts.tolist() == [4]


def test_links_are_followed(tmp_path):
    real = tmp_path / "real" / "t"
    write_documents(real / "a.bin", [[1, 1]])
    (tmp_path / "data").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "data" / "linked")
    assert count_folder(tmp_path / "data", tmp_path / "out", process_num=1).tokens == 2


def test_missing_source_and_no_bin_files(tmp_path):
    with pytest.raises(UserError, match="data folder not found"):
        count_folder(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no .bin files found"):
        count_folder(tmp_path / "empty", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    write_documents(tmp_path / "d" / "t" / "a.bin", [[1]])
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        count_folder(tmp_path / "d", tmp_path / "file")


def test_merge_accepts_seed_step1_results(tmp_path):
    results = tmp_path / "seed_results"
    results.mkdir()
    (results / "a.json").write_text(json.dumps({"ori_file": "/x/a.bin", "1": 2, "5": 1}))
    (results / "b.json").write_text(json.dumps({"ori_file": "/x/b.bin", "5": 3}))
    total = merge_counts(results, tmp_path / "total.json")
    assert total.tolist() == [0, 2, 0, 0, 0, 4]
    assert json.loads((tmp_path / "total.json").read_text()) == {"1": 2, "5": 4}


def test_merge_refuses_existing_output_and_bad_results(tmp_path):
    results = tmp_path / "r"
    results.mkdir()
    (results / "a.json").write_text(json.dumps({"ori_file": "a", "1": 2}))
    (tmp_path / "total.json").write_text("keep me")
    with pytest.raises(UserError, match="output exists"):
        merge_counts(results, tmp_path / "total.json")
    assert (tmp_path / "total.json").read_text() == "keep me"
    (results / "b.json").write_text(json.dumps({"ori_file": "b", "x": 2}))
    with pytest.raises(UserError, match=r"b.json: key 'x' is not a token id"):
        merge_counts(results, tmp_path / "new.json")
    assert not (tmp_path / "new.json").exists()
    with pytest.raises(UserError, match="count result folder not found"):
        merge_counts(tmp_path / "missing", tmp_path / "new.json")


def test_frequency_file_ids_outside_the_tokenizer(tmp_path):
    path = tmp_path / "freq.json"
    path.write_text(json.dumps({"1": 3, "2000": 1}))
    with pytest.raises(UserError, match="token id 2000 is outside the tokenizer"):
        read_frequency_file(path, vocab_size=2000)
    assert read_frequency_file(path, vocab_size=2001)[2000] == 1
    path.write_text("[1, 2]")
    with pytest.raises(UserError, match="expected a JSON object"):
        read_frequency_file(path)


@pytest.mark.parametrize("with_meta", [True, False])
def test_block_by_block_parse_equals_whole_file(tmp_path, with_meta):
    from rethinktiny.data.tokenized import read_meta
    from rethinktiny.data.binparse import parse_bin_file

    rng = np.random.default_rng(1)
    docs = [rng.integers(0, 5000, size=rng.integers(0, 80)).tolist() for _ in range(300)]
    path = tmp_path / "x.bin"
    write_documents(path, docs)
    with open(path, "ab") as f:
        f.write(b"broken line\n" + json.dumps({"tokens": list(range(400))}).encode() + b"\n")
    if not with_meta:
        os.remove(f"{path}.meta")
    meta = read_meta(path)
    whole_counts, whole = parse_bin_file(path, meta, block_bytes=1 << 30)
    for block in (37, 500, 4096):  # smaller than some lines, too
        counts, parsed = parse_bin_file(path, meta, block_bytes=block)
        assert np.array_equal(counts, whole_counts) and parsed.documents == whole.documents
        assert parsed.malformed == whole.malformed
    if with_meta:  # the appended lines are not in the index, so InternEvo never reads them
        assert whole.malformed == [] and whole.documents == len(docs)
    else:
        assert whole.malformed == [(301, "invalid JSON: Expecting value")]
        assert whole.documents == len(docs) + 1
    expected = _dense(Counter(t for d in docs for t in d) + (Counter() if with_meta else Counter(range(400))))
    assert np.array_equal(whole_counts[:len(expected)], expected)


# --- the whole-block fast path (binfast) and the line-by-line path must both equal json ---

MAX_ID = 16777215  # binfast.MAX_TOKEN_ID: a larger id is a reported line, not a count


def _json_reference(data: bytes):
    """(Counter of ids, documents, malformed line numbers) by json, line by line: the definition."""
    counts, documents, malformed = Counter(), 0, []
    for number, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            tokens = json.loads(line)["tokens"]
            ok = isinstance(tokens, list) and all(type(t) is int and 0 <= t <= MAX_ID for t in tokens)
        except (ValueError, TypeError, KeyError):
            ok = False
        if ok:
            counts.update(tokens)
            documents += 1
        else:
            malformed.append(number)
    return counts, documents, malformed


def _assert_parse_equals_json(data: bytes):
    parsed = parse_bin(data)
    counts, documents, malformed = _json_reference(data)
    assert Counter(parsed.ids.tolist()) == counts
    assert parsed.documents == documents and [n for n, _ in parsed.malformed] == malformed


def _random_lines(rng, count, spaced_share=0.5, max_digits=8):
    """Documents in both writers' layouts: empty lists, ids of one to `max_digits` digits, 0 and
    the largest id allowed."""
    lines, largest = [], min(MAX_ID, 10 ** max_digits - 1)
    for _ in range(count):
        digits = rng.integers(1, max_digits + 1)
        tokens = rng.integers(0, 10 ** digits, size=rng.integers(0, 40)).clip(max=largest).tolist()
        if rng.random() < 0.1:
            tokens += [0, largest]
        separators = (", ", ": ") if rng.random() < spaced_share else (",", ":")
        lines.append(json.dumps({"tokens": tokens}, separators=separators).encode())
    return lines


@pytest.mark.parametrize("seed", range(4))
def test_clean_blocks_take_the_fast_path_and_equal_json(seed):
    from rethinktiny.data.binfast import Workspace, load_block, parse_clean_block
    from rethinktiny.data.binparse import _parse_lines

    rng = np.random.default_rng(seed)
    data = b"\n".join(_random_lines(rng, 300, spaced_share=[0, 1, 0.5, 0.02][seed])) + b"\n" * (seed % 2)
    _assert_parse_equals_json(data)
    workspace = Workspace()
    block = load_block(data, workspace)
    fast = parse_clean_block(block, workspace, None)
    assert fast is not None, "a block of writer-shaped lines must take the fast path"
    fast_ids = fast[0].copy()
    slow = _parse_lines(block, workspace, None, 1, None)
    assert np.array_equal(fast_ids, slow.ids) and fast[1] == slow.documents == 300


NEAR_MISSES = [
    b'{"tokens":[1,,2]}', b'{"tokens":[,1]}', b'{"tokens":[1,]}', b'{"tokens":[,]}', b'{"tokens":[ ]}',
    b'{"tokens":[01]}', b'{"tokens":[1,007]}', b'{"tokens":[0]}', b'{"tokens":[1 2]}', b'{"tokens":[1, ,2]}',
    b'{"tokens": [1 ,2]}', b'{"tokens": [1,  2]}', b'{"tokens":[1,\t2]}', b'{"tokens":[1,2]} ',
    b'{"tokens":[1,2]}\r', b' {"tokens":[1]}', b'{ "tokens": [1, 2] }', b'{"tokens" : [3]}',
    b'{"tokens":[16777215]}', b'{"tokens":[16777216]}', b'{"tokens":[123456789]}', b'{"tokens":[100000001]}',
    b'{"tokens":[99999999999999999999999]}', b'{"tokens":[-1]}', b'{"tokens":[1.5]}', b'{"tokens":[1e3]}',
    b'{"tokens":[true]}', b'{"tokens":[NaN]}', b'{"tokens":[1,2],"x":1}', b'{"x":1,"tokens":[1]}',
    b'{"tokens":[1],"tokens":[2]}', b'{"tokens":[[1]]}', b'{"tokens":"12"}', b'{"tokens":[1]}{"tokens":[2]}',
    b'{"tokens":[1,2]]}', b'{"tokens":[1,2]}}', b'{"tokens":[1', b'{"tokens":[]', b'{"tokens":[\xff]}',
    b'{"tokens":[1,2,3]}x', b'{"tokenz":[1]}', b'', b'   ', b'[1,2]', b'{"tokens":[4,5]}',
]


@pytest.mark.parametrize("line", NEAR_MISSES)
@pytest.mark.parametrize("position", ["middle", "last"])
@pytest.mark.parametrize("spaced_share", [0, 0.5])
def test_every_other_line_equals_json(line, position, spaced_share):
    """A line of another layout, or malformed, in the middle of a block or last (without a newline),
    among compact lines only or both layouts (the fast path checks those two cases differently): the
    block leaves the fast path where it must, and the result still equals json line by line."""
    rng = np.random.default_rng(len(line))
    good = _random_lines(rng, 20, spaced_share)
    lines = good[:10] + [line] + good[10:] if position == "middle" else good + [line]
    _assert_parse_equals_json(b"\n".join(lines))


def test_fast_path_declines_what_it_cannot_prove():
    from rethinktiny.data.binfast import Workspace, load_block, parse_clean_block

    workspace = Workspace()
    clean = b'{"tokens":[1,2]}\n{"tokens": [3, 4]}\n{"tokens":[]}\n'
    compact = b'{"tokens":[1,2]}\n{"tokens": [3]}\n{"tokens":[]}\n'  # no space inside a list
    for lines in (clean, compact):
        assert parse_clean_block(load_block(lines, workspace), workspace, None) is not None
        for line in NEAR_MISSES:
            if line in (b'{"tokens":[4,5]}', b'{"tokens":[0]}', b'{"tokens":[16777215]}'):
                continue  # clean lines
            block = load_block(lines + line + b"\n" + lines, workspace)
            assert parse_clean_block(block, workspace, None) is None, (lines, line)
    # With a .meta index, only when its rows point at every line with the right counts.
    block = load_block(clean, workspace)
    assert parse_clean_block(block, workspace, np.array([[0, 2], [17, 2], [36, 0]])) is not None
    for meta in ([[0, 2], [17, 2]], [[0, 2], [17, 3], [36, 0]], [[0, 2], [18, 2], [36, 0]], [[0, 3], [17, 1], [36, 0]]):
        assert parse_clean_block(block, workspace, np.array(meta)) is None, meta


def test_large_ids_are_reported_not_counted(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(b'{"tokens":[16777215,5]}\n{"tokens":[16777216]}\n{"tokens": [123456789012345678901]}\n')
    counted = count_file(path)
    assert counted.counts[16777215] == 1 and counted.counts[5] == 1 and counted.tokens == 2
    assert [line for line, _ in counted.malformed] == [2, 3]
    assert "over 16777215" in counted.malformed[0][1]


def test_threads_write_the_same_results_as_one_worker(tmp_path):
    rng = np.random.default_rng(7)
    for name in ("a", "b", "c"):
        path = tmp_path / "data" / "t" / f"{name}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\n".join(_random_lines(rng, 200, max_digits=5)) + b"\nbroken\n")  # small dense counts
    one = count_folder(tmp_path / "data", tmp_path / "one", process_num=1)
    three = count_folder(tmp_path / "data", tmp_path / "three", process_num=3)
    assert (one.tokens, one.documents, one.malformed_lines) == (three.tokens, three.documents, three.malformed_lines)
    for name in one.results:  # same input -> same bytes, whatever the number of workers
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "three" / name).read_bytes()
    assert one.malformed_lines == 3 and one.first_malformed == "t/a.bin:201 (invalid JSON: Expecting value)"


def test_join_decimal_is_a_json_list_body():
    from rethinktiny.vocab.count import join_decimal

    rng = np.random.default_rng(3)
    edges = [0, 9, 10, 99, 100, 9999, 10000, 10001, 99990000, 10 ** 18, 2 ** 63 - 1]
    randoms = rng.integers(0, 10 ** 7, size=1000), rng.integers(0, 2 ** 62, size=50)
    for values in ([], [0], [5, 10000, 0], edges, *randoms):
        values = np.asarray(values, dtype=np.int64)
        assert json.loads("[" + join_decimal(values) + "]") == values.tolist()


def test_a_failing_file_stops_the_other_workers(tmp_path):
    import threading

    from rethinktiny.data.binfast import Cancelled, Workspace
    from rethinktiny.data.binparse import parse_bin_file

    for name in ("a", "b", "c"):
        write_documents(tmp_path / "data" / "t" / f"{name}.bin", [[1, 2, 3]] * 50)
    _save_meta(tmp_path / "data" / "t" / "b.bin", [1, 2, 3])  # not [lines, 2]
    with pytest.raises(UserError, match=r"b.bin.meta: expected an array of shape \[lines, 2\]"):
        count_folder(tmp_path / "data", tmp_path / "out", process_num=2)
    assert not (tmp_path / "out" / "manifest.json").exists()
    cancel = threading.Event()
    cancel.set()  # what the failing worker's pool does to the others
    with pytest.raises(Cancelled):
        parse_bin_file(tmp_path / "data" / "t" / "a.bin", workspace=Workspace(cancel=cancel))
