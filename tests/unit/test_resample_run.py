"""`resample_data` end to end (one scoring rank, in process): reproducible bytes, InternEvo-readable
output made of exactly the chosen rows, resumable scoring, and bad inputs that write nothing."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from rethinktiny.checkpoint import open_model_checkpoint
from rethinktiny.data.tokenized import BinWriter, iter_documents
from rethinktiny.errors import UserError
from rethinktiny.launch import LaunchOptions
from rethinktiny.resample.batches import PackedCorpus, RowReader, batch_rows, write_index
from rethinktiny.resample.run import make_score_plan, read_config, resample_data
from rethinktiny.resample.sampling import DEFAULT_FLOOR, excess_losses, resample, scored_subset, seeded_generator
from rethinktiny.resample.scorefiles import prepare_folder, score_files
from rethinktiny.resample.spec import spec_from_data_config
from rethinktiny.resample.worker import score_share
from rethinktiny.resample.writer import write_selected_data

from .resample_helpers import (folder_bytes, internevo_dataset, internevo_single_rank,  # noqa: F401
                               model_config, write_checkpoint, write_config, write_small_data)

ONE_RANK = LaunchOptions(nproc_per_node=1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tokenized_sample):
    root = tmp_path_factory.mktemp("resample")
    data = write_small_data(tokenized_sample, root / "train", tokens_per_file=1500)
    config = write_config(root / "config.py", data)
    ckpt = write_checkpoint(root / "ckpt" / "5", model_config(), seed=1)
    return {"root": root, "data": data, "config": config, "ckpt": ckpt}


def _run(setup, dst, ckpt=None, **kwargs):
    kwargs = {"ratio": 0.5, "launch": ONE_RANK, "progress": False, **kwargs}
    return resample_data(setup["config"], ckpt or setup["ckpt"], dst, **kwargs)


@pytest.fixture(scope="module")
def first_run(setup):
    dst = setup["root"] / "out_a"
    return _run(setup, dst), dst


def test_config_model_is_the_checkpoint_model(setup):
    assert read_config(setup["config"]).model == model_config()


def test_same_seed_gives_byte_identical_folders(setup, first_run):
    result, dst_a = first_run
    dst_b = setup["root"] / "out_b"
    _run(setup, dst_b)
    assert folder_bytes(dst_a) == folder_bytes(dst_b)
    other = _run(setup, setup["root"] / "out_c", seed=1)
    assert other.num_selected == result.num_selected
    assert np.load(setup["root"] / "out_c" / "selected.npy").tolist() != np.load(dst_a / "selected.npy").tolist()
    assert not (setup["root"] / ".out_b.scores").exists()  # the partial scores are gone once done


def test_output_records_scores_selection_and_manifest(setup, first_run):
    result, dst = first_run
    losses, selected = np.load(dst / "losses.npy"), np.load(dst / "selected.npy")
    assert losses.dtype == np.float64 and len(losses) == result.num_batches > 20
    assert np.isfinite(losses).all() and 6.0 < losses.mean() < 9.0  # random init: about ln(2000) = 7.6
    assert selected.tolist() == sorted(set(selected.tolist())) and len(selected) == round(0.5 * len(losses))
    manifest = json.loads((dst / "manifest.json").read_text())
    assert manifest["command"] == "rethinktiny resample" and manifest["seed"] == 0
    assert manifest["summary"]["mean_loss_selected"] == pytest.approx(losses[selected].mean())
    assert "dst" not in manifest["args"] and "launch" not in manifest["args"]
    selection = json.loads((dst / "selection.json").read_text())
    assert selection["num_batches"] == len(losses) and selection["num_selected"] == len(selected)
    assert (dst / "losses.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_output_is_the_chosen_rows_and_internevo_reads_it(internevo_single_rank, setup, first_run):  # noqa: F811
    _, dst = first_run
    spec = spec_from_data_config(read_config(setup["config"]).data)
    corpus = PackedCorpus(setup["data"], spec)
    chosen = batch_rows(corpus.num_rows, spec)[np.load(dst / "selected.npy")].reshape(-1)
    # InternEvo's own loader packs the copy into exactly the chosen number of rows
    assert len(internevo_dataset(dst, spec, min_length=0)) == len(chosen)
    with RowReader(corpus) as reader:
        for index, packed in enumerate(corpus.files):
            expected = [reader.row(int(r)).tokens for r in chosen if corpus.locate(int(r))[0] == index]
            written = [np.asarray(d) for d in iter_documents(dst / packed.relpath)] if expected else []
            np.testing.assert_array_equal(np.concatenate(written or [[]]), np.concatenate(expected or [[]]))
    assert sorted(p.name for p in dst.iterdir() if p.is_dir()) == sorted({Path(f.relpath).parts[0]
                                                                          for f in corpus.files})


def test_interrupted_scoring_continues_where_it_stopped(setup, first_run):
    _, dst_a = first_run
    cfg = read_config(setup["config"])
    scores = setup["root"] / "scores_resume"
    corpus = write_index(setup["data"], spec_from_data_config(cfg.data), scores / "index")
    num_batches = len(batch_rows(corpus.num_rows, corpus.spec))
    checkpoint, _ = open_model_checkpoint(setup["ckpt"], cfg.model)
    # an earlier run scored rank 0's half of 2 ranks, then died mid-record
    plan = prepare_folder(make_score_plan(cfg, corpus, num_batches, checkpoint.folder, scores), restart=False)
    assert score_share(plan, 0, 2, progress=False) == (num_batches + 1) // 2
    with open(scores / "scores-a0-r0.bin", "ab") as f:
        f.write(b"\x01\x02\x03")
    _run(setup, setup["root"] / "out_resumed", scores_dir=scores)
    assert _without_versions(setup["root"] / "out_resumed") == _without_versions(dst_a)


def _without_versions(folder):
    """Folder bytes, the manifest without `versions` (which lists the libraries this test process
    happens to have imported by then, e.g. internlm after the InternEvo-loader test)."""
    files = folder_bytes(folder)
    manifest = json.loads(files.pop("manifest.json"))
    manifest.pop("versions")
    return files, manifest


def test_resumed_attempt_scores_only_the_rest(setup):
    cfg = read_config(setup["config"])
    scores = setup["root"] / "scores_count"
    corpus = write_index(setup["data"], spec_from_data_config(cfg.data), scores / "index")
    num_batches = len(batch_rows(corpus.num_rows, corpus.spec))
    checkpoint, _ = open_model_checkpoint(setup["ckpt"], cfg.model)
    plan = prepare_folder(make_score_plan(cfg, corpus, num_batches, checkpoint.folder, scores), restart=False)
    score_share(plan, 1, 2, progress=False)
    plan = prepare_folder(make_score_plan(cfg, corpus, num_batches, checkpoint.folder, scores), restart=False)
    assert plan.attempt == 1 and score_share(plan, 0, 1, progress=False) == (num_batches + 1) // 2
    assert score_files(scores) == [(0, 1), (1, 0)]


def test_scores_of_another_checkpoint_are_never_mixed(setup):
    scores = setup["root"] / "scores_other"
    _run(setup, setup["root"] / "out_d", scores_dir=scores)  # finished: folder removed
    cfg = read_config(setup["config"])
    corpus = write_index(setup["data"], spec_from_data_config(cfg.data), scores / "index")
    checkpoint, _ = open_model_checkpoint(setup["ckpt"], cfg.model)
    prepare_folder(make_score_plan(cfg, corpus, 3, checkpoint.folder, scores), restart=False)  # a stale plan
    other = write_checkpoint(setup["root"] / "ckpt_other", model_config(), seed=2)
    with pytest.raises(UserError, match="holds scores of a different checkpoint"):
        resample_data(setup["config"], other, setup["root"] / "out_e", ratio=0.5, scores_dir=scores,
                      launch=ONE_RANK, progress=False)
    assert not (setup["root"] / "out_e").exists()
    resample_data(setup["config"], other, setup["root"] / "out_e", ratio=0.5, scores_dir=scores,
                  launch=ONE_RANK, progress=False, force=True)


def test_selection_only_writes_no_data(setup):
    dst = setup["root"] / "sel_only"
    _run(setup, dst, ratio=None, num_batches=4, copy_data=False)
    assert sorted(p.name for p in dst.iterdir()) == ["losses.npy", "losses.png", "manifest.json", "selected.npy",
                                                     "selection.json"]
    assert len(np.load(dst / "selected.npy")) == 4


@pytest.mark.parametrize("kwargs,message", [
    ({"ratio": 0.0}, r"--ratio must be in \(0, 1\]"),
    ({"ratio": 1.2}, r"--ratio must be in \(0, 1\]"),
    ({"ratio": None, "num_batches": 10_000}, "more than the"),
    ({"temperature": 0.0}, "--temperature"),
    ({"batch_ranks": 0}, "--batch-ranks"),
])
def test_bad_arguments_write_nothing(setup, kwargs, message):
    dst = setup["root"] / "bad_args"
    with pytest.raises(UserError, match=message):
        _run(setup, dst, **kwargs)
    assert not dst.exists() and not (setup["root"] / ".bad_args.scores").exists()


def test_checkpoint_of_another_model_writes_nothing(setup):
    other = write_checkpoint(setup["root"] / "ckpt_wide", model_config({"hidden_size": 96}))
    dst = setup["root"] / "bad_ckpt"
    with pytest.raises(UserError, match="checkpoint from a different model: hidden_size is 96 there but 64"):
        resample_data(setup["config"], other, dst, ratio=0.5, launch=ONE_RANK, progress=False)
    assert not dst.exists()


def test_empty_data_folder_writes_nothing(setup):
    empty = setup["root"] / "empty"
    (empty / "en").mkdir(parents=True)
    dst = setup["root"] / "bad_data"
    with pytest.raises(UserError, match="no .bin files found"):
        _run(setup, dst, data=empty)
    assert not dst.exists()


def test_all_losses_nonfinite_writes_nothing(setup):
    poisoned = write_checkpoint(setup["root"] / "ckpt_nan", model_config(), poison="norm.weight")
    dst = setup["root"] / "bad_nan"
    with pytest.raises(UserError, match=r"all \d+ batch losses are non-finite"):
        resample_data(setup["config"], poisoned, dst, ratio=0.5, launch=ONE_RANK, progress=False)
    assert not dst.exists() and not (setup["root"] / ".bad_nan.scores").exists()


def test_existing_output_needs_force(setup, first_run):
    _, dst = first_run
    with pytest.raises(UserError, match="output exists; pass --force"):
        _run(setup, dst)


def test_plain_draw_is_the_papers_softmax_over_the_losses(first_run):
    result, dst = first_run
    losses, selected = np.load(dst / "losses.npy"), np.load(dst / "selected.npy")
    assert selected.tolist() == resample(losses, result.num_selected, seeded_generator(0)).selected.tolist()
    assert not (dst / "reference_losses.npy").exists() and not (dst / "scored.npy").exists()


def test_max_batches_scores_a_seeded_subset_and_draws_among_it(setup, first_run):
    _, full = first_run
    dst = setup["root"] / "subset"
    result = _run(setup, dst, max_batches=10, copy_data=False)
    scored, losses, selected = (np.load(dst / name) for name in ("scored.npy", "losses.npy", "selected.npy"))
    assert result.num_scored == len(scored) == 10 and result.num_batches == len(losses) > 10
    assert scored.tolist() == scored_subset(result.num_batches, max_batches=10, seed=0).tolist()
    assert np.isnan(np.delete(losses, scored)).all()  # never scored, never kept
    np.testing.assert_array_equal(losses[scored], np.load(full / "losses.npy")[scored])  # same scores
    assert len(selected) == 5 and set(selected.tolist()) <= set(scored.tolist())
    assert json.loads((dst / "selection.json").read_text())["num_batches"] == result.num_batches


def test_reference_draws_by_excess_loss_with_a_floor(setup):
    reference = write_checkpoint(setup["root"] / "ckpt_ref", model_config(), seed=2)
    dst = setup["root"] / "with_reference"
    result = _run(setup, dst, max_batches=12, copy_data=False, reference=reference)
    losses, ref, scored, selected = (np.load(dst / name) for name in ("losses.npy", "reference_losses.npy",
                                                                      "scored.npy", "selected.npy"))
    plain = _run(setup, setup["root"] / "reference_alone", max_batches=12, copy_data=False, ckpt=reference)
    np.testing.assert_array_equal(ref, np.load(plain.dst / "losses.npy"))  # the reference's own scores
    assert not np.allclose(ref[scored], losses[scored])
    expected = resample(excess_losses(losses, ref)[scored], result.num_selected, seeded_generator(0),
                        floor=DEFAULT_FLOOR)
    assert selected.tolist() == scored[expected.selected].tolist()
    manifest = json.loads((dst / "manifest.json").read_text())
    assert manifest["args"]["floor"] == DEFAULT_FLOOR and manifest["args"]["reference"] == str(reference)
    other_vocab = write_checkpoint(setup["root"] / "ckpt_vocab", model_config({"vocab_size": 1000}))
    with pytest.raises(UserError, match="excess losses need the same vocabulary"):
        _run(setup, setup["root"] / "bad_reference", reference=other_vocab)


def test_tf32_config_scores_in_float32(setup, first_run):
    _, full = first_run
    config = write_config(setup["root"] / "config_tf32.py", setup["data"], extra="model.update(dtype='torch.tf32')")
    assert read_config(config).dtype == "tf32"
    dst = setup["root"] / "tf32"
    resample_data(config, setup["ckpt"], dst, ratio=0.5, max_batches=3, launch=ONE_RANK, progress=False,
                  copy_data=False)
    scored = np.load(dst / "scored.npy")
    np.testing.assert_array_equal(np.load(dst / "losses.npy")[scored], np.load(full / "losses.npy")[scored])


def test_copy_resumes_after_a_crash_without_rewriting_finished_files(setup, first_run, monkeypatch):
    _, full = first_run
    cfg = read_config(setup["config"])
    corpus = write_index(setup["data"], spec_from_data_config(cfg.data), setup["root"] / "copy_index")
    selected = np.load(full / "selected.npy")
    parts, out = setup["root"] / "copy_parts", setup["root"] / "copy_out"
    first_file = len(list(iter_documents(full / corpus.files[0].relpath)))  # documents the first file gets
    original, calls = BinWriter.write, []

    def crash_in_second_file(self, tokens):
        calls.append(1)
        if len(calls) > first_file:
            raise OSError("disk full")
        original(self, tokens)

    monkeypatch.setattr(BinWriter, "write", crash_in_second_file)
    with pytest.raises(OSError, match="disk full"):
        write_selected_data(corpus, corpus.batches(), selected, out, parts, progress=False)  # one process
    done = parts / f"{corpus.files[0].relpath}.done"
    assert done.is_file() and not (parts / f"{corpus.files[1].relpath}.done").exists()
    finished = (parts / corpus.files[0].relpath).stat()
    monkeypatch.setattr(BinWriter, "write", original)
    shutil.rmtree(out)  # the output folder of the crashed run is gone (output_dir removes it)
    out.mkdir()
    written = write_selected_data(corpus, corpus.batches(), selected, out, parts, progress=False)
    again = (parts / corpus.files[0].relpath).stat()
    assert (again.st_ino, again.st_mtime_ns) == (finished.st_ino, finished.st_mtime_ns)  # not rewritten
    assert written == json.loads(full.joinpath("manifest.json").read_text())["summary"]["written"]
    for packed in corpus.files:
        assert (out / packed.relpath).read_bytes() == (full / packed.relpath).read_bytes()
    parallel = setup["root"] / "copy_parallel"
    parallel.mkdir()
    assert write_selected_data(corpus, corpus.batches(), selected, parallel, setup["root"] / "copy_parts_2",
                               progress=False, workers=2) == written
    assert folder_bytes(parallel) == folder_bytes(out)  # two processes write what one writes
