"""The seed's workflow: configs and start_finetune.py copied into an existing InternEvo setup."""

import shutil

from .helpers import REPO, explain, metrics, start_finetune


def test_copied_start_finetune_and_config_train(tmp_path, tokenized_sample):
    internevo_root = tmp_path / "InternEvo"
    (internevo_root / "configs").mkdir(parents=True)
    shutil.copy(REPO / "start_finetune.py", internevo_root / "start_finetune.py")
    shutil.copy(REPO / "configs" / "tiny_cpu.py", internevo_root / "configs" / "tiny_cpu.py")
    save = tmp_path / "ckpt"
    result = start_finetune("--set", f"data.train_folder={tokenized_sample}", "--set", f"ckpt.save_ckpt_folder=local:{save}",
                            "--set", "data.total_steps=3", "--nproc-per-node", "2",
                            config=internevo_root / "configs" / "tiny_cpu.py", cwd=internevo_root,
                            script=internevo_root / "start_finetune.py")
    assert result.returncode == 0, explain(result)
    assert [r["step"] for r in metrics(save)] == [1, 2, 3]
    assert (save / "3" / "model_tp0_pp0.pt").exists()


def test_launch_flags_cover_what_the_seed_hard_coded():
    result = start_finetune("--nproc-per-node", "8", "--nnodes", "2", "--node-rank", "1", "--master-addr", "10.0.0.7",
                            "--master-port", "1234", "--rdzv-timeout", "5400", "--dry-run", timeout=120)
    assert result.returncode == 0, explain(result)
    command = result.stdout.strip()
    for part in ("--nproc_per_node 8", "--nnodes 2", "--node_rank 1", "--master_addr 10.0.0.7", "--master_port 1234",
                 "--rdzv_conf timeout=5400", "-m rethinktiny.internevo.train"):
        assert part in command, command
