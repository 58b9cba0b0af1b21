"""`vocab count --shard I/N` on two simulated nodes (two count processes), `vocab merge` of the shard
set, and the ways a set or a result folder can be incomplete."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from rethinktiny.cli import main
from rethinktiny.data.tokenized import write_documents
from rethinktiny.errors import UserError
from rethinktiny.vocab.count import count_folder
from rethinktiny.vocab.sum_counts import merge_counts

from tests.conftest import REPO


@pytest.fixture()
def corpus(tmp_path):
    """Five files in two types, different ids per file, so a lost file changes the totals."""
    rng = np.random.default_rng(1)
    for k, name in enumerate(["a/0.bin", "a/1.bin", "b/0.bin", "b/1.bin", "b/2.bin"]):
        write_documents(tmp_path / "data" / name, [rng.integers(k * 100, k * 100 + 90, size=20).tolist()
                                                   for _ in range(30)])
    return tmp_path / "data"


def _count_process(src, dst, shard, *extra):
    return subprocess.Popen([sys.executable, "-m", "rethinktiny", "vocab", "count", "--src", str(src), "--dst",
                             str(dst), "--shard", shard, "--process-num", "1", *extra],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_nodes_merge_to_the_totals_of_one_count(corpus, tmp_path):
    nodes = [_count_process(corpus, tmp_path / f"node{i}", f"{i}/2") for i in range(2)]  # run side by side
    for node in nodes:
        out, err = node.communicate(timeout=120)
        assert node.returncode == 0, err
    one = merge_counts(_counted(corpus, tmp_path / "one"), tmp_path / "one.json")
    both = merge_counts([tmp_path / "node1", tmp_path / "node0"], tmp_path / "both.json")  # any order
    assert np.array_equal(one, both) and one.sum() == 5 * 30 * 20
    assert (tmp_path / "one.json").read_bytes() == (tmp_path / "both.json").read_bytes()
    manifests = [json.loads((tmp_path / f"node{i}" / "manifest.json").read_text()) for i in range(2)]
    assert [m["shard"] for m in manifests] == [{"index": i, "count": 2, "split": "modulo"} for i in range(2)]
    assert manifests[0]["files"] == ["a/0.bin", "b/0.bin", "b/2.bin"] and manifests[1]["files"] == ["a/1.bin", "b/1.bin"]


def _counted(src, dst, **kwargs):
    count_folder(src, dst, process_num=1, **kwargs)
    return dst


def test_incomplete_repeated_or_mixed_shard_sets_are_refused(corpus, tmp_path, tiny_tokenizer, capsys):
    shard = {i: _counted(corpus, tmp_path / f"s{i}of3", shard=(i, 3)) for i in range(3)}
    with pytest.raises(UserError, match=r"shard\(s\) 1/3 missing from --src"):
        merge_counts([shard[0], shard[2]], tmp_path / "total.json")
    with pytest.raises(UserError, match=r"s1of3 holds shard 1/3 only; shard\(s\) 0/3, 2/3 missing"):
        merge_counts(shard[1], tmp_path / "total.json")
    copy = tmp_path / "copy_of_s1"
    copy.mkdir()
    for path in shard[1].iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    with pytest.raises(UserError, match=r"shard 1/3 given twice: .*s1of3 and .*copy_of_s1"):
        merge_counts([shard[0], shard[1], copy, shard[2]], tmp_path / "total.json")
    other = _counted(corpus, tmp_path / "s1of2", shard=(1, 2))
    with pytest.raises(UserError, match=r"s1of2: counted with another shard count"):
        merge_counts([shard[0], other], tmp_path / "total.json")
    with_tokenizer = _counted(corpus, tmp_path / "tok_s1of3", shard=(1, 3), tokenizer=tiny_tokenizer)
    with pytest.raises(UserError, match=r"tok_s1of3: counted with another tokenizer"):
        merge_counts([shard[0], with_tokenizer, shard[2]], tmp_path / "total.json")
    assert not (tmp_path / "total.json").exists()
    # The command line: one line, exit 2.
    capsys.readouterr()
    assert main(["vocab", "merge", "--src", str(shard[0]), "--src", str(shard[2]), "--dst", str(tmp_path / "t.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "1/3 missing" in err
    assert merge_counts(list(shard.values()), tmp_path / "total.json").sum() == 5 * 30 * 20


def test_a_second_count_into_the_same_dst_does_not_replace_the_first(corpus, tmp_path):
    dst = _counted(corpus, tmp_path / "counts", shard=(0, 2))
    with pytest.raises(UserError, match=r"counts: holds the count of another shard \(shard 0/2, this run: shard 1/2\)"):
        count_folder(corpus, dst, process_num=1, shard=(1, 2))
    assert json.loads((dst / "manifest.json").read_text())["shard"]["index"] == 0
    count_folder(corpus, dst, process_num=1, shard=(0, 2))  # the same shard again: a resume
    # Two processes at the same time: the second finds the first one's lock.
    (dst / ".count.lock").write_text(f"{os.getppid()} {os.uname().nodename}\n")  # a live process of this host
    with pytest.raises(UserError, match="another `vocab count`"):
        count_folder(corpus, dst, process_num=1, shard=(0, 2))
    (dst / ".count.lock").write_text("999999999 " + os.uname().nodename + "\n")  # a dead one: taken over
    (dst / ".a__0.bin.json.999999999.partial").write_text("{")  # what it was writing when killed
    count_folder(corpus, dst, process_num=1, shard=(0, 2))
    assert not (dst / ".count.lock").exists() and not list(dst.glob(".*"))


def test_a_failed_count_leaves_nothing_merge_takes(tmp_path):
    src = tmp_path / "data" / "t"
    for name in ("a", "b", "c"):
        write_documents(src / f"{name}.bin", [[1, 2, 3]])
    with open(src / "c.bin", "ab") as f:
        f.write(b"garbage\n")
    (src / "c.bin.meta").unlink()
    dst = tmp_path / "counts"
    with pytest.raises(UserError, match="--strict"):
        count_folder(tmp_path / "data", dst, process_num=1, strict=True)
    assert sorted(p.name for p in dst.glob("*.json")) == ["t__a.bin.json", "t__b.bin.json"]  # 2 of 3, no manifest
    with pytest.raises(UserError, match=r"counts: no manifest.json: this `vocab count` failed or is still running"):
        merge_counts(dst, tmp_path / "total.json")
    assert not (tmp_path / "total.json").exists()
    again = tmp_path / "again"
    count_folder(tmp_path / "data", again, process_num=1)  # complete: its manifest must not survive a failed rerun
    with pytest.raises(UserError, match="--strict"):
        count_folder(tmp_path / "data", again, process_num=1, strict=True, force=True)
    with pytest.raises(UserError, match="no manifest.json"):
        merge_counts(again, tmp_path / "total.json")


def test_problems_are_named_by_kind_and_file_level_ones_without_a_line(tmp_path, capsys):
    src = tmp_path / "data" / "t"
    write_documents(src / "a.bin", [[1, 2, 3], [4]])
    with open(f"{src / 'a.bin'}.meta", "wb") as f:
        np.save(f, np.array([[0, 2], [19, 1]], dtype=np.int64))  # line 1 really has 3 tokens
    write_documents(src / "b.bin", [[5, 6], [7]])
    with open(f"{src / 'b.bin'}.meta", "wb") as f:
        np.save(f, np.array([[0, 2], [3, 1], [17, 1]], dtype=np.int64))  # row 1 points inside line 1
    with open(src / "b.bin", "ab") as f:
        f.write(b"not json\n")  # not indexed, so not a document either
    summary = count_folder(tmp_path / "data", tmp_path / "out", process_num=1)
    assert (summary.malformed_lines, summary.meta_mismatches, summary.index_problems) == (0, 1, 1)
    assert summary.tokens == 4 + 3  # the mismatched line is counted, as the report says
    assert main(["vocab", "count", "--src", str(tmp_path / "data"), "--dst", str(tmp_path / "cli")]) == 0
    out = capsys.readouterr().out
    assert "1 line(s) counted whose token count differs from the .meta index; 1 .meta row problem(s)" in out
    assert "skipped" not in out
    result = json.loads((tmp_path / "out" / "t__b.bin.json").read_text())
    assert result["malformed"][0]["line"] is None and result["index_problems"] == 1
    only_b = tmp_path / "only_b" / "t"
    only_b.mkdir(parents=True)
    for name in ("b.bin", "b.bin.meta"):
        (only_b / name).write_bytes((src / name).read_bytes())
    summary = count_folder(tmp_path / "only_b", tmp_path / "out_b", process_num=1)
    assert summary.first_malformed == "t/b.bin (.meta row 1: offset points inside a line)"  # no ":0"


def test_bad_shard_argument(corpus, tmp_path, capsys):
    for shard in ("2/2", "1", "a/b", "0/0"):
        assert main(["vocab", "count", "--src", str(corpus), "--dst", str(tmp_path / "x"), "--shard", shard]) == 2
        assert "--shard" in capsys.readouterr().err


def test_the_slurm_array_example_counts_and_merges(corpus, tmp_path):
    """tools/slurm/count.sbatch's two steps as Slurm runs them (array tasks, then the merge), without
    a cluster: the environment Slurm sets is given by hand."""
    script = REPO / "tools" / "slurm" / "count.sbatch"
    args = ["bash", str(script), str(corpus), str(tmp_path / "counts"), str(tmp_path / "total.json")]
    env = {**os.environ, "SLURM_JOB_ID": "7", "SHARDS": "2", "PYTHON": sys.executable}
    tasks = [subprocess.Popen(args, cwd=REPO, env={**env, "STEP": "count", "SLURM_ARRAY_TASK_ID": str(i)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    for task in tasks:
        assert task.wait(timeout=120) == 0, task.stderr.read()
    merged = subprocess.run(args, cwd=REPO, env={**env, "STEP": "merge"}, capture_output=True, text=True)
    assert merged.returncode == 0, merged.stderr
    one = merge_counts(_counted(corpus, tmp_path / "one"), tmp_path / "one.json")
    assert (tmp_path / "one.json").read_bytes() == (tmp_path / "total.json").read_bytes() and one.sum() == 3000
