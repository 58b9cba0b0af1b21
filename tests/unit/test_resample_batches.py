"""Batches are InternEvo's: every packed row and the batch order equal what InternEvo 0.4.9's own
dataset, collate and batch sampler produce for the same folder and settings."""

import json

import numpy as np
import pytest

from rethinktiny.errors import UserError
from rethinktiny.resample.batches import PackedCorpus, RowReader, batch_rows, require_batches, write_index
from rethinktiny.resample.spec import BatchSpec, spec_from_data_config

from .resample_helpers import internevo_dataset, internevo_single_rank, write_small_data  # noqa: F401


@pytest.fixture(scope="module")
def small_data(tmp_path_factory, tokenized_sample):
    return write_small_data(tokenized_sample, tmp_path_factory.mktemp("small") / "train", tokens_per_file=4000)


@pytest.mark.parametrize("into_one,min_length", [(False, 0), (False, 40), (True, 0)])
def test_rows_equal_internevo_rows(internevo_single_rank, small_data, into_one, min_length):
    from internlm.data.tokenized.collaters import packed_collate_fn

    spec = BatchSpec(seq_len=32, micro_bsz=3, micro_num=2, min_length=min_length, pack_sample_into_one=into_one)
    theirs = internevo_dataset(small_data, spec)
    corpus = PackedCorpus(small_data, spec)
    assert corpus.num_rows == len(theirs) > 100
    with RowReader(corpus) as reader:
        for index in range(corpus.num_rows):
            batch, labels = packed_collate_fn([theirs[index]], spec.packed_length)
            mine = reader.row(index)
            np.testing.assert_array_equal(mine.tokens, batch["input_ids"][0].numpy(), err_msg=f"row {index}")
            np.testing.assert_array_equal(mine.labels, labels[0].numpy(), err_msg=f"row {index}")
            np.testing.assert_array_equal(mine.cu_seqlens, batch["cu_seqlens"][0].numpy(), err_msg=f"row {index}")
            np.testing.assert_array_equal(mine.indexes, batch["indexes"][0].numpy(), err_msg=f"row {index}")


@pytest.mark.parametrize("world", [1, 2, 3])
def test_batches_are_internevo_sampler_steps(internevo_single_rank, small_data, world):
    """Batch k (spanning W ranks) is step k of InternEvo's StaticBatchSampler over W ranks; rank r
    reads block[r::W]."""
    from internlm.data.tokenized.batch_sampler import StaticBatchSampler

    spec = BatchSpec(seq_len=32, micro_bsz=2, micro_num=3, seed=77, batch_ranks=world)
    theirs = internevo_dataset(small_data, spec)
    batches = batch_rows(PackedCorpus(small_data, spec).num_rows, spec)
    for rank in range(world):
        sampler = StaticBatchSampler(theirs.datasets, batch_size=spec.micro_num, rampup_batch_size="",
                                     micro_bsz=spec.micro_bsz, seed=spec.seed, drop_last=True, data_rank=rank,
                                     data_world_size=world)
        steps = [list(step) for step in sampler]
        assert len(steps) == len(batches) > 10
        assert steps == [batches[k][rank::world].tolist() for k in range(len(batches))]


def test_spec_from_config_defaults_and_checks():
    spec = spec_from_data_config({"seq_len": 8, "micro_bsz": 2})
    assert (spec.micro_num, spec.seed, spec.min_length, spec.packed_length) == (1, 1024, 0, 16)
    with pytest.raises(UserError, match="data.seq_len must be a positive integer"):
        spec_from_data_config({"seq_len": 0, "micro_bsz": 2}, source="cfg.py")
    with pytest.raises(UserError, match="use_packed_dataset=False"):
        spec_from_data_config({"seq_len": 8, "micro_bsz": 2, "use_packed_dataset": False})
    with pytest.raises(UserError, match="--batch-ranks"):
        spec_from_data_config({"seq_len": 8, "micro_bsz": 2}, batch_ranks=0)


SPEC = BatchSpec(seq_len=32, micro_bsz=2, micro_num=2)


