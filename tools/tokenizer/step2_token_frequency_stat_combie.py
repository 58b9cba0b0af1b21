"""The seed's step 2, kept working:

    python tools/tokenizer/step2_token_frequency_stat_combie.py --src tmp_stat_files_dir --dst total_token_freq.json

Sums the per-file results of step 1 into one `{"<id>": count}` JSON file.
A thin wrapper over `rethinktiny.vocab.sum_counts.merge_counts` (same as `rethinktiny vocab merge`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without install


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", required=True, type=str, help="folder of step 1 results")
    parser.add_argument("--dst", required=True, type=str, help="output frequency JSON file")
    parser.add_argument("--force", action="store_true", help="replace an existing --dst")
    args = parser.parse_args(argv)
    from rethinktiny.cli import run_command
    from rethinktiny.cli.vocab import merge_command

    return run_command(merge_command, args)


if __name__ == "__main__":
    sys.exit(main())
