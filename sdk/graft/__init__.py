"""Graft: transfer learning on Kubernetes.

`import graft` stays light (no torch, no kubernetes client): `graft.Client` and the typed
results are imported on first use.
"""

from typing import TYPE_CHECKING

__version__ = "0.1.0"
__all__ = ["Client", "JobRef", "JobStatus", "__version__"]

if TYPE_CHECKING:
    from graft.api import Client
    from graft.types import JobRef, JobStatus

_LAZY = {"Client": "graft.api", "JobRef": "graft.types", "JobStatus": "graft.types"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'graft' has no attribute {name!r}")
