"""Distillation core: losses, token-map renormalisation, context keys, the cache round trip and
the config section's errors (no InternEvo; tests/integration/test_distill.py trains)."""

import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from rethinktiny.checkpoint import save_model_only
from rethinktiny.config import ModelConfig
from rethinktiny.data.tokenized import BinWriter
from rethinktiny.distill import cache as cache_module
from rethinktiny.distill.build import build_share, plan_cache, run_cache_ranks, summarise_row
from rethinktiny.distill.cache import (TeacherCache, context_keys, read_cache_manifest, unit_path,
                                       write_cache_manifest, write_index, write_unit)
from rethinktiny.distill.losses import (forward_kl, sample_summary, sparse_kl, teacher_log_probs, topk_summary)
from rethinktiny.distill.section import check_distill_section, read_section
from rethinktiny.distill.teacher import load_teacher
from rethinktiny.errors import UserError
from rethinktiny.model import PanGuPi
from rethinktiny.resample.batches import PackedCorpus, RowReader
from rethinktiny.resample.spec import BatchSpec
from rethinktiny.vocab.tokenmap import TokenMap, save_token_map

CFG = ModelConfig(hidden_size=32, num_layers=2, num_attention_heads=2, num_kv_heads=2, intermediate_size=64,
                  vocab_size=64, name="distill-test")


