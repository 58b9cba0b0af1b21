"""The multi-round sampler: each step is a chosen batch read from the original data, InternEvo's own
loader builds it from `data.sampler="multi_round"`, and a resumed sampler continues at the right step."""

import numpy as np
import pytest
from torch.utils.data import DataLoader

from rethinktiny.errors import UserError
from rethinktiny.resample.batches import PackedCorpus, RowReader, batch_rows
from rethinktiny.launch import LaunchOptions
from rethinktiny.resample.run import read_config, resample_data
from rethinktiny.resample.selection import RoundSchedule, SelectedBatches
from rethinktiny.resample.spec import spec_from_data_config

from .resample_helpers import internevo_single_rank  # noqa: F401
from .resample_helpers import model_config, write_checkpoint, write_config, write_small_data


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tokenized_sample):
    root = tmp_path_factory.mktemp("sampler")
    data = write_small_data(tokenized_sample, root / "train", tokens_per_file=1500)
    config = write_config(root / "config.py", data, micro_num=2)
    ckpt = write_checkpoint(root / "ckpt" / "1", model_config(), seed=4)
    results = {}
    for ranks in (1, 2):
        dst = root / f"selection_{ranks}"
        resample_data(config, ckpt, dst, ratio=0.4, batch_ranks=ranks, copy_data=False,
                      launch=LaunchOptions(nproc_per_node=1), progress=False)
        results[ranks] = SelectedBatches.load(dst / "selected.npy")
    spec = spec_from_data_config(read_config(config).data)
    return {"root": root, "data": data, "config": config, "selection": results, "corpus": PackedCorpus(data, spec)}


@pytest.mark.parametrize("world", [1, 2])
def test_each_step_is_one_chosen_batch_when_ranks_match(setup, world):
    selection = setup["selection"][world]
    schedules = [RoundSchedule(selection, 2, rank, world) for rank in range(world)]
    batches = batch_rows(selection.num_rows, selection.spec)
    assert schedules[0].steps_per_epoch == len(selection.selected)
    for step, batch in enumerate(selection.selected):
        block = np.empty(2 * world, dtype=np.int64)
        for rank, schedule in enumerate(schedules):
            block[rank::world] = schedule.rows(step)
        assert block.tolist() == batches[batch].tolist()


def test_later_epochs_reshuffle_the_same_batches(setup):
    selection = setup["selection"][1]
    schedule = RoundSchedule(selection, 2, 0, 1)
    steps = schedule.steps_per_epoch
    epoch0 = [tuple(schedule.rows(s)) for s in range(steps)]
    epoch1 = [tuple(schedule.rows(s)) for s in range(steps, 2 * steps)]
    assert sorted(epoch0) == sorted(epoch1) and epoch0 != epoch1


def _sampler(selection, rank=0, world=1):
    from rethinktiny.internevo.sampler import MultiRoundBatchSampler

    return MultiRoundBatchSampler(selection, micro_num=2, data_rank=rank, data_world_size=world)


def _consume(sampler, steps):
    """What InternEvo's training loop does: iterate, and start a new iterator at an epoch end."""
    out, iterator = [], iter(sampler)
    while len(out) < steps:
        try:
            out.append(next(iterator))
        except StopIteration:
            iterator = iter(sampler)
    return out


def test_resumed_sampler_continues_at_the_right_step_across_epochs(setup):
    selection = setup["selection"][1]
    per_epoch = len(_sampler(selection))
    reference = _consume(_sampler(selection), 3 * per_epoch)
    for stop in (1, per_epoch - 1, per_epoch, per_epoch + 2):
        # InternEvo saves the train state's lock-step copy, which it resets at an epoch end
        running = _sampler(selection)
        twin = running.copy()
        _consume(running, stop)
        twin_iter, taken = iter(twin), 0
        while taken < stop:
            try:
                next(twin_iter)
                taken += 1
            except StopIteration:  # load_new_batch: batch_count = consumed = 0, new iterator
                twin.batch_count = twin.num_consumed_samples_in_epoch = 0
                twin_iter = iter(twin)
        resumed = _sampler(selection)
        resumed.load_state_dict(twin.state_dict())
        assert _consume(resumed, 2 * per_epoch - stop) == reference[stop:2 * per_epoch], stop


