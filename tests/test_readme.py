"""The README's two leading commands are the product's front door: keep them true."""

import re

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _commands() -> list[str]:
    readme = (REPO / "README.md").read_text()
    return re.findall(r"```bash\n(.*?)\n```", readme, flags=re.S)


def test_ci_runs_exactly_the_readme_test_command():
    test_command = _commands()[1].strip().splitlines()[-1]
    ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci_lines, f"README test command {test_command!r} is not what .ci/run runs"


def test_first_command_installs_and_runs_an_example_that_exists():
    first = _commands()[0]
    assert "python3 -m venv .venv" in first and "pip install" in first
    spec = re.search(r"graft run (\S+\.yaml)", first).group(1)
    assert (REPO / spec).is_file()


def test_the_job_shown_in_the_readme_is_valid():
    from graft.spec import parse_spec

    readme = (REPO / "README.md").read_text()
    documents = [d for d in re.findall(r"```yaml\n(.*?)\n```", readme, flags=re.S) if "kind: FineTuneJob" in d]
    assert documents
    for document in documents:
        parse_spec(document)  # raises SpecError naming the field if the README drifts from the spec