def _logits(seed: int, shape=(40, 64), scale=3.0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale


# ---- losses -------------------------------------------------------------------------------------

def test_forward_kl_is_zero_for_the_teacher_itself_and_positive_otherwise():
    teacher = _logits(0)
    logp, _ = teacher_log_probs(teacher)
    assert forward_kl(teacher, logp).item() == pytest.approx(0.0, abs=1e-6)
    assert forward_kl(_logits(1), logp).item() > 0.1


def test_forward_kl_matches_torch_kl_div_and_leaves_out_ignored_labels():
    student, teacher = _logits(1), _logits(2)
    logp_t, _ = teacher_log_probs(teacher, temperature=2.0)
    labels = torch.arange(40)
    labels[::3] = -100
    keep = labels != -100
    expected = torch.nn.functional.kl_div(torch.log_softmax(student[keep] / 2, -1), logp_t[keep], log_target=True,
                                          reduction="batchmean") * 4
    assert forward_kl(student, logp_t, labels, temperature=2.0).item() == pytest.approx(expected.item(), rel=1e-5)


def test_token_map_renormalises_on_the_kept_ids_and_reports_their_mass():
    teacher = _logits(3, (5, 10))
    kept = torch.tensor([1, 4, 7])
    logp, mass = teacher_log_probs(teacher, kept)
    p = torch.softmax(teacher, -1)
    torch.testing.assert_close(logp.exp(), p[:, kept] / p[:, kept].sum(-1, keepdim=True))
    torch.testing.assert_close(mass, p[:, kept].sum(-1))


def test_sampled_summary_is_an_unbiased_estimate_of_the_dense_loss():
    student, teacher = _logits(4, scale=1.0), _logits(5, scale=1.0)
    logp, _ = teacher_log_probs(teacher)
    dense = forward_kl(student, logp).item()
    gen = torch.Generator().manual_seed(0)
    estimates = []
    for _ in range(200):
        ids, counts, at = sample_summary(logp, 8, gen)
        assert (counts.sum(-1) == 8).all()
        estimates.append(sparse_kl(student, ids, counts / 8, at).item())
    mean, se = np.mean(estimates), np.std(estimates) / np.sqrt(len(estimates))
    assert abs(mean - dense) < 3 * se + 1e-3, (mean, dense, se)


def test_sparse_kl_of_the_teacher_itself_is_zero():
    teacher = _logits(6)
    logp, _ = teacher_log_probs(teacher)
    ids, counts, at = sample_summary(logp, 16, torch.Generator().manual_seed(1))
    assert sparse_kl(teacher, ids, counts / 16, at).item() == pytest.approx(0.0, abs=1e-5)
    ids, probs, at = topk_summary(logp, 64)  # every id: the dense loss
    assert sparse_kl(_logits(7), ids, probs, at).item() == pytest.approx(forward_kl(_logits(7), logp).item(), rel=1e-4)


# ---- context keys -------------------------------------------------------------------------------

def test_context_keys_depend_on_the_piece_prefix_only():
    tokens = torch.tensor([5, 6, 7, 5, 6, 8, 9, 5])
    indexes = torch.tensor([0, 1, 2, 0, 1, 2, 3, 0])
    keys = context_keys(tokens, indexes)
    assert keys[0] == keys[3] == keys[7] and keys[1] == keys[4]  # same prefix, wherever the piece is
    assert len({int(keys[2]), int(keys[5]), int(keys[6])}) == 3
    assert keys[2] != context_keys(torch.tensor([6, 7]), torch.tensor([0, 1]))[1]  # prefix matters, not the suffix


# ---- cache round trip ----------------------------------------------------------------------------

def _data(folder, docs=12, seed=0):
    rng = np.random.default_rng(seed)
    writer = BinWriter(folder / "en" / "part-000.bin")
    for _ in range(docs):
        writer.write(rng.integers(0, 32, size=int(rng.integers(5, 40))).tolist())
    writer.close()
    return folder


def _teacher(folder, seed=0):
    torch.manual_seed(seed)
    model = PanGuPi(CFG)
    return save_model_only(folder, model.state_dict(), CFG)


def _token_map(path):
    save_token_map(path, TokenMap(tuple(range(0, 64, 2)), 64))  # 32 kept ids of 64
    return path


def test_load_teacher_is_frozen_and_computes_the_saved_model(tmp_path):
    _teacher(tmp_path / "t")
    teacher = load_teacher(tmp_path / "t")
    torch.manual_seed(0)
    expected = PanGuPi(CFG).eval()
    ids = torch.randint(0, 64, (1, 9))
    torch.testing.assert_close(teacher(ids), expected(ids))
    assert not any(p.requires_grad for p in teacher.parameters())


@pytest.mark.parametrize("mode", ["sample", "topk"])
def test_cache_round_trip_resumes_and_finds_every_context(tmp_path, mode):
    data, spec = _data(tmp_path / "data"), BatchSpec(seq_len=16, micro_bsz=2, micro_num=1)
    _teacher(tmp_path / "t")
    dst = tmp_path / "cache"
    args = (str(tmp_path / "t"), str(data), dst, spec, str(_token_map(tmp_path / "map.json")), 8, mode, 1.0,
            "float32", 2, 0, False)
    manifest = plan_cache(*args)
    assert manifest["student_vocab"] == 32 and manifest["num_units"] > 2
    assert build_share(dst, 0, 2, progress=False) > 0  # rank 0 of 2 ...
    with pytest.raises(UserError, match="units missing"):
        read_cache_manifest(dst)
    plan_cache(*args)  # a resumed run checks the same plan
    assert build_share(dst, 0, 1, progress=False) == manifest["num_units"] // 2  # ... the rest by one rank
    cache = TeacherCache(dst)
    teacher = load_teacher(tmp_path / "t")
    kept = torch.arange(0, 64, 2)
    with RowReader(PackedCorpus(data, spec)) as reader:
        row = reader.row(1)
    found = cache.lookup(context_keys(torch.as_tensor(row.tokens), torch.as_tensor(row.indexes)))
    assert found["found"].all()
    fresh = summarise_row(teacher, row, kept, manifest, torch.Generator().manual_seed(0), "cpu")
    np.testing.assert_allclose(found["mass"].numpy(), fresh["mass"].astype(np.float32), atol=1e-3)
    if mode == "topk":
        np.testing.assert_array_equal(found["ids"].numpy(), fresh["ids"].astype(np.int64))
    else:
        assert (found["weights"].sum(-1) - 1).abs().max() < 1e-6
    with pytest.raises(UserError, match="other settings"):
        plan_cache(*args[:5], 4, *args[6:])
    unknown = cache.lookup(torch.tensor([123456789]))
    assert not unknown["found"].any() and unknown["weights"].abs().sum() == 0


def test_run_cache_ranks_leaves_an_index_that_training_maps(tmp_path):
    data, spec = _data(tmp_path / "data", docs=4), BatchSpec(seq_len=16, micro_bsz=2, micro_num=1)
    _teacher(tmp_path / "t")
    dst = tmp_path / "cache"
    plan_cache(str(tmp_path / "t"), str(data), dst, spec, None, 4, "topk", 1.0, "float32", 2, 0, False)
    run_cache_ranks(dst, SimpleNamespace(in_process=True), progress=False)
    assert (dst / "index" / "index.json").is_file()
    mapped, in_memory = TeacherCache(dst), TeacherCache(dst, use_index=False)
    assert mapped.mapped and not in_memory.mapped
    np.testing.assert_array_equal(mapped.keys, in_memory.keys)
    np.testing.assert_array_equal(mapped.ids, in_memory.ids)


# ---- the merged index ----------------------------------------------------------------------------

def _synthetic_cache(folder, units=4, rows=300, k=4, mode="sample", seed=0):
    """A cache of random summaries (no model) whose keys repeat within and across units;
    returns the pool the keys were drawn from."""
    rng = np.random.default_rng(seed)
    write_cache_manifest(folder, {"mode": mode, "k": k, "num_units": units, "temperature": 1.0}, force=False)
    pool = rng.integers(0, 1 << 62, size=units * rows // 2)
    for unit in range(units):
        weights = (rng.integers(0, k + 1, (rows, k)).astype(np.uint8) if mode == "sample"
                   else rng.random((rows, k)).astype(np.float16))
        write_unit(folder, unit, {"keys": rng.choice(pool, rows),
                                  "ids": rng.integers(0, 64, (rows, k)).astype(np.uint16), "weights": weights,
                                  "logp": -rng.random((rows, k)).astype(np.float16) * 5,
                                  "mass": rng.random(rows).astype(np.float16)})
    return pool


def _raw_units(folder, units):
    parts = [np.load(unit_path(folder, u)) for u in range(units)]
    return {name: np.concatenate([p[name] for p in parts]) for name in cache_module.ARRAYS}


def _assert_same_lookups(a, b, keys):
    x, y = a.lookup(keys), b.lookup(keys)
    assert x.keys() == y.keys()
    for name in x:
        assert x[name].dtype == y[name].dtype and torch.equal(x[name], y[name]), name


@pytest.mark.parametrize("mode", ["sample", "topk"])
@pytest.mark.parametrize("chunk", [7, None])  # 7: every chunked pass crosses many chunk boundaries
def test_the_index_gives_the_in_memory_lookups_and_keeps_the_first_of_equal_keys(tmp_path, monkeypatch, mode, chunk):
    if chunk is not None:
        monkeypatch.setattr(cache_module, "_CHUNK", chunk)
    pool = _synthetic_cache(tmp_path, mode=mode)
    raw = _raw_units(tmp_path, 4)
    unit_of = np.repeat(np.arange(4), 300)
    repeated = [key for key in np.unique(raw["keys"]) if len(set(unit_of[raw["keys"] == key])) > 1]
    assert len(repeated) > 50  # the cache does hold keys summarised in several units
    in_memory = TeacherCache(tmp_path, use_index=False)
    write_index(tmp_path)
    mapped = TeacherCache(tmp_path)
    assert mapped.mapped and not in_memory.mapped and len(mapped) == len(np.unique(raw["keys"]))
    absent = np.random.default_rng(1).integers(0, 1 << 62, size=100)
    wanted = torch.from_numpy(np.random.default_rng(2).permutation(np.concatenate([pool, pool[:40], absent])))
    _assert_same_lookups(in_memory, mapped, wanted)
    found = mapped.lookup(torch.tensor(repeated))
    first = [int(np.flatnonzero(raw["keys"] == key)[0]) for key in repeated]
    np.testing.assert_array_equal(found["ids"].numpy(), raw["ids"][first].astype(np.int64))
    np.testing.assert_array_equal(found["logp"].numpy(), raw["logp"][first].astype(np.float32))


def test_a_cache_with_an_index_is_memory_mapped_and_reports_the_bytes_on_disk(tmp_path):
    _synthetic_cache(tmp_path)
    write_index(tmp_path)
    cache = TeacherCache(tmp_path)
    assert cache.mapped
    assert all(isinstance(a, np.memmap) for a in (cache.keys, cache.ids, cache.weights, cache.logp, cache.mass))
    assert cache.nbytes() == sum(p.stat().st_size for p in (tmp_path / "index").glob("*.npy"))
    read_cache_manifest(tmp_path)  # the index folder is no unit


def _remove_index_json(folder):
    (folder / "index" / "index.json").unlink()


def _other_num_units(folder):
    path = folder / "index" / "index.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "num_units": 3}))


def _other_settings(folder):  # units of the same sizes, summarised another way
    path = folder / "cache.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "temperature": 2.0}))


def _cut_short(folder):
    path = folder / "index" / "ids.npy"
    path.write_bytes(path.read_bytes()[:-100])


@pytest.mark.parametrize("damage", [_remove_index_json, _other_num_units, _other_settings, _cut_short])
def test_a_stale_or_unfinished_index_is_not_used_but_rebuilt(tmp_path, damage):
    pool = _synthetic_cache(tmp_path)
    write_index(tmp_path)
    damage(tmp_path)
    assert cache_module.open_index(tmp_path, read_cache_manifest(tmp_path)) is None
    cache = TeacherCache(tmp_path)
    assert cache.mapped  # rebuilt: the folder is writable
    _assert_same_lookups(cache, TeacherCache(tmp_path, use_index=False), torch.from_numpy(pool))


def test_a_read_only_cache_without_an_index_is_merged_in_memory(tmp_path, monkeypatch):
    _synthetic_cache(tmp_path)
    monkeypatch.setattr(cache_module.os, "access", lambda path, mode: False)
    cache = TeacherCache(tmp_path)
    assert not cache.mapped and not (tmp_path / "index").exists()
    assert cache.lookup(torch.from_numpy(_raw_units(tmp_path, 4)["keys"]))["found"].all()


def test_a_builder_killed_before_the_rename_leaves_nothing_that_is_taken_for_an_index(tmp_path):
    _synthetic_cache(tmp_path)
    # The worst moment: the temporary is complete, index.json included, but never renamed.
    killed = ("import os, sys; from rethinktiny.distill import cache; "
              "cache._install_index = lambda *a: os._exit(9); cache.write_index(sys.argv[1])")
    assert subprocess.run([sys.executable, "-c", killed, str(tmp_path)]).returncode == 9
    left = [p for p in tmp_path.iterdir() if p.name.startswith(".index.tmp-")]
    assert len(left) == 1 and (left[0] / "index.json").is_file() and not (tmp_path / "index").exists()
    assert not TeacherCache(tmp_path, use_index=False).mapped
    assert TeacherCache(tmp_path).mapped  # built anew; the dead builder's temporary is removed
    units = [f"unit-{u:06d}.npz" for u in range(4)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache.json", "index", *units]


def test_write_index_leaves_no_temporary_behind_and_keeps_a_current_index(tmp_path, monkeypatch):
    _synthetic_cache(tmp_path)
    expected = ["cache.json", "index"] + [f"unit-{u:06d}.npz" for u in range(4)]
    write_index(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == expected
    before = (tmp_path / "index" / "keys.npy").stat().st_mtime_ns
    write_index(tmp_path)  # the same units: nothing to do
    assert (tmp_path / "index" / "keys.npy").stat().st_mtime_ns == before
    _remove_index_json(tmp_path)

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_module, "_scatter_units", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_index(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == expected  # the failed build's temporary is gone
    monkeypatch.undo()
    write_index(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == expected and TeacherCache(tmp_path).mapped


def test_replacing_a_cache_with_force_removes_its_index(tmp_path):
    _synthetic_cache(tmp_path)
    write_index(tmp_path)
    write_cache_manifest(tmp_path, {"mode": "sample", "k": 4, "num_units": 4, "temperature": 2.0}, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache.json"]


# ---- the config section -------------------------------------------------------------------------

def _config(**distill):
    return {"model": {"vocab_size": 32}, "distill": distill}


def test_section_errors_are_one_line_user_errors(tmp_path):
    _teacher(tmp_path / "t")
    with pytest.raises(UserError, match="unknown key distill.temprature .*did you mean 'temperature'"):
        read_section({"teacher": "x", "temprature": 2.0})
    with pytest.raises(UserError, match="exactly one of teacher"):
        read_section({"kd_weight": 1.0})
    with pytest.raises(UserError, match="temperature must be > 0"):
        read_section({"teacher": "x", "temperature": 0})
    with pytest.raises(UserError, match="not found"):
        check_distill_section(_config(teacher=str(tmp_path / "missing")))
    with pytest.raises(UserError, match="64 ids, the student model.vocab_size 32; pass distill.token_map"):
        check_distill_section(_config(teacher=str(tmp_path / "t")))
    with pytest.raises(UserError, match="no cache.json"):
        check_distill_section(_config(cache=str(tmp_path)))
    assert check_distill_section({"model": {}}) is None


def test_section_with_a_matching_token_map_passes(tmp_path):
    _teacher(tmp_path / "t")
    spec = check_distill_section(_config(teacher=str(tmp_path / "t"), token_map=str(_token_map(tmp_path / "m.json"))))
    assert spec.kd_weight == 1.0 and spec.ce_weight == 0.0 and spec.temperature == 1.0
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(list(range(16))))
    with pytest.raises(UserError, match="16 entries but the target vocab_size is 32"):
        check_distill_section(_config(teacher=str(tmp_path / "t"), token_map=str(bad)))


def test_config_export_writes_a_distill_section_the_check_reads(tmp_path):
    from rethinktiny.config import get_preset
    from rethinktiny.configfiles.export import TrainOptions, export_config
    from rethinktiny.configfiles.load import load_config_file

    _teacher(tmp_path / "t")
    path = export_config(tmp_path / "c.py", cfg=get_preset("tiny").replace(vocab_size=32),
                         opts=TrainOptions(cpu_ranks=2, distill=str(tmp_path / "t"),
                                           token_map=str(_token_map(tmp_path / "m.json"))))
    raw = load_config_file(path)
    spec = check_distill_section(raw)
    assert (spec.teacher, spec.token_map, spec.kd_weight, spec.ce_weight) == (str(tmp_path / "t"),
                                                                             str(tmp_path / "m.json"), 1.0, 0.0)


def test_the_pre_launch_config_check_refuses_a_missing_teacher(tmp_path):
    """TrainingConfig.from_file (what the launcher checks before any rank starts) runs the distill
    check: a missing teacher is one line there, not an error inside every rank."""
    from rethinktiny.config import get_preset
    from rethinktiny.configfiles.export import TrainOptions, export_config
    from rethinktiny.configfiles.training import TrainingConfig

    path = export_config(tmp_path / "c.py", cfg=get_preset("tiny").replace(vocab_size=32),
                         opts=TrainOptions(cpu_ranks=2, distill=str(tmp_path / "gone")))
    with pytest.raises(UserError, match="gone.*not found"):
        TrainingConfig.from_file(path, check_data=False)
    _teacher(tmp_path / "gone")
    with pytest.raises(UserError, match="pass distill.token_map"):  # 64 teacher ids, 32 student ids
        TrainingConfig.from_file(path, check_data=False)
