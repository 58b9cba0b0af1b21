"""`rethinktiny arch memory`: the per-GPU plan against saved-tensor bytes measured on CPU, the
optimizer's ZeRO-1 arithmetic, and the shipped GPU configs fitting 80 GB by their own plan."""

import functools
import json

import pytest

from rethinktiny.arch.memory import GB, MemoryPlan, check_fits, measure_activations, memory_plan, with_layers
from rethinktiny.cli import main
from rethinktiny.configfiles.load import apply_overrides, load_config_file
from rethinktiny.errors import UserError
from tests.conftest import REPO

TINY = REPO / "configs" / "tiny_cpu.py"
LLM1B = REPO / "configs" / "LLM1B.py"
LLM15B = REPO / "configs" / "LLM1.5B.py"


def _config(path, *overrides):
    raw = load_config_file(path)
    apply_overrides(raw, list(overrides))
    return raw


# A 2-layer model of the 1B Pro width (1792, FFN 4864) in its training dtype (bf16) at 2 x 128 tokens: seconds on CPU.
# (vocabulary 4096: the output projection is not a block, and a 48k one is most of the CPU time)
WIDE_2_LAYERS = (LLM1B, "model.num_layers=2", "model.vocab_size=4096", "data.micro_bsz=2", "data.seq_len=128",
                 "parallel.zero1.size=-1")


@functools.lru_cache(maxsize=None)
def _measured(case, checkpoint) -> int:
    return measure_activations(_config(*case, f"model.checkpoint={checkpoint}"))["measured_activations_bytes"]


@pytest.mark.parametrize("case", [(TINY,), WIDE_2_LAYERS], ids=["tiny_cpu", "1792x2_bf16"])
@pytest.mark.parametrize("checkpoint", [False, True], ids=["full", "checkpointed"])
def test_plan_within_20_percent_of_measured_saved_tensors(case, checkpoint):
    plan = memory_plan(_config(*case, f"model.checkpoint={checkpoint}"), 1).activations_bytes
    measured = _measured(case, checkpoint)
    assert 0.8 <= plan / measured <= 1.2, (plan, measured)


def test_checkpointing_shrinks_the_plan_and_the_measurement():
    full, ckpt = (_config(*WIDE_2_LAYERS, f"model.checkpoint={value}") for value in (False, True))
    assert memory_plan(ckpt, 1).activations_bytes < 0.8 * memory_plan(full, 1).activations_bytes
    assert _measured(WIDE_2_LAYERS, True) < 0.8 * _measured(WIDE_2_LAYERS, False)


def test_checkpoint_share_as_internevo_reads_it():
    """InternEvo checkpoints layer i when i < num_layers * share; the plan counts those layers."""
    shares = (False, True, 0, 0.5, 0.51, 1.0)
    assert [memory_plan(_config(LLM1B, f"model.checkpoint={s}"), 8).checkpointed_layers for s in shares] == \
        [0, 20, 0, 10, 11, 20]
    with pytest.raises(UserError, match="checkpoint"):
        memory_plan(_config(LLM1B, "model.checkpoint=1.5"), 8)


