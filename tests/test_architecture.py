"""Dependency directions users rely on: the SDK installs and imports without torch, the trainer
image never needs cluster clients, renderers stay pure (no client, no I/O), and only the operator
imports the operator (what the SDK shares with it is in graft.spec.contracts and
graft.jobstatus). The import-time
budget of `import graft` is checked in tests/sdk/test_cli.py."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _imports(folder: Path) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in folder.rglob("*.py"):
        names = found.setdefault(str(path.relative_to(REPO)), set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
    return found


def _offenders(folder: Path, forbidden) -> list[str]:
    return [f"{file}: {name}" for file, names in _imports(folder).items() for name in names if forbidden(name)]


def test_sdk_never_imports_torch_or_the_trainer():
    assert _offenders(REPO / "sdk" / "graft", lambda n: n.split(".")[0] in {"torch", "graft_trainer"}) == []


def test_trainer_uses_only_the_spec_from_the_sdk():
    def forbidden(name: str) -> bool:
        allowed = name.startswith(("graft.spec", "graft.fsutil"))  # fsutil: the one atomic-write helper
        return name.startswith("graft.") and not allowed or name in {"kubernetes", "kopf"}

    assert _offenders(REPO / "trainer" / "graft_trainer", forbidden) == []


@pytest.mark.parametrize("folder", ["spec", "render"])
def test_spec_and_renderers_are_pure(folder):
    def forbidden(name: str) -> bool:
        return name.split(".")[0] in {"kubernetes", "kopf", "ray", "subprocess", "requests"} or name in {
            "graft.backends", "graft.api", "graft.operator", "graft.cli"}

    assert _offenders(REPO / "sdk" / "graft" / folder, forbidden) == []



def test_nothing_outside_the_operator_imports_it():
    """The SDK, CLI, renderers, deploy generator and trainer read contracts and status from
    graft.spec.contracts / graft.jobstatus; graft.operator is only the kopf process, which the
    `graft operator` command starts (its one import, of graft.operator.run)."""
    operator = REPO / "sdk" / "graft" / "operator"
    starts_it = {"sdk/graft/cli.py: graft.operator"}
    offenders = [
        f"{file}: {name}"
        for folder in (REPO / "sdk", REPO / "trainer")
        for file, names in _imports(folder).items()
        for name in names
        if (name == "graft.operator" or name.startswith("graft.operator."))
        and not (REPO / file).is_relative_to(operator)
    ]
    assert set(offenders) <= starts_it, offenders
