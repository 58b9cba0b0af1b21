"""InternEvo batch sampler `data.sampler="multi_round"`: train on the batches `rethinktiny resample`
chose, read straight from the original data folder (no copy; for corpora too big to rewrite).

    data = dict(..., train_folder=ORIGINAL_DATA, sampler="multi_round",
                selected_batches="<resample dst>/selected.npy")

`install()` wraps InternEvo's `get_tokenized_train_loader_items` so the loader gets a
`MultiRoundBatchSampler` in place of its `StaticBatchSampler` when the config asks for it.
The sampler keeps InternEvo's sampler interface: `batch_count` and `num_consumed_samples_in_epoch`
(which InternEvo resets at an epoch end), `copy()` (the train state's lock-step copy),
`state_dict()` / `load_state_dict()` (saved as `sampler.pt` in each checkpoint), so a resumed run
continues at the step where it stopped. Its position is its own step counter, which InternEvo
never resets, so an epoch boundary cannot lose or repeat steps on resume.
"""

from __future__ import annotations

from typing import Iterator

from rethinktiny.errors import UserError
from rethinktiny.resample.selection import RoundSchedule, SelectedBatches

SAMPLER_NAME = "multi_round"


def _dataset_files(datasets, folder: str) -> list[tuple[str, int]]:
    """(path relative to the data folder, packed rows) of InternEvo's per-file packed datasets."""
    import os

    files = []
    for ds in datasets:
        path = getattr(getattr(ds, "dataset", None), "path", None)
        if path is None:
            raise UserError("data.sampler='multi_round' needs InternEvo's tokenized packed datasets")
        files.append((os.path.relpath(path, folder), len(ds)))
    return files


def check_training_spec(selection: SelectedBatches, data_cfg) -> None:
    """The training config must pack rows as they were packed when the batches were scored."""
    spec = selection.spec
    wanted = {"seq_len": spec.seq_len, "micro_bsz": spec.micro_bsz, "min_length": spec.min_length,
              "pack_sample_into_one": spec.pack_sample_into_one}
    for key, value in wanted.items():
        got = data_cfg.get(key, 0 if key == "min_length" else False)
        if got != value:
            raise UserError(f"data.{key} is {got!r} but the batches in {selection.folder} were formed with {value!r}")
    if data_cfg.get("rampup_batch_size"):
        raise UserError("data.rampup_batch_size is not supported with data.sampler='multi_round'; set it to ''")


class MultiRoundBatchSampler:
    """Yields this rank's packed-row numbers for each step over the chosen batches.

    Args:
        selection: the chosen batches (from `data.selected_batches`).
        micro_num: rows per rank per step.
        data_rank, data_world_size: this rank and the data-parallel size.
    """

    def __init__(self, selection: SelectedBatches, micro_num: int, data_rank: int, data_world_size: int) -> None:
        self.selection = selection
        self.micro_num, self.data_rank, self.data_world_size = micro_num, data_rank, data_world_size
        self.schedule = RoundSchedule(selection, micro_num, data_rank, data_world_size)
        self.steps_done = 0  # our position; never reset by InternEvo
        self.batch_count = 0
        self.num_consumed_samples_in_epoch = 0

    @property
    def epoch(self) -> int:
        return self.steps_done // self.schedule.steps_per_epoch

    def __len__(self) -> int:
        return self.schedule.steps_per_epoch

    def __iter__(self) -> Iterator[list[int]]:
        """The rest of the current epoch (InternEvo starts a new iterator for the next one)."""
        end = (self.epoch + 1) * self.schedule.steps_per_epoch
        while self.steps_done < end:
            rows = self.schedule.rows(self.steps_done)
            self.steps_done += 1
            self.batch_count += 1
            self.num_consumed_samples_in_epoch += len(rows)
            yield [int(r) for r in rows]
        self.num_consumed_samples_in_epoch = 0

    def state_dict(self) -> dict:
        return {"sampler": SAMPLER_NAME, "selected_sha256": self.selection.sha256, "steps_done": self.steps_done,
                "batch_count": self.batch_count, "num_consumed_samples_in_epoch": self.num_consumed_samples_in_epoch,
                "micro_num": self.micro_num, "data_world_size": self.data_world_size}

    def load_state_dict(self, states: dict) -> None:
        if states.get("sampler") != SAMPLER_NAME:
            raise UserError("the checkpoint's sampler state is not a multi_round sampler's; resume with the "
                            "sampler the run was started with")
        current = {"selected_sha256": self.selection.sha256, "micro_num": self.micro_num,
                   "data_world_size": self.data_world_size}
        for key, value in current.items():
            if states.get(key) != value:
                raise UserError(f"resume: the checkpoint's sampler has {key}={states.get(key)!r}, this run {value!r}")
        self.steps_done = int(states["steps_done"])
        self.batch_count = int(states["batch_count"])
        self.num_consumed_samples_in_epoch = int(states["num_consumed_samples_in_epoch"])

    def copy(self) -> "MultiRoundBatchSampler":
        twin = MultiRoundBatchSampler(self.selection, self.micro_num, self.data_rank, self.data_world_size)
        twin.load_state_dict(self.state_dict())
        return twin


def build_sampler(data_cfg, datasets, data_rank: int, data_world_size: int) -> MultiRoundBatchSampler:
    """The multi-round sampler for InternEvo's per-file packed datasets, after every check."""
    path = data_cfg.get("selected_batches")
    if not path:
        raise UserError("data.sampler='multi_round' needs data.selected_batches (a resample output's selected.npy)")
    selection = SelectedBatches.load(path)
    check_training_spec(selection, data_cfg)
    selection.check_files(_dataset_files(datasets, data_cfg.train_folder), f"data.train_folder {data_cfg.train_folder}")
    return MultiRoundBatchSampler(selection, int(data_cfg.micro_num), data_rank, data_world_size)


def _wrap(original):
    def get_tokenized_train_loader_items(data_cfg):
        train_ds, train_sampler, collate_fn = original(data_cfg)
        name = data_cfg.get("sampler") or None
        if name is None:
            return train_ds, train_sampler, collate_fn
        if name != SAMPLER_NAME:
            raise UserError(f"data.sampler={name!r} is unknown; rethinktiny provides {SAMPLER_NAME!r}")
        sampler = build_sampler(data_cfg, train_sampler.datasets, train_sampler.data_rank,
                                train_sampler.data_world_size)
        _log(sampler)
        return train_ds, sampler, collate_fn

    get_tokenized_train_loader_items.__rethinktiny__ = True
    get_tokenized_train_loader_items.__wrapped__ = original
    return get_tokenized_train_loader_items


def _log(sampler: MultiRoundBatchSampler) -> None:
    from internlm.core.context import global_context as gpc

    if gpc.is_rank_for_log():
        selection = sampler.selection
        print(f"[rethinktiny] multi_round sampler: {len(selection.selected)} of {selection.num_batches} batches "
              f"from {selection.folder}, {len(sampler)} steps per epoch", flush=True)


def install() -> None:
    """Let InternEvo's train loader honour `data.sampler="multi_round"` (idempotent)."""
    from internlm.data import build_dataloader

    current = build_dataloader.get_tokenized_train_loader_items
    if not getattr(current, "__rethinktiny__", False):
        build_dataloader.get_tokenized_train_loader_items = _wrap(current)

