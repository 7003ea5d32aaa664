"""A few hundred generated specs, valid and broken, through validation, rendering and a local
submit (the ≥ 10,000-spec run is bench/fuzz_spec.py). Also the refusals that used to fire only
inside a pod, now refused before anything is submitted."""

from __future__ import annotations

import copy

import pytest
from hypothesis import HealthCheck, given, settings

from graft.spec import SpecError, parse_spec
from spec_fuzz import BASE, check, documents

EXAMPLES = 300


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=documents())
def test_every_generated_spec_is_rendered_or_refused_naming_the_field(document, tmp_path_factory):
    check(document, tmp_path_factory.mktemp("home"))


@pytest.mark.parametrize("change, field", [
    ({"data": {"streaming": True}}, "data.streaming: an ImageFolder is one file per image"),
    ({"data": {"format": "webdataset", "augmentations": []}}, "data.balance: needs class counts"),
    ({"data": {"target": "/data/target"}, "strategy": {"domainAdaptation": {},
      "phases": [{"epochs": 1, "lr": 1e-3}]}}, "strategy.domainAdaptation: DANN adapts the backbone"),
])
def test_pod_time_refusals_are_refused_by_validation(change, field):
    document = copy.deepcopy(BASE)
    for section, values in change.items():
        document["spec"][section] = {**document["spec"][section], **values}
    with pytest.raises(SpecError) as refused:
        parse_spec(document)
    assert any(field in problem for problem in refused.value.problems), refused.value.problems