def test_zero1_shards_fp32_master_and_moments():
    n = memory_plan(_config(LLM1B), 8).num_params
    one, eight = memory_plan(_config(LLM1B), 1), memory_plan(_config(LLM1B), 8)
    assert one.optimizer_bytes == 12 * n  # fp32 master copy of bf16 weights + two Adam moments
    assert eight.zero1 == 8 and abs(eight.optimizer_bytes - 12 * n / 8) < 16
    assert one.params_bytes == one.grads_bytes == 2 * n  # ZeRO-1 shards no gradients
    fp32 = memory_plan(_config(TINY), 2)
    assert fp32.optimizer_bytes == 8 * -(-fp32.num_params // 2)  # fp32 training: no separate master copy
    assert memory_plan(_config(LLM1B, "parallel.zero1.size=2"), 8).zero1 == 2
    with pytest.raises(UserError, match="zero1.size 8"):
        memory_plan(_config(LLM1B, "parallel.zero1.size=8"), 4)


@pytest.mark.parametrize("path", [LLM1B, LLM15B], ids=["LLM1B", "LLM1.5B"])
@pytest.mark.parametrize("nproc", [8, 1])
def test_shipped_gpu_configs_fit_80_gb(path, nproc):
    """One 8-GPU node, and one GPU (bench/gpu_check.py trains LLM1B on one rank)."""
    plan = memory_plan(_config(path), nproc)
    check_fits(plan, 80 * GB)
    raw = _config(path)
    assert raw["data"]["micro_bsz"] * raw["data"]["micro_num"] == 30  # the seed's tokens per step
    assert raw["parallel"]["zero1"]["size"] <= 0  # ZeRO-1 over however many ranks a run has


def test_check_fits_refuses_in_one_line():
    plan = memory_plan(_config(LLM1B), 1)
    with pytest.raises(UserError, match=r"exceeds .*micro_bsz.*--ignore-memory-plan") as err:
        check_fits(plan, 40 * GB)
    assert "\n" not in str(err.value)
    check_fits(plan, 40 * GB, force=True)
    check_fits(plan, None)  # no GPU visible: nothing to check


def test_cli_json_and_measure(capsys):
    args = ["arch", "memory", "--config", str(TINY), "--set", "data.micro_bsz=1", "--nproc", "2", "--json"]
    assert main(args) == 0
    plan = json.loads(capsys.readouterr().out)
    assert list(plan) == ["params_bytes", "grads_bytes", "optimizer_bytes", "activations_bytes", "logits_bytes",
                          "total_bytes"]
    assert plan["total_bytes"] == sum(v for k, v in plan.items() if k != "total_bytes")
    assert main([*args, "--measure", "--measure-layers", "2"]) == 0
    measured = json.loads(capsys.readouterr().out)
    assert measured["measured_layers"] == 2
    assert 0.8 <= plan["activations_bytes"] / measured["measured_activations_bytes"] <= 1.2
    assert main(["arch", "memory", "--config", str(LLM1B), "--nproc", "1", "--gpu-gb", "40"]) == 2
    assert "exceeds" in capsys.readouterr().err


def test_online_teacher_is_planned(tmp_path):
    """A `distill.teacher` checkpoint: its weights and one micro-batch of its logits in the training dtype."""
    import torch

    from rethinktiny.checkpoint import save_model_only
    from rethinktiny.config import get_preset
    from rethinktiny.model import PanGuPi

    teacher = get_preset("tiny").replace(num_layers=8, vocab_size=5000)
    with torch.device("meta"):
        shapes = PanGuPi(teacher).state_dict()
    save_model_only(tmp_path / "teacher", {k: torch.zeros(v.shape) for k, v in shapes.items()}, teacher)
    raw = _config(TINY)
    raw["distill"] = dict(teacher=str(tmp_path / "teacher"))
    plan, student = memory_plan(raw, 2), memory_plan(_config(TINY), 2)
    assert plan.teacher_bytes == 4 * (teacher.num_params() + 512 * 5000) and "teacher_bytes" in plan.to_dict()
    assert plan.total_bytes == student.total_bytes + plan.teacher_bytes
    raw["distill"] = dict(cache=str(tmp_path / "cache"))  # offline: no teacher on the GPU
    assert memory_plan(raw, 2).teacher_bytes == 0


def test_with_layers_plans_what_was_measured():
    assert memory_plan(with_layers(_config(TINY), 2), 2).num_layers == 2
    assert isinstance(memory_plan(_config(TINY), 2), MemoryPlan)


def test_exported_gpu_config_shards_over_all_ranks_and_carries_checkpoint(tmp_path):
    """`config export` for GPUs: ZeRO-1 follows the ranks (InternEvo refuses a size above them),
    bf16 with InternEvo's comm overlap, and --checkpoint lands in model.checkpoint and the plan."""
    from rethinktiny.configfiles.export import TrainOptions, export_config, parse_checkpoint

    path = export_config(tmp_path / "c.py", preset="pangu_pi_1b_pro", opts=TrainOptions(checkpoint=parse_checkpoint("0.5")))
    raw = load_config_file(path)
    assert raw["parallel"]["zero1"]["size"] == -1 and raw["model"]["dtype"] == "torch.bfloat16"
    assert raw["hybrid_zero_optimizer"]["overlap_sync_grad"] and raw["hybrid_zero_optimizer"]["overlap_sync_param"]
    assert raw["model"]["checkpoint"] == 0.5
    assert memory_plan(raw, 2).zero1 == 2 and memory_plan(raw, 2).checkpointed_layers == 11  # 21 layers
    with pytest.raises(UserError, match="--checkpoint"):
        parse_checkpoint("half")
