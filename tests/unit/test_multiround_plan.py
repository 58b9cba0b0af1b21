"""rethinktiny.resample.multiround: the plan every round shares (no training here)."""

from __future__ import annotations

import pytest

from rethinktiny.errors import UserError
from rethinktiny.resample.multiround import _scoring_options, make_plan
from tests.unit.resample_helpers import write_config


def test_subset_and_reference_reach_every_rounds_resample(tmp_path, tokenized_sample):
    config = write_config(tmp_path / "cfg.py", tokenized_sample)
    plan = make_plan(config, 2, ratio=0.5, work=tmp_path / "work", max_batches=8, reference=tmp_path / "teacher",
                     floor=0.1)
    assert plan.mode == "sampler"  # nothing is copied unless asked
    assert _scoring_options(plan) == dict(max_batches=8, reference=str(tmp_path / "teacher"), floor=0.1)
    # unset options are left to resample_data's own defaults, so plain multiround is plain resample
    assert _scoring_options(make_plan(config, 2, ratio=0.5, work=tmp_path / "work")) == {}


def test_the_cli_passes_them_through(tmp_path, tokenized_sample):
    from rethinktiny.cli import build_parser

    config = write_config(tmp_path / "cfg.py", tokenized_sample)
    args = build_parser("multiround").parse_args(
        ["multiround", "--config", str(config), "--rounds", "2", "--ratio", "0.5", "--fraction", "0.25",
         "--reference", "teacher", "--floor", "0.2"])
    assert (args.fraction, args.reference, args.floor, args.max_batches) == (0.25, "teacher", 0.2, None)


def test_a_bad_mode_is_one_line(tmp_path, tokenized_sample):
    config = write_config(tmp_path / "cfg.py", tokenized_sample)
    with pytest.raises(UserError, match="--mode must be one of"):
        make_plan(config, 2, ratio=0.5, mode="move")
