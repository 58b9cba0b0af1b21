"""The seed's step 1, kept working:

    python tools/tokenizer/step1_token_frequency_stat.py --src cached_data_dir --dst tmp_stat_files_dir [--process_num N]

Counts token ids of every InternEvo `.bin` file below --src, one result file per input in --dst.
A thin wrapper over `rethinktiny.vocab.count.count_folder` (same as `rethinktiny vocab count`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without install


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", required=True, type=str, help="tokenized data folder")
    parser.add_argument("--dst", required=True, type=str, help="folder for the per-file results")
    from rethinktiny.cpus import available_cpus

    parser.add_argument("--process_num", default=available_cpus(), type=int,
                        help="parallel workers (threads; default: the CPUs this process may use)")
    parser.add_argument("--strict", action="store_true", help="a malformed line is an error")
    parser.add_argument("--force", action="store_true", help="recount files whose result is current")
    args = parser.parse_args(argv)
    from rethinktiny.cli import run_command
    from rethinktiny.cli.vocab import count_command

    return run_command(count_command, args)


if __name__ == "__main__":
    sys.exit(main())
