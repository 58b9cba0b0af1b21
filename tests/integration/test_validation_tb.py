"""Validation every `data.valid_every` steps on `data.valid_folder` (InternEvo's own evaluation, per
data type) and TensorBoard events in `tensorboard_folder`, read back with tensorboard's reader."""

import json
import math

import pytest

from .helpers import explain, metrics, start_finetune, train_tiny


@pytest.fixture(scope="module")
def tokenized_valid(tmp_path_factory, tiny_tokenizer, sample_valid_corpus):
    from rethinktiny.data.prepare import tokenize_corpus

    root = tmp_path_factory.mktemp("data")
    folder = root / "valid"
    tokenize_corpus(sample_valid_corpus, tiny_tokenizer, folder)
    # A data type too small for one validation batch per rank: skipped on every rank.
    one_doc = root / "tiny.jsonl"
    one_doc.write_text(json.dumps({"text": "one short document", "source": TOO_SMALL}) + "\n")
    tokenize_corpus(one_doc, tiny_tokenizer, root / "tiny")
    (root / "tiny" / TOO_SMALL).rename(folder / TOO_SMALL)
    return folder


TOO_SMALL = "tiny_type"


def _data_types(folder):
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and any(p.glob("*.bin")) and p.name != TOO_SMALL)


@pytest.fixture(scope="module")
def validated_run(tmp_path_factory, tokenized_sample, tokenized_valid):
    root = tmp_path_factory.mktemp("valid_run")
    save, tb = root / "ckpt", root / "tb"
    result = train_tiny(save, tokenized_sample, 4, "--set", "data.valid_every=2",
                        "--set", f"data.valid_folder={tokenized_valid}", "--set", "enable_tb=True",
                        "--set", f"tensorboard_folder={tb}", "--set", "ckpt.checkpoint_every=100")
    assert result.returncode == 0, explain(result)
    return save, tb, result


def test_validation_every_valid_every_steps_per_data_type(validated_run, tokenized_valid):
    save, _, result = validated_run
    rows = metrics(save)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert [("valid" in r) for r in rows] == [False, True, False, True]
    types = _data_types(tokenized_valid)
    assert len(types) >= 2 and (tokenized_valid / TOO_SMALL).is_dir()
    assert f"validation skips {TOO_SMALL}" in result.stdout
    for row in (rows[1], rows[3]):
        assert sorted(row["valid"]) == types
        for figures in row["valid"].values():
            assert math.isfinite(figures["loss"]) and figures["perplexity"] > 1 and 0 <= figures["acc"] <= 1
            assert f"valid  {row['step']:>6} |" in result.stdout
    # Two more steps of training lower the validation loss of the whole validation set.
    assert sum(f["loss"] for f in rows[3]["valid"].values()) < sum(f["loss"] for f in rows[1]["valid"].values())
    # Validation time is not counted as training time: tokens/s stays the same order.
    assert rows[1]["tokens_per_s"] > rows[2]["tokens_per_s"] / 5, rows


def test_tensorboard_events_read_with_tensorboards_reader(validated_run, tokenized_valid):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    save, tb, _ = validated_run
    events = EventAccumulator(str(tb))
    events.Reload()
    scalars = events.Tags()["scalars"]
    rows = metrics(save)
    train_loss = events.Scalars("train/loss")
    assert [e.step for e in train_loss] == [1, 2, 3, 4]
    assert [round(e.value, 4) for e in train_loss] == [round(r["loss"], 4) for r in rows]
    for data_type in _data_types(tokenized_valid):
        for name in ("loss", "perplexity", "acc"):
            assert f"valid/{data_type}/{name}" in scalars, scalars
        loss = events.Scalars(f"valid/{data_type}/loss")
        assert [e.step for e in loss] == [2, 4]
        assert [round(e.value, 4) for e in loss] == [round(rows[s - 1]["valid"][data_type]["loss"], 4) for s in (2, 4)]


def test_missing_valid_folder_fails_before_start():
    result = start_finetune("--set", "data.valid_every=5", "--set", "data.valid_folder='/nonexistent/valid'",
                            timeout=120)
    assert result.returncode == 2, explain(result)
    assert result.stderr.strip().splitlines()[-1] == "error: /nonexistent/valid: data folder not found"
