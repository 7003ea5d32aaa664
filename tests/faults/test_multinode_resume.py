"""Resume is one decision across nodes: two torchrun "nodes" on loopback, each in its own
working directory (outputs are node-local), one shared checkpoint directory. A node killed
mid-epoch and both restarted continue from the checkpoint rank 0 chose, to the same weights as
an uninterrupted run; a checkpoint directory the nodes do not share is refused at start."""

from __future__ import annotations

import pytest

from fault_jobs import (assert_same_weights, fault_doc, final_weights, finish, free_port, history, kill_node,
                        launch_node, wait_for, write)

pytestmark = [pytest.mark.slow, pytest.mark.distributed, pytest.mark.faults]


def _two_nodes(spec, nodes):
    port = free_port()
    return [launch_node(spec, rank, port, cwd) for rank, cwd in enumerate(nodes)]


def _log(cwd) -> str:
    return "".join(p.read_text() for p in cwd.glob("node-*.log"))


def test_a_node_killed_mid_epoch_resumes_with_the_other_to_identical_weights(tmp_path, reference):
    shared = tmp_path / "shared" / "checkpoints"
    spec = write(fault_doc(tmp_path, output={"dir": "out"}, checkpoint={"dir": str(shared)}), tmp_path / "job.yaml")
    nodes = [tmp_path / "node-0", tmp_path / "node-1"]

    agents = _two_nodes(spec, nodes)
    wait_for(lambda: (shared / "step-8").is_dir(), agents, "a mid-epoch checkpoint")
    kill_node(agents[1])
    assert finish(agents)[0] != 0, "node 0 must fail when its peer dies, not hang"
    assert not (nodes[0] / "out" / "report.json").exists(), "the job finished before the kill"

    assert finish(_two_nodes(spec, nodes)) == [0, 0], _log(nodes[0])[-3000:] + _log(nodes[1])[-3000:]
    assert f"resuming from {shared}/step-" in _log(nodes[0])
    assert_same_weights(reference.weights, final_weights(shared))
    assert history(nodes[0] / "out") == reference.history


def test_a_checkpoint_dir_the_nodes_do_not_share_is_refused_at_start(tmp_path):
    spec = write(fault_doc(tmp_path, output={"dir": "out"}, checkpoint={"dir": "checkpoints"}), tmp_path / "job.yaml")
    nodes = [tmp_path / "node-0", tmp_path / "node-1"]  # "checkpoints" resolves inside each node's own dir

    codes = finish(_two_nodes(spec, nodes))
    assert all(code != 0 for code in codes)
    for cwd in nodes:
        text = _log(cwd)
        assert "spec.checkpoint.dir: 'checkpoints' is not shared by every node: rank 1 on" in text, text[-3000:]
        assert "spec.kubernetes.volumes" in text
    assert not [step for cwd in nodes for step in (cwd / "checkpoints").glob("step-*")]  # refused before training
