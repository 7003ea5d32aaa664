"""Bad input through the API: a few dozen generated FineTuneJob bodies applied to the real
server with the operator running (bench/fuzz_api.py applies 1,000): see api_fuzz.py."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings

from tools import wait_for

from api_fuzz import apply, documents, undecided, verdicts

pytestmark = pytest.mark.controlplane


def test_generated_bodies_are_refused_by_the_server_or_decided_by_the_operator(plane, admin, ns, fault_operator):
    stored: list[str] = []
    refused = []

    @settings(max_examples=40, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(document=documents())
    def send(document):
        name = apply(admin, ns, document, len(stored) + len(refused))
        (stored if name else refused).append(name)

    send()
    outcome = wait_for(lambda: (lambda v: v if v is not None and len(v) == len(stored) else None)(verdicts(admin, ns)),
                       timeout=120, interval=0.5, explain=lambda: undecided(admin, ns))
    print(f"{len(refused)} refused by the API server, {sum(v == 'failed' for v in outcome.values())} marked Failed "
          f"by the operator, {sum(v == 'child' for v in outcome.values())} given a child")
    assert refused and stored  # both kinds were exercised
    assert fault_operator.proc.poll() is None  # it never crashed
