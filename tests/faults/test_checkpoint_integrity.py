"""Checkpoints you can trust: kill -9 while a checkpoint is being written never leaves a newest
checkpoint that cannot load; a truncated newest checkpoint and a bit-flipped one before it are
found by their manifests, skipped with a warning naming the bad file, and the job resumes from
the one before them to the same weights as an uninterrupted run."""

from __future__ import annotations

import re

import pytest
from safetensors.torch import load_file

from fault_jobs import (assert_same_weights, fault_doc, final_weights, finish, history, kill_all, launch_ranks,
                        logs, wait_for, write)
from graft_trainer import checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.distributed, pytest.mark.faults]


def _writing(root) -> set[int]:
    return {int(m.group(1)) for p in root.glob(".step-*.tmp") if (m := re.match(r"\.step-(\d+)\.tmp", p.name))}


def test_kill_during_writes_then_corrupt_newest_checkpoints_still_resume_exactly(tmp_path, reference):
    spec = write(fault_doc(tmp_path, checkpoint={"everySteps": 2}), tmp_path / "job.yaml")
    root = tmp_path / "out" / "checkpoints"
    for _ in range(2):  # the second kill lands in a resumed run
        before = max(_writing(root) | {int(p.name.split("-")[1]) for p in checkpoint.steps(root)}, default=0)
        ranks = launch_ranks(spec)
        # the third checkpoint of this run, caught while it is being written
        wait_for(lambda: any(step >= before + 6 for step in _writing(root)), ranks, "a checkpoint being written")
        kill_all(ranks)
        for published in checkpoint.steps(root):  # every published checkpoint is whole and loads
            assert checkpoint.problem(published) is None
            checkpoint.read(published)
            load_file(published / "model.safetensors")

    newest, previous, fallback = checkpoint.steps(root)[:3]
    model = newest / "model.safetensors"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])  # truncated, as a full disk leaves it
    state = bytearray((previous / "training.pt").read_bytes())
    state[len(state) // 2] ^= 0x10  # one flipped bit
    (previous / "training.pt").write_bytes(bytes(state))

    assert finish(launch_ranks(spec)) == [0, 0], logs(spec)[-3000:]
    text = logs(spec)
    assert f"checkpoint {newest.name} is unusable, falling back to the previous one: {model} does not match" in text
    assert f"checkpoint {previous.name} is unusable, falling back to the previous one: {previous / 'training.pt'}" in text
    assert f"resuming from {fallback} " in text
    assert_same_weights(reference.weights, final_weights(root))
    assert history(tmp_path / "out") == reference.history
