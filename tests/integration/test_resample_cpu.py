"""Multi-round training with real processes: scoring under torchrun (2 CPU ranks) equals scoring in
one process, the resampled folder trains with InternEvo's real 2-rank trainer, and the
`multi_round` sampler trains on exactly the chosen batches and resumes exactly."""

import functools
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.unit.resample_helpers import folder_bytes, model_config, write_checkpoint, write_config, write_small_data

from .helpers import REPO, explain, metrics, start_finetune


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tokenized_sample):
    root = tmp_path_factory.mktemp("multiround")
    data = write_small_data(tokenized_sample, root / "train", tokens_per_file=3000)
    config = write_config(root / "config.py", data, seq_len=32, micro_bsz=2, micro_num=2)
    ckpt = write_checkpoint(root / "init", model_config(), seed=5)
    return {"root": root, "data": data, "config": config, "ckpt": ckpt}


def rethinktiny(*args, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rethinktiny", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def _resample(setup, dst, nproc, *extra):
    return rethinktiny("resample", "--config", str(setup["config"]), "--ckpt", str(setup["ckpt"]), "--dst", str(dst),
                       "--ratio", "0.5", "--nproc-per-node", str(nproc), "--no-progress", *extra)


def test_two_rank_scoring_equals_one_rank_scoring(setup):
    one, two = setup["root"] / "one_rank", setup["root"] / "two_ranks"
    result = _resample(setup, one, 1)
    assert result.returncode == 0, explain(result)
    result = _resample(setup, two, 2)
    assert result.returncode == 0, explain(result)
    assert "torch.distributed.run" not in result.stdout and "kept" in result.stdout
    assert folder_bytes(one) == folder_bytes(two)  # losses, selection, data, plot and manifest


def test_multiround_copy_mode_trains_each_round_on_resampled_data(setup):
    work = setup["root"] / "rounds"
    result = rethinktiny("multiround", "--config", str(setup["config"]), "--rounds", "2", "--ratio", "0.5",
                         "--work", str(work), "--round-steps", "6", "3", "--mode", "copy", "--no-progress",
                         timeout=900)
    assert result.returncode == 0, explain(result)
    rounds = json.loads((work / "summary.json").read_text())
    assert [(r["round"], r["steps"]) for r in rounds] == [(1, 6), (2, 3)]
    assert rounds[1]["train_data"] == str(work / "round2" / "data")
    assert rounds[1]["num_selected"] == round(0.5 * rounds[1]["num_batches"])
    assert rounds[1]["mean_loss_selected"] >= rounds[1]["mean_loss_all"]
    # round 2 started from round 1's weights: its first step already beats round 1's first step
    assert rounds[1]["first_loss"] < rounds[0]["first_loss"] - 0.2, rounds
    assert [m["step"] for m in metrics(work / "round2" / "ckpt")] == [1, 2, 3]
    assert f"{rounds[1]['num_selected']}/{rounds[1]['num_batches']}" in result.stdout.splitlines()[-1]
    again = rethinktiny("multiround", "--config", str(setup["config"]), "--rounds", "2", "--ratio", "0.5",
                        "--work", str(work), "--round-steps", "6", "3", "--mode", "copy", "--no-progress")
    assert again.returncode == 0 and "training" not in again.stdout  # finished rounds are not redone


@functools.lru_cache(maxsize=1)
def _sampler_installed() -> bool:
    code = ("import rethinktiny.internevo as p; p.register()\n"
            "from internlm.data import build_dataloader as b\n"
            "print(getattr(b.get_tokenized_train_loader_items, '__rethinktiny__', False))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    return result.stdout.strip().endswith("True")


# Until rethinktiny.internevo.register() installs the sampler, each rank installs it first and then
# runs the same training entry start_finetune.py runs.
RANK_ENTRY = """import sys
import rethinktiny.internevo as plugin
plugin.register()
from rethinktiny.internevo.sampler import install
install()
from rethinktiny.internevo.train import main
sys.exit(main(sys.argv[1:]))
"""


def _train_with_sampler(setup, save, selected, steps, *extra):
    load = repr(dict(path=f"local:{setup['ckpt']}", content=("model",), ckpt_type="inherited"))
    sets = ["--set", f"ckpt.save_ckpt_folder='local:{save}'", "--set", f"data.total_steps={steps}",
            "--set", "ckpt.checkpoint_every=2", "--set", "data.sampler='multi_round'",
            "--set", f"data.selected_batches='{selected}'", "--set", f"ckpt.load_ckpt_info={load}", *extra]
    if _sampler_installed():
        return start_finetune(*sets, config=setup["config"])
    entry = setup["root"] / "rank_entry.py"
    entry.write_text(RANK_ENTRY)
    from rethinktiny.launch import free_port

    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), str(entry), "--config", str(setup["config"]), *sets]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)


def test_sampler_trains_on_the_chosen_batches_and_resumes_exactly(setup):
    selection = setup["root"] / "selection"
    result = _resample(setup, selection, 2, "--batch-ranks", "2", "--selection-only")
    assert result.returncode == 0, explain(result)
    save = setup["root"] / "sampler_run"
    result = _train_with_sampler(setup, save, selection / "selected.npy", 4)
    assert result.returncode == 0, explain(result)
    assert "multi_round sampler:" in result.stdout
    run = metrics(save)
    losses, chosen = np.load(selection / "losses.npy"), np.load(selection / "selected.npy")
    # step 1 trains the first chosen batch (both ranks' rows), from the checkpoint that scored it
    assert run[0]["loss"] == pytest.approx(losses[chosen[0]], rel=1e-4)
    resumed = setup["root"] / "sampler_resumed"
    resumed.mkdir()
    shutil.copytree(save / "2", resumed / "2")
    result = _train_with_sampler(setup, resumed, selection / "selected.npy", 4, "--set", "ckpt.auto_resume=True")
    assert result.returncode == 0, explain(result)
    assert [(m["step"], m["loss"]) for m in metrics(resumed)] == [(m["step"], m["loss"]) for m in run[2:]]
