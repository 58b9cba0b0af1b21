"""`make bench`: run the benchmarks one after another (not part of CI).

    python bench/run_all.py              # the quick set (CPU, minutes each)
    python bench/run_all.py --all        # also the long ones (inheritance memory on a 13 GB
                                         #   synthetic 7B checkpoint, the ablations)
    python bench/run_all.py --only train_step vocab_prune

Each benchmark prints a ratio against a baseline measured in the same run. The corpus and
tokenizer benchmarks default to ../shared/data (pass their own flags to point elsewhere).
Timings on a shared machine move with its load: compare ratios, and rerun on a quiet machine.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
QUICK = ["train_step", "score_throughput", "vocab_count", "vocab_prune", "convert_memory", "arch_decode"]
LONG = ["inherit_memory", "inherit_ablation", "paper_ablation"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--all", action="store_true", help="also run the long benchmarks")
    parser.add_argument("--only", nargs="+", choices=QUICK + LONG, help="run just these")
    args = parser.parse_args()
    names = args.only or (QUICK + LONG if args.all else QUICK)
    failed = []
    for name in names:
        print(f"\n===== bench/{name}.py =====", flush=True)
        started = time.time()
        result = subprocess.run([sys.executable, str(BENCH / f"{name}.py")], check=False)
        print(f"----- {name}: exit {result.returncode}, {time.time() - started:.0f} s", flush=True)
        if result.returncode != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
