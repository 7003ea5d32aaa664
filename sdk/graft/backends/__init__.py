"""Backends behind graft.Client; each module is imported only when chosen (keeps import fast)."""

from graft.backends.base import Backend, JobExists, JobNotFound, WaitTimeout

__all__ = ["Backend", "JobExists", "JobNotFound", "WaitTimeout"]
