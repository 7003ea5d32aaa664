"""The termination message Kubernetes keeps (4096 bytes) survives any job size: at 1,024 ranks
the per-rank facts stay in report.json and the message keeps the results; a long failure is
trimmed, not lost."""

from __future__ import annotations

import json

from graft.spec.contracts import MESSAGE_LIMIT, TERMINATION_LOG_ENV, Summary, read_termination_message, termination_message
from graft_trainer.report import write_termination_message


def _summary(ranks: int) -> dict:
    """What loop._finish returns for a job of `ranks` processes."""
    return {
        "name": "big-job", "best_metric": "val_accuracy", "best_value": 0.93, "best_epoch": 4,
        "val_accuracy": 0.92, "best_val_accuracy": 0.93, "epochs_run": 5, "steps": 12000, "elapsed_s": 3600.0,
        "output_dir": "/workspace/output", "model_dir": "/workspace/output/model", "plot": "/workspace/output/plot.png",
        "metrics": "/workspace/output/metrics.jsonl", "report": "/workspace/output/report.json", "bad_samples": 3,
        "replica_fingerprints": [f"{rank:064x}" for rank in range(ranks)],
        "peak_rss_mib": [1234.5 + rank for rank in range(ranks)],
    }


def test_the_final_summary_of_1024_ranks_fits_and_keeps_the_results(tmp_path, monkeypatch):
    path = tmp_path / "termination-log"
    monkeypatch.setenv(TERMINATION_LOG_ENV, str(path))
    write_termination_message(termination_message(Summary(**_summary(1024))))
    assert len(path.read_bytes()) <= MESSAGE_LIMIT
    kept = read_termination_message(path.read_text())
    assert kept is not None and kept.best_value == 0.93 and kept.val_accuracy == 0.92 and kept.steps == 12000
    assert "replica_fingerprints" in (kept.dropped or [])  # said, not silently lost


def test_a_failure_naming_many_ranks_is_trimmed_to_the_limit(tmp_path, monkeypatch):
    path = tmp_path / "termination-log"
    monkeypatch.setenv(TERMINATION_LOG_ENV, str(path))
    message = "training stalled: stuck: " + "; ".join(f"rank {r} on host-{r} (pid {r}, last step seen 7)" for r in range(1024))
    write_termination_message(message)
    text = path.read_bytes()
    assert len(text) <= MESSAGE_LIMIT and text.startswith(b"training stalled: stuck: rank 0 on host-0")
    assert text.endswith(b"...")
    json.dumps(text.decode())  # still valid UTF-8
