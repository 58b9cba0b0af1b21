"""Cut the bundled sample (data/sample/{train,valid}.jsonl) out of the shared corpus.

    python tools/make_sample.py --corpus ../shared/data/corpus/corpus.jsonl --dst data/sample

Deterministic: documents are taken in file order, evenly spread over each source, until each
source's byte budget is met; every 20th taken document goes to the held-out `valid.jsonl`.
"""

import argparse
import json
from collections import defaultdict
from pathlib import Path

BUDGET_BYTES = {"en_pydocs": 1_000_000, "en_fortunes": 700_000, "zh_fortunes": 900_000}
VALID_EVERY = 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--dst", default="data/sample")
    args = parser.parse_args()
    lines_by_source = defaultdict(list)
    with open(args.corpus, encoding="utf-8") as f:
        for line in f:
            lines_by_source[json.loads(line)["source"]].append(line)
    train, valid = [], []
    for source, budget in BUDGET_BYTES.items():
        lines = lines_by_source[source]
        total = sum(len(x.encode()) for x in lines)
        stride = max(1, int(total / budget))  # spread the picks over the whole source
        used = 0
        for taken, line in enumerate(lines[::stride]):
            if used >= budget:
                break
            (valid if taken % VALID_EVERY == VALID_EVERY - 1 else train).append(line)
            used += len(line.encode())
    dst = Path(args.dst)
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "train.jsonl").write_text("".join(train), encoding="utf-8")
    (dst / "valid.jsonl").write_text("".join(valid), encoding="utf-8")
    print(f"train: {len(train)} documents, valid: {len(valid)} documents -> {dst}")


if __name__ == "__main__":
    main()
