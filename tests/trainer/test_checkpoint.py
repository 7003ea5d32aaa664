"""Checkpoint housekeeping a user relies on: only the newest `keepLast` complete checkpoints
remain, and a checkpoint directory is never silently resumed by a different job. Tiny timm
resnet10t RANDOMLY INITIALISED, on real digits."""

from __future__ import annotations

import pytest

from graft.spec import SpecError
from graft.spec.contracts import COORDINATION_DIR
from graft_trainer.loop import fit
from trainer_jobs import digits_doc, job_of

pytestmark = pytest.mark.slow


def test_keep_last_and_refusal_to_resume_a_different_job(tmp_path):
    doc = digits_doc(tmp_path, strategy={"phases": [{"epochs": 3, "lr": 1e-2}]}, checkpoint={"keepLast": 2})
    summary = fit(job_of(doc))
    steps = {p.name for p in (tmp_path / "out" / "checkpoints").iterdir() if p.name != COORDINATION_DIR}
    assert steps == {f"step-{2 * summary['steps'] // 3}", f"step-{summary['steps']}"}  # no .tmp leftovers

    changed = digits_doc(tmp_path, strategy={"phases": [{"epochs": 3, "lr": 5e-2}]}, checkpoint={"keepLast": 2})
    with pytest.raises(SpecError, match="written by a different job"):
        fit(job_of(changed))
