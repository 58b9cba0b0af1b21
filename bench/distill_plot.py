"""The plot of docs/distillation.md from bench/distill.py's results.json files.

    python bench/distill_plot.py --results outputs/distill_bench/results.json [more ...] --dst docs/img/distill.png

One panel per experiment found (main_<N>k: CE / KD / CE + KD at N thousand tokens, rounds_<N>k,
iterative_<N>k): a mark per variant at its mean held-out bits per byte, a dot per seed (a line joins
each seed's runs: the comparisons are paired), the inherited student's step-0 figure as a dashed line.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

PANEL = re.compile(r"^(main|rounds|iterative)_(\d+)k$")
TITLES = {"main": "KD vs CE, {n}k tokens", "rounds": "round 2 draw, {n}k tokens", "iterative": "pruning, {n}k tokens"}


def panels(results: list[dict]) -> list[tuple[str, dict[str, dict[str, float]]]]:
    """(title, variant -> seed -> bits per byte) for each experiment, main panels first by size."""
    found = {}
    for result in results:
        for key, groups in result.items():
            match = PANEL.match(key)
            if match and isinstance(groups, dict):
                found[(match.group(1), int(match.group(2)))] = {
                    name: {str(s): run["bpb"] for s, run in runs.items()} for name, runs in groups.items()}
    order = sorted(found, key=lambda k: (list(TITLES).index(k[0]), k[1]))
    return [(TITLES[kind].format(n=n), found[(kind, n)]) for kind, n in order]


def plot(results: list[dict], dst: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = panels(results)
    if not parts:
        raise SystemExit("no experiment results (main_*k, rounds_*k, iterative_*k) in the given files")
    step0 = next((r["student_step0_bpb"] for r in results if "student_step0_bpb" in r), None)
    fig, axes = plt.subplots(1, len(parts), figsize=(3.6 * len(parts), 4.2), squeeze=False)
    for ax, (title, variants) in zip(axes[0], parts):
        names = list(variants)
        means = [statistics.fmean(variants[n].values()) for n in names]
        # A mean marker, not a bar: the axis does not start at 0. A seed's runs are joined by a line,
        # since the comparisons are paired by seed.
        ax.plot(range(len(names)), means, "_", color="black", markersize=28, markeredgewidth=2, label="mean")
        seeds = sorted({s for runs in variants.values() for s in runs})
        for s in seeds:
            at = [(i, variants[n][s]) for i, n in enumerate(names) if s in variants[n]]
            ax.plot(*zip(*at), "o-", color=f"C{seeds.index(s)}", markersize=4, linewidth=0.8, alpha=0.8,
                    label=f"seed {s}")
        low = min(v for runs in variants.values() for v in runs.values())
        high = max(v for runs in variants.values() for v in runs.values())
        ax.set_ylim(low - 0.15, high + 0.1)
        ax.set_xlim(-0.5, len(names) - 0.5)
        if step0 is not None and step0 < high + 0.5:
            ax.axhline(step0, linestyle="--", color="grey", linewidth=1)
        ax.set_xticks(range(len(names)), [n.replace(" (", "\n(").replace(", KD's", ",\nKD's") for n in names],
                      fontsize=7, rotation=20)
        ax.set_title(title, fontsize=9)
    axes[0][0].set_ylabel("held-out bits per byte (lower is better)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Recovering the demo's inherited student of SmolLM2-135M (dots: seeds)", fontsize=10)
    fig.tight_layout()
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(dst)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, nargs="+", required=True, help="bench/distill.py results.json files")
    parser.add_argument("--dst", type=Path, required=True, help="PNG to write")
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.results if not p.is_file()]
    if missing:
        raise SystemExit(f"--results: no such file: {', '.join(missing)}")
    plot([json.loads(p.read_text()) for p in args.results], args.dst)
    print(f"wrote {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
