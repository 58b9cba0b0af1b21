"""bench/gpu_check.py --dry-run: the whole GPU check on CPU at a tiny shape, every row filled
(trainer, save and resume, InternEvo's LLAMA2, resample scoring), none FAILED."""

import subprocess
import sys

from .helpers import REPO


def test_gpu_check_dry_run_fills_every_row(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "--dry-run", "--out", str(tmp_path)],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    table = result.stdout[result.stdout.index("GPU check"):]
    assert result.returncode == 0, table + result.stderr[-3000:]
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in table.splitlines()[3:] if line.startswith("|")}
    for check in ("torch", "flash-attn", "attention path", "random data", "our trainer, 1 rank", "MFU",
                  "max_memory_allocated", "save and resume", "InternEvo LLAMA2, 1 rank", "resample scoring, 1 rank"):
        assert check in rows, (check, table)
    assert rows["attention path"] == "SDPA per document" and rows["flash-attn"] == "not installed"
    assert rows["MFU"] == "n/a" and rows["save and resume"] == "ok"
    assert any(check.startswith("parity:") and result == "ok" for check, result in rows.items())
    for check in ("our trainer, 1 rank", "InternEvo LLAMA2, 1 rank", "resample scoring, 1 rank"):
        assert rows[check].endswith("tokens/s") and float(rows[check].split()[0].replace(",", "")) > 0
    assert (tmp_path / "ckpt" / "3" / "model_tp0_pp0.pt").is_file()
