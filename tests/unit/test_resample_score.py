"""Batch scores: the packed-row loss is the loss of each document piece on its own, and only a
checkpoint of the config's model is accepted."""

import pytest
import torch
import torch.nn.functional as F

from rethinktiny.checkpoint import load_model
from rethinktiny.errors import UserError
from rethinktiny.resample.batches import PackedCorpus, RowReader, batch_rows
from rethinktiny.resample.packing import IGNORE
from rethinktiny.resample.scoring import batch_loss, row_loss
from rethinktiny.resample.spec import BatchSpec

from .resample_helpers import model_config, write_checkpoint, write_small_data

SPEC = BatchSpec(seq_len=24, micro_bsz=3, micro_num=2)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tokenized_sample):
    data = write_small_data(tokenized_sample, tmp_path_factory.mktemp("d") / "train", tokens_per_file=1500)
    return PackedCorpus(data, SPEC)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    cfg = model_config()
    folder = write_checkpoint(tmp_path_factory.mktemp("ckpt") / "1", cfg, seed=3)
    return load_model(folder, cfg, "float32")


def _piecewise_loss(model, row) -> float:
    """Each cu_seqlens piece run alone through the unpacked forward: what packing must reproduce."""
    total, count = 0.0, 0
    cu = row.cu_seqlens.tolist()
    with torch.no_grad():
        for start, end in zip(cu[:-1], cu[1:]):
            logits = model(torch.from_numpy(row.tokens[start:end]).unsqueeze(0))[0]
            labels = torch.from_numpy(row.labels[start:end])
            total += F.cross_entropy(logits, labels, ignore_index=IGNORE, reduction="sum").item()
            count += int((labels != IGNORE).sum())
    return total / count


def test_packed_row_loss_equals_each_document_piece_alone(corpus, model):
    with RowReader(corpus) as reader:
        rows = [reader.row(i) for i in range(0, corpus.num_rows, max(1, corpus.num_rows // 12))]
    assert any(len(r.cu_seqlens) > 2 for r in rows)  # rows that pack several documents are covered
    for row in rows:
        assert row_loss(model, row) == pytest.approx(_piecewise_loss(model, row), rel=1e-5)


def test_batch_loss_is_the_mean_of_its_rows_and_independent_of_other_batches(corpus, model):
    batches = batch_rows(corpus.num_rows, SPEC)
    with RowReader(corpus) as reader:
        rows = [reader.row(int(i)) for i in batches[0]]
        alone = batch_loss(model, rows)
        [batch_loss(model, [reader.row(int(i)) for i in batches[k]]) for k in (1, 2)]
        again = batch_loss(model, [reader.row(int(i)) for i in batches[0]])
    assert alone == again == sum(row_loss(model, r) for r in rows) / len(rows)


def test_checkpoint_of_another_shape_is_refused(tmp_path):
    wide = write_checkpoint(tmp_path / "wide", model_config({"intermediate_size": 192}))
    (wide / "model_config.json").unlink()  # no saved config: the tensor shapes must catch it
    with pytest.raises(UserError, match=r"shape mismatch for layers\.0\.feed_forward\.w1\.weight: checkpoint "
                                        r"\(192, 64\), model \(176, 64\)"):
        load_model(wide, model_config())
    deep = write_checkpoint(tmp_path / "deep", model_config({"num_layers": 3}))
    with pytest.raises(UserError, match="different model: num_layers is 3 there but 2 in the config"):
        load_model(deep, model_config())


def test_checkpoint_with_other_hyperparameters_is_refused(tmp_path):
    folder = write_checkpoint(tmp_path / "eps", model_config({"layer_norm_epsilon": 1e-6}))
    with pytest.raises(UserError, match="norm_eps is 1e-06 there but 1e-05"):
        load_model(folder, model_config())
