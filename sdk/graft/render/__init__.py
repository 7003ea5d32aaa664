"""Render a FineTuneJob into the manifests a cluster runs: pure functions, no I/O, no client.

`render(job, target)` returns [the spec ConfigMap, the job object], both named from the
FineTuneJob and labelled `graft.dev/job`, so the SDK, CLI and operator create the same objects.
"""

from __future__ import annotations

from typing import Callable

import yaml

from graft.render.common import JOB_LABEL, SPEC_PATH, Manifest, RenderError, spec_configmap
from graft.render.pytorchjob import render_pytorchjob
from graft.render.rayjob import render_rayjob
from graft.render.trainjob import render_training_runtime, render_trainjob
from graft.spec import FineTuneJob

__all__ = [
    "JOB_LABEL", "SPEC_PATH", "TARGETS", "RenderError", "render", "render_pytorchjob",
    "render_rayjob", "render_trainjob", "render_training_runtime", "to_yaml",
]

_RENDERERS: dict[str, Callable[[FineTuneJob, Manifest | None], Manifest]] = {
    "pytorchjob": render_pytorchjob,
    "rayjob": render_rayjob,
    "trainjob": render_trainjob,
}
TARGETS = tuple(_RENDERERS)


def render(job: FineTuneJob, target: str, *, owner: Manifest | None = None) -> list[Manifest]:
    """[ConfigMap `<name>-spec` holding the spec, the `target` object named `<name>`]."""
    try:
        renderer = _RENDERERS[target]
    except KeyError:
        raise RenderError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}") from None
    return [spec_configmap(job, owner), renderer(job, owner)]


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (the embedded spec) as `|` blocks, so manifests stay readable."""


# Strings YAML 1.1 (kubectl, the API server's sigs.k8s.io/yaml) reads as booleans but PyYAML
# would write bare: an env var named Y would reach the server as `true`.
_YAML11_BOOLS = {"y", "Y", "n", "N"}


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else "'" if value in _YAML11_BOOLS else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _represent_str)


def to_yaml(objects: list[Manifest]) -> str:
    """A multi-document YAML stream, keys in render order, ready for `kubectl apply -f -`."""
    return yaml.dump_all(objects, Dumper=_BlockDumper, sort_keys=False, default_flow_style=False)
