"""Is the data loader ever the bottleneck? `data_wait_s / train_s` of the digits example.

examples/digits-source.yaml (timm resnet10t from RANDOM init on the real sklearn digits 0-4,
rotation augmentation) at 160 px, 1 process, run with `numWorkers: 2` and, as the baseline in
the same script, `numWorkers: 0` (every PNG decoded, resized and augmented in the training
process between steps). Each epoch's metrics.jsonl record gives `data_wait_s` (the loop waiting
for its next batch) and `train_s` (the training steps); the figure is their ratio per epoch,
median over epochs, with its range. Goal: < 5 % with 2 workers.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_data_wait.py [--epochs 3] [--size 160]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def run(workers: int, epochs: int, size: int) -> list[dict]:
    from graft.spec import parse_spec
    from graft_trainer.loop import fit

    document = yaml.safe_load((ROOT / "examples" / "digits-source.yaml").read_text())
    spec = document["spec"]
    spec["data"].update(imageSize=size, numWorkers=workers)
    spec["strategy"]["phases"][0]["epochs"] = epochs
    spec["resources"] = {"procsPerNode": 1}
    with tempfile.TemporaryDirectory(prefix=f"bench-data-wait-{workers}-") as output:
        spec["output"] = {"dir": output}
        fit(parse_spec(document))
        lines = (Path(output) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--size", type=int, default=160)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    report = {}
    for workers in (0, 2):
        records = run(workers, args.epochs, args.size)
        shares = [r["data_wait_s"] / r["train_s"] for r in records]
        report[f"numWorkers {workers}"] = {
            "data_wait_share_median": round(statistics.median(shares), 4),
            "range": [round(min(shares), 4), round(max(shares), 4)],
            "per_epoch": [{"train_s": r["train_s"], "data_wait_s": r["data_wait_s"]} for r in records],
        }
        print(f"numWorkers {workers}: data_wait_s / train_s median {statistics.median(shares):.1%} "
              f"(epochs: {', '.join(f'{s:.1%}' for s in shares)})", flush=True)
    print(json.dumps({**report, "goal": "< 5 % with numWorkers 2"}, indent=2))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "trainer"))
    main()