def test_empty_or_missing_data_folder_is_refused(tmp_path):
    with pytest.raises(UserError, match="data folder not found"):
        PackedCorpus(tmp_path / "nope", SPEC)
    (tmp_path / "empty" / "en").mkdir(parents=True)
    with pytest.raises(UserError, match="no .bin files found"):
        PackedCorpus(tmp_path / "empty", SPEC)


def test_too_little_data_for_one_batch_is_refused(tmp_path, small_data):
    tiny = write_small_data(small_data, tmp_path / "tiny", tokens_per_file=20)
    with pytest.raises(UserError, match="do not fill one batch"):
        require_batches(PackedCorpus(tiny, SPEC))


def test_missing_meta_and_bin_outside_type_folder_are_refused(tmp_path, small_data):
    data = write_small_data(small_data, tmp_path / "d", tokens_per_file=500)
    meta = next(data.rglob("*.bin.meta"))
    meta.rename(tmp_path / "aside")
    with pytest.raises(UserError, match=r"\.meta: index file missing"):
        PackedCorpus(data, SPEC)
    (tmp_path / "aside").rename(meta)
    (data / "root.bin").write_text(json.dumps({"tokens": [1, 2]}) + "\n")
    with pytest.raises(UserError, match="exactly one data-type sub-folder"):
        PackedCorpus(data, SPEC)


def test_meta_that_disagrees_with_the_line_names_file_and_line(tmp_path, small_data):
    data = write_small_data(small_data, tmp_path / "d", tokens_per_file=2000)
    corpus = PackedCorpus(data, SPEC)
    bin_path = corpus.files[0].path
    lines = bin_path.read_bytes().splitlines(keepends=True)
    tokens = json.loads(lines[0])["tokens"]
    short = json.dumps({"tokens": tokens[:-1]}, separators=(",", ":")).encode()
    short = short + b" " * (len(lines[0]) - 1 - len(short)) + b"\n"  # same bytes long, one token fewer
    bin_path.write_bytes(short + b"".join(lines[1:]))
    corpus = PackedCorpus(data, SPEC)
    first_doc_row = next(r for r in range(corpus.files[0].num_rows)
                         if any(corpus.files[0].offsets[doc] == 0 for doc, _, _ in corpus.files[0].fragments(r)))
    with RowReader(corpus) as reader, pytest.raises(UserError, match=rf"{bin_path.name}:1: .* tokens but the .meta"):
        reader.row(first_doc_row)


def test_index_is_the_in_memory_packing_memory_mapped_and_reused(tmp_path, small_data):
    spec = BatchSpec(seq_len=32, micro_bsz=2, micro_num=3, min_length=20)
    mine, indexed = PackedCorpus(small_data, spec), write_index(small_data, spec, tmp_path / "index")
    assert isinstance(indexed.files[0].ends, np.memmap) and isinstance(indexed.batches(), np.memmap)
    assert indexed.file_rows() == mine.file_rows() and indexed.num_rows == mine.num_rows
    np.testing.assert_array_equal(indexed.batches(), batch_rows(mine.num_rows, spec))
    with RowReader(mine) as a, RowReader(indexed) as b:
        for row in range(0, mine.num_rows, 7):
            np.testing.assert_array_equal(a.row(row).tokens, b.row(row).tokens)
            np.testing.assert_array_equal(a.row(row).labels, b.row(row).labels)
    stamp = (tmp_path / "index" / "ends.npy").stat().st_mtime_ns
    write_index(small_data, spec, tmp_path / "index")  # same files and settings: reused
    assert (tmp_path / "index" / "ends.npy").stat().st_mtime_ns == stamp
    plain = BatchSpec(seq_len=32, micro_bsz=2, micro_num=3)
    other = write_index(small_data, plain, tmp_path / "index")  # other settings: packed again
    assert (tmp_path / "index" / "ends.npy").stat().st_mtime_ns != stamp
    assert other.spec == plain and other.file_rows() == PackedCorpus(small_data, plain).file_rows()
