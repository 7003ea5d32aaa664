"""Fuzz the spec: N generated FineTuneJobs (default 10,000), valid and broken, each validated,
rendered for every target or refused naming the field, and (when invalid) submitted to a local
backend to prove nothing is written. Prints how many were valid, refused and the rate.

Run: .venv/bin/python bench/fuzz_spec.py [--examples N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "render"))

from hypothesis import HealthCheck, given, settings  # noqa: E402

from spec_fuzz import check, documents  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=10_000)
    args = parser.parse_args()
    outcomes: Counter[str] = Counter()

    with tempfile.TemporaryDirectory() as scratch:
        home = Path(scratch)

        @settings(max_examples=args.examples, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(document=documents())
        def run(document):
            outcomes[check(document, home)] += 1

        started = time.perf_counter()
        run()
        seconds = time.perf_counter() - started
    total = sum(outcomes.values())
    print(f"{total} specs in {seconds:.1f} s ({total / seconds:.0f}/s): {outcomes['valid']} valid (rendered for "
          f"every target or refused naming the setting), {outcomes['invalid']} invalid (refused naming the "
          "field, nothing written); no other exception")


if __name__ == "__main__":
    main()
