"""Render time per spec per target (goal < 5 ms), as a ratio to JSON-serialising the same spec.

Run: .venv/bin/python bench/bench_render.py [--repeat N]
The baseline, `json.dumps(job.to_document())`, is the least any renderer must do (dump the
spec once); the ratio shows what building the pod templates costs on top of that.
"""

from __future__ import annotations

import argparse
import json
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "render"))

from graft.render import render  # noqa: E402
from render_specs import TARGETS, reference_spec  # noqa: E402

GOAL_MS = 5.0


def best_ms(fn, repeat: int, number: int = 50) -> float:
    return min(timeit.repeat(fn, repeat=repeat, number=number)) / number * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    print(f"{'spec':<12}{'target':<12}{'render ms':>10}{'json ms':>9}{'ratio':>8}  goal <{GOAL_MS} ms")
    worst = 0.0
    for spec_name in TARGETS:
        job = reference_spec(spec_name)
        baseline = best_ms(lambda: json.dumps(job.to_document()), args.repeat)
        for target in TARGETS:
            if spec_name != "trainjob" and target == "trainjob":
                continue  # gang scheduling, envFrom, elastic: refused by the TrainJob renderer
            took = best_ms(lambda: render(job, target), args.repeat)
            worst = max(worst, took)
            print(f"{spec_name:<12}{target:<12}{took:>10.3f}{baseline:>9.3f}{took / baseline:>8.1f}x")
    print(f"worst render: {worst:.3f} ms -> {'PASS' if worst < GOAL_MS else 'FAIL'} (goal < {GOAL_MS} ms)")


if __name__ == "__main__":
    main()
