"""The cross-process contracts as each side uses them: what the trainer writes, every reader
reads back the same; oversized payloads still fit the termination message; the renderers, the
RBAC rules and the SDK agree on the child kinds."""

from __future__ import annotations

import json

import pytest
import yaml

from graft.jobstatus import termination_summary
from graft.render import TARGETS, render
from graft.spec import parse_spec
from graft.spec.contracts import (
    CHILD_KINDS, JOB_LABEL, MESSAGE_LIMIT, OPERATOR_RBAC_RULES, Progress, Result, Summary, SUSPEND_PATHS,
    latest_progress, progress_line, read_progress, read_result, read_termination_message, result_line,
    termination_message,
)

from sdk_specs import TINY_JOB


@pytest.mark.parametrize("prefix", ["", "[rank 0] ", "[tiny-digits-master-0] ", "(RayTrainWorker pid=11) "])
def test_a_progress_line_reads_back_behind_any_log_prefix(prefix):
    written = Progress(epoch=2, epochs=4, phase="head", val_accuracy=0.9, samples_per_s=1234.5, eta_s=30.0)
    read = read_progress(prefix + progress_line(written))
    assert read == written
    assert read.as_dict() == {"epoch": 2, "epochs": 4, "phase": "head", "val_accuracy": 0.9,
                              "samples_per_s": 1234.5, "eta_s": 30.0}


def test_lines_of_an_older_trainer_without_a_version_still_read():
    assert read_progress('graft-progress {"epoch": 1, "epochs": 3}').as_dict() == {"epoch": 1, "epochs": 3}
    assert read_progress("graft-progress {broken") is None
    assert read_progress("epoch 1 done") is None
    lines = ['graft-progress {"epoch": 1, "epochs": 2}', "other", 'graft-progress {"epoch": 2, "epochs": 2}']
    assert latest_progress(lines).epoch == 2


def test_the_summary_of_a_thousand_ranks_fits_the_termination_message():
    summary = Summary(name="big", val_accuracy=0.93, epochs_run=10, replica_fingerprints=["f" * 64] * 1024,
                      peak_rss_mib=[1234.5] * 1024, feature_cache={"hit": True})
    message = termination_message(summary)
    assert len(message.encode()) <= MESSAGE_LIMIT
    pod = {"status": {"containerStatuses": [{"state": {"terminated": {"message": message}}}]}}
    seen = termination_summary(pod)
    assert seen["name"] == "big" and seen["val_accuracy"] == 0.93 and seen["epochs_run"] == 10
    assert "replica_fingerprints" in seen["dropped"] and "replica_fingerprints" not in seen


def test_a_ray_result_keeps_its_summary_when_it_must_shrink():
    result = Result(checkpoint="/s/step-30", best_checkpoints=["/s/" + "x" * 300] * 20,
                    summary=Summary(val_accuracy=0.7, replica_fingerprints=["f" * 64] * 100))
    line = result_line(result)
    assert len(line.encode()) <= len("graft-result ") + MESSAGE_LIMIT
    read = read_result("(driver) " + line)
    assert read.checkpoint == "/s/step-30" and read.summary.val_accuracy == 0.7
    assert read_termination_message("not json") is None


@pytest.mark.parametrize("target", TARGETS)
def test_renderers_make_the_child_kind_every_reader_expects(target):
    doc = yaml.safe_load(yaml.safe_dump(TINY_JOB))
    doc["spec"]["suspend"] = True
    child = render(parse_spec(doc), target)[1]
    kind = CHILD_KINDS[target]
    assert (child["apiVersion"], child["kind"]) == (kind.api_version, kind.kind)
    assert child["metadata"]["labels"][JOB_LABEL] == "tiny-digits"
    node = child
    for key in SUSPEND_PATHS[target]:  # where the SDK and the operator flip it
        node = node[key]
    assert node is True
    rule = next(r for r in OPERATOR_RBAC_RULES if r["apiGroups"] == [kind.group] and kind.plural in r["resources"])
    assert {"create", "get", "watch", "patch"} <= set(rule["verbs"])
    json.dumps(child)  # plain data, as the API client sends it
