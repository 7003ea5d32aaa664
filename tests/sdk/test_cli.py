"""The `graft` CLI as users call it: typer's CliRunner for the verbs, a real subprocess where
the process boundary matters (import cost, pipes, exit codes)."""

from __future__ import annotations

import json
import subprocess
import sys

import jsonschema
import yaml
from typer.testing import CliRunner

from graft.cli import app

from sdk_specs import TINY_JOB, write_spec

runner = CliRunner()


def test_import_graft_is_fast_and_never_imports_torch():
    code = ("import sys, time; t = time.perf_counter(); import graft; took = time.perf_counter() - t; "
            "import graft.cli, graft.render; graft.Client; "
            "print(took, 'torch' in sys.modules, 'kubernetes' in sys.modules)")
    seconds, torch_loaded, kube_loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert float(seconds) < 0.3, f"import graft took {float(seconds):.3f}s"
    assert torch_loaded == "False", "the SDK/CLI imported torch"
    assert kube_loaded == "False", "the kubernetes client is imported before a backend needs it"


def test_validate_accepts_a_good_spec(tiny_spec):
    result = runner.invoke(app, ["validate", str(tiny_spec)])
    assert result.exit_code == 0, result.output
    assert "valid FineTuneJob 'tiny-digits'" in result.output


def test_validate_names_each_bad_field_and_exits_2(tmp_path):
    doc = yaml.safe_load(yaml.safe_dump(TINY_JOB))
    doc["spec"]["training"]["batchSzie"] = 8
    doc["spec"]["strategy"]["phases"][0]["lr"] = -1
    result = runner.invoke(app, ["validate", str(write_spec(tmp_path / "bad.yaml", doc))])
    assert result.exit_code == 2
    assert "spec.training.batchSzie: unknown field; did you mean 'batchSize'?" in result.output
    assert "spec.strategy.phases.0.lr" in result.output


def test_schema_is_a_valid_json_schema_that_accepts_the_tiny_job():
    result = runner.invoke(app, ["schema"])
    schema = json.loads(result.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema).validate(TINY_JOB)


def test_render_streams_yaml_that_kubectl_can_read(tiny_spec):
    proc = subprocess.run([sys.executable, "-m", "graft.cli", "render", str(tiny_spec),
                           "--target", "pytorchjob"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    objects = list(yaml.safe_load_all(proc.stdout))
    assert [o["kind"] for o in objects] == ["ConfigMap", "PyTorchJob"]
    assert objects[1]["metadata"]["name"] == "tiny-digits"
    for target, kind in (("rayjob", "RayJob"), ("trainjob", "TrainJob")):
        rendered = list(yaml.safe_load_all(runner.invoke(app, ["render", str(tiny_spec), "-t", target]).stdout))
        assert rendered[1]["kind"] == kind


def test_help_documents_the_exit_codes():
    result = runner.invoke(app, ["--help"])
    for text in ("2    invalid spec", "3    job not found", "4    job failed"):
        assert text in result.output


def test_unknown_local_job_exits_3(graft_home):
    result = runner.invoke(app, ["get", "no-such-job", "--backend", "local"])
    assert result.exit_code == 3
    assert "no-such-job" in result.output
