"""Start-up time of `openuni --help`, `import openuni` and a bad-input `openuni generate` (which must fail before
importing torch), two source trees alternated (A B B A) on a shared machine.

    python benchmarks/startup.py --before /tmp/before/src --rounds 5

`--before` is another checkout's `src` (for instance `git archive HEAD~1 src | tar -x -C /tmp/before`); without it
only this tree is timed. Prints the median wall and process CPU time (children included) per case and the ratio
of the per-pair medians; writes JSON with `--json`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1] / "src"
CASES = {
    "import openuni": [sys.executable, "-c", "import openuni"],
    "openuni --help": [sys.executable, "-m", "openuni.cli", "--help"],
    "openuni generate (bad input)": [sys.executable, "-m", "openuni.cli", "generate", ""],
    "import openuni.pipeline": [sys.executable, "-c", "import openuni.pipeline"],
}


def timed(command: list[str], src: Path) -> tuple[float, float]:
    """(wall s, CPU s of the child) for one run of `command` with `src` first on the path."""
    env = dict(os.environ, PYTHONPATH=str(src))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, help="the other tree's src folder (the baseline)")
    parser.add_argument("--rounds", type=int, default=5, help="A B B A rounds per case")
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    trees = {"after": HERE} if args.before is None else {"before": args.before, "after": HERE}
    results = {}
    for case in args.cases:
        runs = {name: [] for name in trees}
        ratios = []
        for _ in range(args.rounds):
            order = list(trees) + list(reversed(trees)) if len(trees) == 2 else list(trees)
            pair = {name: [] for name in trees}
            for name in order:
                result = timed(CASES[case], trees[name])
                runs[name].append(result)
                pair[name].append(result[0])
            if len(trees) == 2:
                ratios.append(statistics.mean(pair["before"]) / statistics.mean(pair["after"]))
        entry = {name: {"wall_s": statistics.median(w for w, _ in r), "cpu_s": statistics.median(c for _, c in r)}
                 for name, r in runs.items()}
        if ratios:
            entry["speedup_before_over_after"] = statistics.median(ratios)
        results[case] = entry
        line = "  ".join(f"{name} {v['wall_s']:.2f} s wall / {v['cpu_s']:.2f} s CPU" for name, v in entry.items()
                         if isinstance(v, dict))
        ratio = f"  ratio {entry['speedup_before_over_after']:.2f}x" if ratios else ""
        print(f"{case:32s} {line}{ratio}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
