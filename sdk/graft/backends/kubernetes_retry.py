"""How Graft's API clients (the SDK's Kubernetes backend and the operator) live through an API
server that restarts, stalls or sheds load: which failures are transient, capped exponential
backoff with jitter between attempts (tenacity's strategy), and an outage budget after which
the caller gets one line naming what it was doing and why it gave up.

Used two ways: `call(what, fn, ...)` retries one request; `Outage` is the same policy for a
long-lived loop (a watch, a log follow) that must reconnect and resets once it is answered.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, TypeVar

import urllib3
from kubernetes.client.exceptions import ApiException
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_exponential_jitter

# Seconds an API server may stay unreachable before a command gives up (GRAFT_API_OUTAGE_BUDGET_S).
DEFAULT_OUTAGE_BUDGET_S = 120.0
BACKOFF_FIRST_S, BACKOFF_CAP_S, BACKOFF_JITTER_S = 0.2, 5.0, 0.3
# 0: the client's own failure; 429 and 5xx: the server or what is in front of it is busy or
# restarting (the server answers 500/503 while its storage or informers come back).
TRANSIENT_STATUSES = frozenset({0, 429, 500, 502, 503, 504})

T = TypeVar("T")


class ApiUnavailable(RuntimeError):
    """The API server did not answer within the outage budget (the CLI exits 1)."""


def outage_budget(value: float | None = None) -> float:
    if value is not None:
        return float(value)
    return float(os.environ.get("GRAFT_API_OUTAGE_BUDGET_S", DEFAULT_OUTAGE_BUDGET_S))


def transient(exc: BaseException) -> bool:
    """Worth another attempt: a refused or dropped connection, a timeout, a busy server."""
    if isinstance(exc, ApiException):
        return exc.status in TRANSIENT_STATUSES
    return isinstance(exc, (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError))


def server_message(exc: ApiException) -> str:
    """The API server's own sentence (it names the field), not the raw Status JSON."""
    try:
        return json.loads(exc.body)["message"]
    except (TypeError, ValueError, KeyError):
        return f"{exc.status} {exc.reason}".strip()


def cause(exc: BaseException) -> str:
    """The failure in a few words: 'connection refused', '503 Service Unavailable'…"""
    if isinstance(exc, ApiException):
        return f"{exc.status} {exc.reason}".strip()
    text = str(getattr(exc, "reason", None) or exc)
    errno = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    if errno:
        return errno.group(1).strip().lower()
    if isinstance(exc, urllib3.exceptions.ReadTimeoutError) or "timed out" in text:
        return "read timed out"
    if isinstance(exc, urllib3.exceptions.ProtocolError) or "Connection aborted" in text:
        return "connection dropped"
    return type(exc).__name__


def backoff() -> wait_exponential_jitter:
    return wait_exponential_jitter(multiplier=BACKOFF_FIRST_S, max=BACKOFF_CAP_S, jitter=BACKOFF_JITTER_S)


def unavailable(what: str, server: str, budget: float, exc: BaseException) -> ApiUnavailable:
    return ApiUnavailable(
        f"the API server {server} did not answer for {budget:.0f} s while {what} (last error: {cause(exc)}); "
        f"check that the cluster is up and reachable, or allow a longer outage with GRAFT_API_OUTAGE_BUDGET_S")


def call(what: str, server: str, budget: float, fn: Callable[..., T], *args: Any,
         also: frozenset[int] = frozenset(), **kwargs: Any) -> T:
    """`fn(*args, **kwargs)`, retried with capped exponential backoff and jitter while it fails
    transiently (or with a status in `also`, e.g. 409 for a write that may conflict);
    ApiUnavailable once the budget is spent. Other ApiExceptions pass through."""
    def again(exc: BaseException) -> bool:
        return transient(exc) or (isinstance(exc, ApiException) and exc.status in also)

    retrying = Retrying(retry=retry_if_exception(again), wait=backoff(), stop=stop_after_delay(budget),
                        reraise=True)
    try:
        return retrying(fn, *args, **kwargs)
    except BaseException as exc:
        if transient(exc):
            raise unavailable(what, server, budget, exc) from None
        raise


class Outage:
    """The retry policy for a loop that reconnects: `failed(exc)` sleeps the next backoff (or
    raises ApiUnavailable once the server has been unreachable for the budget); `answered()`
    after any successful read starts the next outage from zero."""

    def __init__(self, what: str, server: str, budget: float, stop: threading.Event | None = None,
                 deadline: float | None = None):
        self.what, self.server, self.budget, self.stop, self.deadline = what, server, budget, stop, deadline
        self.wait = backoff()
        self.started: float | None = None
        self.attempts = 0

    def answered(self) -> None:
        self.started, self.attempts = None, 0

    def failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        self.started = self.started if self.started is not None else now
        self.attempts += 1
        if now - self.started >= self.budget:
            raise unavailable(self.what, self.server, self.budget, exc) from None
        delay = self.wait(SimpleNamespace(attempt_number=self.attempts))
        delay = min(delay, max(0.0, self.started + self.budget - now))
        if self.deadline is not None:
            delay = min(delay, max(0.0, self.deadline - now))
        if self.stop is not None:
            self.stop.wait(delay)
        else:
            time.sleep(delay)
