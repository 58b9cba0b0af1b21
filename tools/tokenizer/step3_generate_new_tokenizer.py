"""The seed's step 3, kept working:

    python tools/tokenizer/step3_generate_new_tokenizer.py --origin_tokenizer_dir origin_tokenizer \
        --vocab_num 48000 --output new_tokenizer_dir --token_freq_file total_token_freq.json

Prunes the SentencePiece tokenizer (a folder with `tokenizer.model`, or the file itself) to
--vocab_num pieces and writes `tokenizer.model`, Hugging Face tokenizer files, `token_map.json`
and `report.json` into --output. Unlike the seed, special pieces are chosen by type and no kept
piece is dead (see docs/compact-tokenizer.md).
A thin wrapper over `rethinktiny.vocab.prune.prune_tokenizer` (same as `rethinktiny vocab prune`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without install


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--origin_tokenizer_dir", required=True, type=str, dest="tokenizer",
                        help="folder with tokenizer.model (or the model file)")
    parser.add_argument("--vocab_num", required=True, type=int, help="pieces in the new tokenizer")
    parser.add_argument("--output", required=True, type=str, dest="dst", help="output folder")
    parser.add_argument("--token_freq_file", required=True, type=str, dest="counts",
                        help="frequency JSON from step 2")
    parser.add_argument("--preset", default="pangu_pi_1b_pro", help="model preset for report.json")
    parser.add_argument("--force", action="store_true", help="replace an existing --output")
    args = parser.parse_args(argv)
    from rethinktiny.cli import run_command
    from rethinktiny.cli.vocab import prune_command

    return run_command(prune_command, args)


if __name__ == "__main__":
    sys.exit(main())
