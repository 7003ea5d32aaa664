"""A missing optional extra ends in one line naming the `pip install 'graft[...]'` to run,
exit code 1 and no traceback, for every extra in pyproject.toml.

Absence is simulated honestly, in real subprocesses: a `sitecustomize.py` on PYTHONPATH sets
`sys.modules[name] = None` for the extra's module, which is how Python itself marks a module
as unimportable (`import` raises ModuleNotFoundError, `importlib.util.find_spec` returns
None). It is imported by every Python process the command starts (supervisor, ranks), so the
whole process tree sees the module as not installed; nothing in Graft is patched.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from graft.spec.extras import EXTRAS
from sdk_specs import TINY_JOB, write_spec

REPO = Path(__file__).resolve().parents[2]


def run_without(module: str, args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    site = tmp_path / "without"
    site.mkdir(exist_ok=True)
    site.joinpath("sitecustomize.py").write_text(f"import sys\nsys.modules[{module!r}] = None\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
           "GRAFT_HOME": str(tmp_path / "home"), "GRAFT_CACHE": str(tmp_path / "cache")}
    return subprocess.run([sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)


def assert_one_line(proc: subprocess.CompletedProcess, extra: str) -> None:
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if f"pip install 'graft[{extra}]'" in line]
    assert len(lines) == 1, output


def tiny(tmp_path: Path, **data) -> Path:
    doc = yaml.safe_load(yaml.safe_dump(TINY_JOB))
    doc["spec"]["data"].update(data)
    doc["spec"]["output"] = {"dir": str(tmp_path / "out")}
    return write_spec(tmp_path / "tiny.yaml", doc)


def test_extras_table_matches_pyproject():
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(EXTRAS) == set(declared) - {"dev"}


@pytest.mark.parametrize("module", ["torch", "accelerate"])
def test_graft_run_without_the_trainer_extra(module, tmp_path):
    assert_one_line(run_without(module, ["-m", "graft.cli", "run", str(tiny(tmp_path))], tmp_path), "trainer")


def test_graft_run_on_ray_without_ray(tmp_path):
    proc = run_without("ray", ["-m", "graft.cli", "run", str(tiny(tmp_path)), "--backend", "ray"], tmp_path)
    assert_one_line(proc, "ray")


@pytest.mark.parametrize("module", ["kopf", "prometheus_client"])
def test_graft_operator_without_the_operator_extra(module, tmp_path):
    proc = run_without(module, ["-m", "graft.cli", "operator", "--standalone", "--metrics-port", "9"], tmp_path)
    assert_one_line(proc, "operator")


@pytest.mark.parametrize("scheme, module, extra", [("s3", "s3fs", "s3"), ("gs", "gcsfs", "gcs")])
def test_graft_run_on_remote_data_without_its_filesystem(scheme, module, extra, tmp_path):
    spec = tiny(tmp_path, format="webdataset", train=f"{scheme}://bucket/train", validation=f"{scheme}://bucket/val")
    assert_one_line(run_without(module, ["-m", "graft.cli", "run", str(spec)], tmp_path), extra)


@pytest.mark.slow
def test_the_trainer_without_the_examples_extra(tmp_path):
    """In a pod the trainer is the first to notice: builtin://sklearn-digits needs scikit-learn."""
    proc = run_without("sklearn", ["-m", "graft_trainer", str(tiny(tmp_path))], tmp_path)
    assert_one_line(proc, "examples")


@pytest.mark.slow
def test_the_trainer_on_remote_data_without_its_filesystem(tmp_path):
    spec = tiny(tmp_path, format="webdataset", train="s3://bucket/train", validation="s3://bucket/val")
    assert_one_line(run_without("s3fs", ["-m", "graft_trainer", str(spec)], tmp_path), "s3")
