"""The Python entry point: one Client whatever the job runs on."""

from graft.api.client import Client

__all__ = ["Client"]