def test_resume_refuses_another_selection_or_world(setup):
    state = _sampler(setup["selection"][1]).state_dict()
    with pytest.raises(UserError, match="selected_sha256"):
        _sampler(setup["selection"][2]).load_state_dict(state)
    with pytest.raises(UserError, match="data_world_size=1"):
        _sampler(setup["selection"][1], world=2).load_state_dict(state)
    with pytest.raises(UserError, match="not a multi_round sampler"):
        _sampler(setup["selection"][1]).load_state_dict({"batch_count": 3})


def _data_cfg(setup, **changes):
    from internlm.core.context.parallel_context import Config

    spec = setup["corpus"].spec
    cfg = dict(train_folder=str(setup["data"]), seq_len=spec.seq_len, micro_bsz=spec.micro_bsz, micro_num=2,
               packed_length=spec.packed_length, rampup_batch_size="", min_length=0, pack_sample_into_one=False,
               sampler="multi_round", selected_batches=str(setup["root"] / "selection_1" / "selected.npy"))
    return Config({**cfg, **changes})


def test_internevo_loader_trains_on_the_chosen_batches(internevo_single_rank, setup):  # noqa: F811
    from internlm.data import build_dataloader

    from rethinktiny.internevo.sampler import MultiRoundBatchSampler, install

    install()
    install()  # idempotent
    train_ds, sampler, collate_fn = build_dataloader.get_tokenized_train_loader_items(_data_cfg(setup))
    assert isinstance(sampler, MultiRoundBatchSampler)
    loader = DataLoader(train_ds, batch_sampler=sampler, collate_fn=collate_fn, num_workers=0)
    selection, corpus = setup["selection"][1], setup["corpus"]
    batches = batch_rows(corpus.num_rows, selection.spec)
    with RowReader(corpus) as reader:
        for (inputs, labels), batch in zip(loader, selection.selected):
            for i, row in enumerate(batches[batch]):
                mine = reader.row(int(row))
                np.testing.assert_array_equal(inputs["input_ids"][i].numpy(), mine.tokens)
                np.testing.assert_array_equal(labels[i].numpy(), mine.labels)
    assert len(loader) == len(selection.selected)


@pytest.mark.parametrize("changes,message", [
    ({"selected_batches": None}, "needs data.selected_batches"),
    ({"selected_batches": "/nonexistent/selected.npy"}, "not found"),
    ({"sampler": "weighted"}, "data.sampler='weighted' is unknown"),
    ({"seq_len": 16, "packed_length": 32}, "data.seq_len is 16 but the batches"),
    ({"rampup_batch_size": "2 2 1"}, "rampup_batch_size is not supported"),
])
def test_internevo_loader_refuses_bad_sampler_settings(internevo_single_rank, setup, changes, message):  # noqa: F811
    from internlm.data import build_dataloader

    from rethinktiny.internevo.sampler import install

    install()
    with pytest.raises(UserError, match=message):
        build_dataloader.get_tokenized_train_loader_items(_data_cfg(setup, **changes))


def test_selection_made_on_other_data_is_refused(setup, tmp_path):
    selection = setup["selection"][1]
    files = [(path, rows + 1) for path, rows in selection.files]
    with pytest.raises(UserError, match="packed rows, but the selection"):
        selection.check_files(files, "data.train_folder X")
    with pytest.raises(UserError, match="another order"):
        selection.check_files(list(reversed(selection.files)), "data.train_folder X")
    tampered = tmp_path / "sel"
    tampered.mkdir()
    (tampered / "selection.json").write_bytes((selection.folder / "selection.json").read_bytes())
    np.save(tampered / "selected.npy", selection.selected[:-1])
    with pytest.raises(UserError, match="does not match"):
        SelectedBatches.load(tampered / "selected.npy")
